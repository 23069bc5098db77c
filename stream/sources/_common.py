"""What every source shares: errors, stats, the handover to the event loop, luma extraction, the timeline.

The handover is where a source's live policy lives. A decoder thread produces frames at the input's rate;
the consumer takes them at its own. The handover is a :class:`~chromastream.stream.queues.DropQueue` of
*one* frame: a live source that finds the previous frame still there drops it for the new one
(:attr:`DropPolicy.DROP_OLDEST`, every drop counted in :attr:`SourceStats.dropped`), and a file processed
as fast as it is consumed makes its thread wait instead (:attr:`DropPolicy.WAIT`). Control events
(:class:`Reset`, audio, the end of the stream, an error) are never dropped and do not count against the
frame: losing a ``Reset`` would let the colorizer's memory carry colours across a cut.

Why one frame: buffering is the consumer's business. The pipeline takes each frame from the handover at
once into its input queue, whose size is the stream's ``queue_size``; a frame in the handover is behind
everything in that queue and has nothing ahead of it in the handover, so it waits behind at most
``queue_size`` frames in all, as configured. A larger handover would add its frames to that wait
unseen. A consumer that reads a source directly always gets the newest frame.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import av.error
import numpy as np

from chromastream.stream.av_glue import colour_range, is_full_range, luma_plane_view
from chromastream.stream.errors import InputError, UsageError
from chromastream.stream.frames import U8, AudioChunk, EndOfStream, Frame, SourceEvent
from chromastream.stream.hw_decode import check_decode_mode
from chromastream.stream.queues import DropPolicy, DropQueue

logger = logging.getLogger("chromastream.stream.sources")

#: Pixel formats whose plane 0 is already the full-resolution Y of a 4:2:0 picture.
_LUMA_READY = frozenset({"yuv420p", "yuvj420p", "nv12", "nv21"})


class SourceError(InputError):
    """A source stopped for a reason that retrying cannot fix (unsupported codec, rejected login, ...)."""


class InvalidSourceError(SourceError):
    """A source's URL or options are malformed or name something unsupported."""


@dataclass(frozen=True, slots=True)
class RetryRecord:
    """One wait before a reconnection attempt: the attempt number, the backoff ceiling and the delay."""

    attempt: int
    ceiling: float
    delay: float


@dataclass
class SourceStats:
    """Counters of one source, read by the pipeline's metrics; only the source writes them."""

    frames: int = 0
    """Frames produced (delivered or dropped)."""
    dropped: int = 0
    """Frames dropped because the consumer was behind (a newer frame replaced them in the handover)."""
    skipped_packets: int = 0
    """Packets the decoder rejected (corrupt data, missing references after a loss)."""
    connect_attempts: int = 0
    """Connections tried, the first one included."""
    reconnects: int = 0
    """Connections that succeeded after an earlier one had been lost."""
    stalls: int = 0
    """Times the watchdog gave up on a connection that delivered no frame in time."""
    last_error: str | None = None
    """The latest connection problem, credentials removed; ``None`` while none happened."""
    retries: deque[RetryRecord] = field(default_factory=lambda: deque(maxlen=64))
    """The most recent waits before reconnecting (bounded: a camera may stay down for days)."""


def av_reason(exc: BaseException) -> str:
    """A short description of a PyAV/FFmpeg error *without* its filename, which may hold credentials."""
    if isinstance(exc, av.error.FFmpegError):
        return str(exc.strerror or type(exc).__name__)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def frame_luma(frame: av.VideoFrame) -> tuple[U8, bool]:
    """The frame's Y plane (a copy, cropped to even size) and whether it is full range.

    Non-4:2:0 inputs are brought to ``yuv420p`` by swscale keeping their range, as the file path does.
    The copy is deliberate: the array outlives the decoder's frame and must not pin its buffer pool.
    """
    full_range = is_full_range(frame)
    if frame.format.name not in _LUMA_READY:
        frame = frame.reformat(format="yuv420p", dst_color_range=colour_range(full_range))
    height, width = frame.height & ~1, frame.width & ~1
    if height == 0 or width == 0:
        raise SourceError(f"a {frame.width}x{frame.height} frame is too small to colorize")
    y: U8 = np.ascontiguousarray(luma_plane_view(frame, 0)[:height, :width])
    if y.base is not None:
        y = y.copy()
    return y, full_range


class Timeline:
    """Turns decoder timestamps into a strictly increasing pts across restarts of the same input.

    A looped file starts over at its first pts and a reconnected camera starts a new RTP clock; downstream
    (encoders, RTP, metadata keyed by pts) needs time that never goes back. After :meth:`restart`, the
    next frame is placed one frame step after the last one given out, so a loop is offset by exactly the
    clip's duration. Missing pts are synthesized from the frame rate.
    """

    def __init__(self, time_base: Fraction, rate: Fraction) -> None:
        self.time_base = time_base
        self.step = max(1, round(1 / (rate * time_base))) if rate > 0 else 1
        self.last: int | None = None
        self._offset = 0
        self._restarting = False
        self.repaired = 0

    def restart(self, time_base: Fraction | None = None, rate: Fraction | None = None) -> None:
        """The input starts over (loop, new connection), possibly with another clock."""
        if time_base is not None and time_base != self.time_base and self.last is not None:
            self.last = round(self.last * self.time_base / time_base)
            self.time_base = time_base
        elif time_base is not None:
            self.time_base = time_base
        if rate is not None and rate > 0:
            self.step = max(1, round(1 / (rate * self.time_base)))
        self._restarting = True

    @property
    def offset_seconds(self) -> Fraction:
        """What the current pass adds to its input's own timestamps, in seconds (for its audio)."""
        return self._offset * self.time_base

    def __call__(self, raw: int | None) -> int:
        if raw is None:
            out = 0 if self.last is None else self.last + self.step
            self.repaired += 1
            self._restarting = False
        else:
            if self._restarting and self.last is not None:
                self._offset = self.last + self.step - raw
            self._restarting = False
            out = raw + self._offset
            if self.last is not None and out <= self.last:
                # Decoders may repeat or reorder a pts after a loss; keep time moving forward.
                out = self.last + 1
                self.repaired += 1
        self.last = out
        return out


class AudioTap:
    """Decodes an input's audio into :class:`AudioChunk` events on the stream's timeline.

    Recorders keep the source's sound; it is decoded (and downmixed to at most stereo, float planar)
    rather than copied as packets because a live input's connection, and with it its codec parameters,
    can change under a recording that goes on. An audio packet that does not decode is skipped: losing
    a moment of sound must never stop the video.
    """

    def __init__(self, stream_id: str, audio: av.AudioStream) -> None:
        self.stream_id = stream_id
        self.audio = audio
        channels = audio.codec_context.channels if audio.codec_context is not None else 2
        self.layout = "mono" if channels == 1 else "stereo"
        self.rate = (
            int(audio.codec_context.sample_rate or 48000) if audio.codec_context is not None else 48000
        )
        self._resampler = av.AudioResampler(format="fltp", layout=self.layout, rate=self.rate)
        self.skipped = 0

    def chunks(self, packet: av.Packet[Any], offset: Fraction) -> list[AudioChunk]:
        """The audio of one demuxed packet; ``offset`` (seconds) moves it onto the stream's timeline."""
        try:
            frames = list(self.audio.decode(packet))
        except av.error.EOFError:
            return []
        except av.error.FFmpegError as exc:
            self.skipped += 1
            if self.skipped <= 3:
                logger.info("%s: skipped an undecodable audio packet (%s)", self.stream_id, av_reason(exc))
            return []
        out: list[AudioChunk] = []
        for frame in frames:
            if frame.pts is None or frame.time_base is None:
                continue
            start = frame.pts * Fraction(frame.time_base) + offset
            for resampled in self._resampler.resample(frame):
                samples = np.ascontiguousarray(resampled.to_ndarray(), dtype=np.float32)
                if samples.ndim == 1:
                    samples = samples[None]
                out.append(AudioChunk(self.stream_id, samples, self.rate, self.layout, start))
                start += Fraction(int(samples.shape[1]), self.rate)
        return out


@dataclass(frozen=True, slots=True)
class _Failed:
    """Queued after the events a failed producer handed over: ``events()`` raises ``error`` when it gets
    here, so nothing handed over before the failure is lost."""

    error: BaseException


def _is_frame(item: object) -> bool:
    return isinstance(item, Frame)


class Stopped(Exception):
    """Raised inside a worker thread when its source was closed: unwinds it without an error."""


class ThreadedSource:
    """Base of the sources whose reading blocks: workers decode in threads and hand events to the loop.

    The shape is aiortc's ``contrib/media.py`` player: a thread runs the decoder and passes each result to
    the event loop with ``run_coroutine_threadsafe``. Here the worker also *waits* for that coroutine, so
    a :attr:`DropPolicy.WAIT` handover throttles the thread and nothing piles up in the loop's callback
    queue either. The handover holds one frame (see the module docstring for why).
    """

    live: bool
    #: How long ``close()`` waits for a worker to finish; a worker stuck in a blocking network call
    #: (bounded by the source's own timeouts) finishes in the background and closes its input then.
    close_grace = 1.0

    def __init__(self, stream_id: str, policy: DropPolicy, decode: str = "auto") -> None:
        try:
            check_decode_mode(decode)
        except UsageError as exc:
            raise InvalidSourceError(str(exc)) from None
        self.stream_id = stream_id
        self.decode = decode
        """``sources.decode``: ``auto``, ``software`` or ``nvdec`` (:mod:`chromastream.stream.hw_decode`)."""
        self.decoder: str | None = None
        """What decodes the input (``h264 (software)``, ``h264 (cuda)``); ``None`` until it is opened."""
        self.stats = SourceStats()
        self._handover: DropQueue[SourceEvent | _Failed] = DropQueue(1, policy, _is_frame, self._dropped)
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._iterated = False
        self._worker_thread: threading.Thread | None = None

    async def events(self) -> AsyncIterator[SourceEvent]:
        if self._iterated:
            raise RuntimeError(f"{self.stream_id}: events() can be iterated only once")
        self._iterated = True
        self._loop = asyncio.get_running_loop()
        if not self._stop.is_set():
            self._begin()
        while True:
            event = await self._handover.get()
            if isinstance(event, _Failed):
                self._handover.close(EndOfStream(self.stream_id))
                raise event.error
            yield event
            if isinstance(event, EndOfStream):
                return

    def _begin(self) -> None:
        """Start producing (called once, on the loop, by the first ``events()``)."""
        raise NotImplementedError

    def _start_worker(self, kind: str, target: Callable[[], None]) -> None:
        """Run ``target`` in the source's one worker thread, which :meth:`close` waits for."""
        self._worker_thread = threading.Thread(target=target, name=f"{kind}-{self.stream_id}", daemon=True)
        self._worker_thread.start()

    async def close(self) -> None:
        """Stop now: events not yet taken are discarded and the consumer gets :class:`EndOfStream` next.
        The worker thread, if any, gets :attr:`close_grace` to finish."""
        self._stop.set()
        self._handover.close(EndOfStream(self.stream_id))
        await self._join(self._worker_thread, self.close_grace)

    async def _end_with(self, error: BaseException) -> None:
        """On the loop: end the stream with ``error``, raised from ``events()`` once every event handed
        over before it was delivered."""
        self._handover.put_nowait(_Failed(error))

    def _dropped(self, _: SourceEvent | _Failed) -> None:
        self.stats.dropped += 1
        if self.stats.dropped == 1 or self.stats.dropped % 100 == 0:
            logger.info(
                "%s: consumer is behind, dropped %d frame(s) so far", self.stream_id, self.stats.dropped
            )

    def _call(self, coroutine: Coroutine[Any, Any, Any], abort: threading.Event | None = None) -> Any:
        """Run ``coroutine`` on the loop from a worker thread and wait for it; :class:`Stopped` if closed."""
        loop = self._loop
        assert loop is not None
        if self._stop.is_set() or (abort is not None and abort.is_set()):
            coroutine.close()
            raise Stopped
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            coroutine.close()
            raise Stopped from None
        while True:
            try:
                return future.result(timeout=0.25)
            except concurrent.futures.TimeoutError:
                if self._stop.is_set() or (abort is not None and abort.is_set()):
                    future.cancel()
                    raise Stopped from None
            except concurrent.futures.CancelledError:
                raise Stopped from None

    def _wait(self, seconds: float, abort: threading.Event | None = None) -> None:
        """Sleep in a worker thread, waking at once when the source is closed."""
        if seconds > 0 and self._stop.wait(seconds):
            raise Stopped
        if self._stop.is_set() or (abort is not None and abort.is_set()):
            raise Stopped

    @staticmethod
    async def _join(thread: threading.Thread | None, grace: float) -> None:
        deadline = time.monotonic() + grace
        while thread is not None and thread.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
