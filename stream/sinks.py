"""Where a stream's colorized frames go besides viewers: a recorded file and a pushed RTSP stream.

Both sinks consume a :class:`~chromastream.stream.pipeline.Subscription` and do their encoding in a thread of
their own (one per sink, so one encoder is never touched by two threads and a slow disk or network never holds
the event loop).

:class:`FileRecorder`
    writes H.264 with the file path's settings and colour tags (:mod:`chromastream.stream.av_glue`), the
    source's
    ``pts``/``time_base`` kept, and one metadata object per written frame as JSON lines beside the video
    (``<name>.jsonl``). Both are written under temporary names and renamed only when the encoder has been
    flushed and the container closed, so a crash never leaves a truncated file under the name a user or a
    script is waiting for. The source's audio (handed over by the pipeline as decoded
    :class:`~chromastream.stream.frames.AudioChunk` events, on the frames' own clock) is written beside them
    as AAC, placed by time: a gap in the sound (a camera reconnecting) is filled with silence so that picture
    and sound stay together for the rest of the file. Sound that arrives after the file was started without
    an audio track is dropped and counted.
:class:`RtspPusher`
    publishes to an RTSP server (``ANNOUNCE``/``RECORD``) with low-latency baseline H.264. It is a live
    output: its subscription drops its own oldest frames, and while the server is unreachable it drops
    (and counts) frames and reconnects with backoff and jitter instead of waiting, so the pipeline never
    notices a dead server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import IO, Any, TypeVar

import av
import av.error
import numpy as np

from chromastream.stream.av_glue import ENCODER, ENCODER_OPTIONS, tag_colour, to_video_frame
from chromastream.stream.errors import OutputError
from chromastream.stream.formats import CONTAINERS
from chromastream.stream.frames import AudioChunk, OutputFrame
from chromastream.stream.sources import Backoff, is_connection_error
from chromastream.stream.urls import redact_url

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Frame rate announced to the encoder when only timestamps are known; timing comes from the pts.
NOMINAL_RATE = Fraction(25)
#: Audio chunks a recorder holds for frames still in the pipeline (about 20 s of typical chunk sizes).
MAX_PENDING_AUDIO = 1024
#: Longest silence inserted for a gap in the sound; a longer gap restarts the sound's clock instead.
MAX_SILENCE_S = 60
#: x264 settings for a live push: no lookahead or B-frames (every frame leaves at once), baseline for
#: players and servers that take nothing else, and a key frame every second so a viewer that joins (or a
#: server after our reconnect) starts decoding within a second.
PUSH_OPTIONS = {"preset": "veryfast", "tune": "zerolatency", "profile": "baseline", "g": "25", "bf": "0"}
#: RTSP timestamps are in 90 kHz units by convention; the push clock is counted in them.
PUSH_TIME_BASE = Fraction(1, 90000)


def _message(exc: BaseException) -> str:
    if isinstance(exc, av.error.FFmpegError):
        return str(exc.strerror or exc)
    return str(exc)


class _Worker:
    """One thread for one encoder: calls made from the event loop run there, in order."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# --- recording -------------------------------------------------------------------------------------


def temporary_path(path: Path) -> Path:
    """Where ``path`` is written until it is complete: hidden, same folder (so the rename is atomic),
    same suffix (so the container is still recognizable if a crash leaves it behind)."""
    return path.with_name(f".{path.stem}.partial{path.suffix}")


class FileRecorder:
    """Records one stream's output to ``path`` (``.mp4``, ``.mkv``, ...) and ``path.with_suffix('.jsonl')``.

    :meth:`run` consumes frames until the stream ends, then flushes the encoder and renames the finished
    files into place; if anything fails (or the task is cancelled) the partial files are removed and the
    final names are never created.
    """

    def __init__(self, path: Path, stream_id: str = "") -> None:
        suffix = path.suffix.lower()
        if suffix not in CONTAINERS:
            raise OutputError(f"cannot record to {path}: use one of {', '.join(sorted(CONTAINERS))}")
        self.path = path
        self.metadata_path = path.with_suffix(".jsonl")
        self.stream_id = stream_id
        self.format = CONTAINERS[suffix]
        self.frames = 0
        """Frames written so far."""
        self.repaired = 0
        """Frames whose pts was missing or not increasing and was replaced (the encoder refuses those)."""
        self._tmp = temporary_path(path)
        self._tmp_metadata = temporary_path(self.metadata_path)
        self._container: av.container.OutputContainer | None = None
        self._video: av.VideoStream | None = None
        self._jsonl: IO[str] | None = None
        self._size = (0, 0)
        self._last_pts: int | None = None
        self._time_base = Fraction(1, 90000)
        self._offset = 0  # added to the source's pts since its timeline last jumped back
        self._step = 1  # the last gap between frames, the one assumed across a jump
        self._audio_pending: deque[AudioChunk] = deque()
        self._audio: av.AudioStream | None = None
        self._audio_next: int | None = None  # pts (in samples) where the next audio sample belongs
        self.audio_samples = 0
        """Audio samples written so far (silence for gaps included)."""
        self.audio_dropped = 0
        """Audio chunks not written (no audio track in the file, overlapping sound, recorder behind)."""

    def add_audio(self, chunk: AudioChunk) -> None:
        """From the event loop: the source's sound, written beside the frames by the recorder's thread."""
        if len(self._audio_pending) >= MAX_PENDING_AUDIO:
            self._audio_pending.popleft()
            self.audio_dropped += 1
        self._audio_pending.append(chunk)

    async def run(self, frames: AsyncIterator[OutputFrame]) -> None:
        """Write every frame ``frames`` yields; finish the files when it ends."""
        worker = _Worker(f"record-{self.stream_id}")
        finished = False
        try:
            async for frame in frames:
                await worker.call(self._write, frame)
            await worker.call(self._finish)
            finished = True
        finally:
            if not finished:
                with contextlib.suppress(Exception):
                    await asyncio.shield(worker.call(self._abort))
            worker.shutdown()

    def _open(self, frame: OutputFrame) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        height, width = frame.y.shape
        try:
            container = av.open(str(self._tmp), mode="w", format=self.format)
        except (av.error.FFmpegError, OSError) as exc:
            raise OutputError(f"cannot create {self.path}: {_message(exc)}") from exc
        self._container = container
        if self.format in ("mp4", "mov"):
            container.options["movflags"] = "+faststart"
        try:
            video = container.add_stream(ENCODER, rate=NOMINAL_RATE, options=dict(ENCODER_OPTIONS))
        except ValueError as exc:
            raise OutputError(
                f"the {self.format} container cannot hold H.264 video; use .mp4 or .mkv"
            ) from exc
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.time_base = frame.time_base
        video.codec_context.time_base = frame.time_base
        self._time_base = frame.time_base  # the file's clock: the first frame's (the muxer may round it)
        self._step = max(1, round(1 / (NOMINAL_RATE * frame.time_base)))
        tag_colour(video.codec_context, frame.full_range)
        self._video = video
        self._add_audio_track(container)
        try:
            # Create the file and write the header now: a path that cannot be written fails at the first
            # frame, not after the whole stream was encoded into buffers.
            container.start_encoding()
        except (av.error.FFmpegError, OSError) as exc:
            raise OutputError(f"cannot create {self.path}: {_message(exc)}") from exc
        self._size = (width, height)
        self._jsonl = open(self._tmp_metadata, "w", encoding="utf-8")  # noqa: SIM115 (closed in _finish)

    def _add_audio_track(self, container: av.container.OutputContainer) -> None:
        """An AAC track shaped like the first sound that came, if any came before the first frame."""
        if not self._audio_pending:
            return
        first = self._audio_pending[0]
        try:
            self._audio = container.add_stream("aac", rate=first.rate, layout=first.layout)
        except (ValueError, av.error.FFmpegError) as exc:
            logger.warning("recording %s: the sound is left out (%s)", self.path, _message(exc))

    def _pts(self, frame: OutputFrame) -> int:
        """The source's pts in the file's time base, shifted after a jump back (a looped file, a camera
        that reconnected) so the timeline keeps going one frame later instead of stalling."""
        base = self._time_base
        pts = None if frame.pts is None else round(frame.pts * frame.time_base / base) + self._offset
        last = self._last_pts
        if last is None:
            pts = 0 if pts is None else pts
        elif pts is None or pts <= last:
            wanted = last + self._step
            self._offset += wanted - (pts if pts is not None else wanted)
            pts = wanted
            self.repaired += 1
        else:
            self._step = pts - last
        self._last_pts = pts
        return pts

    def _picture_end(self, pts: int) -> Fraction:
        """When the picture at file ``pts`` ends, in seconds on the source's timeline (the sound's clock)."""
        return (pts - self._offset + self._step) * self._time_base

    def _write(self, frame: OutputFrame) -> None:
        if self._container is None:
            self._open(frame)
        assert self._video is not None and self._jsonl is not None
        video_frame = to_video_frame(frame, self._size)
        video_frame.pts = self._pts(frame)
        video_frame.time_base = self._time_base
        # Sound up to the end of this picture, no further: the sound of pictures still in the colorizer
        # waits for them, so whenever the stream stops, both tracks end together.
        self._write_audio(until=self._picture_end(video_frame.pts))
        self._encode(video_frame)
        self._jsonl.write(json.dumps(frame.metadata, separators=(",", ":")) + "\n")
        self.frames += 1

    def _encode(self, frame: av.VideoFrame | None) -> None:
        assert self._container is not None and self._video is not None
        try:
            for packet in self._video.encode(frame):
                self._container.mux(packet)
        except (av.error.FFmpegError, OSError) as exc:
            raise OutputError(f"cannot write {self.path}: {_message(exc)}") from exc

    def _write_audio(self, until: Fraction | None) -> None:
        """In the recorder's thread: encode the pending sound that starts before ``until`` (seconds on the
        source's timeline; all of it if None)."""
        while self._audio_pending:
            chunk = self._audio_pending[0]
            if until is not None and chunk.time >= until:
                return
            self._audio_pending.popleft()
            if self._audio is None:
                self.audio_dropped += 1
                continue
            self._encode_audio(chunk)

    def _encode_audio(self, chunk: AudioChunk) -> None:
        assert self._audio is not None and self._container is not None
        rate = int(self._audio.codec_context.sample_rate)
        if chunk.rate != rate or chunk.samples.shape[0] != (1 if self._audio.layout.name == "mono" else 2):
            self.audio_dropped += 1  # the source's sound changed shape mid-recording
            return
        start = round((chunk.time + self._offset * self._time_base) * rate)
        if self._audio_next is not None:
            gap = start - self._audio_next
            if gap < 0:  # overlaps sound already written (a timeline restart): keep what was first
                self.audio_dropped += 1
                return
            if 0 < gap <= MAX_SILENCE_S * rate:
                self._encode_samples(np.zeros((chunk.samples.shape[0], gap), np.float32), self._audio_next)
        self._encode_samples(chunk.samples, start)

    def _encode_samples(self, samples: np.ndarray, pts: int) -> None:
        assert self._audio is not None and self._container is not None
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.float32), format="fltp", layout=self._audio.layout.name
        )
        frame.sample_rate = int(self._audio.codec_context.sample_rate)
        frame.pts = pts
        frame.time_base = Fraction(1, frame.sample_rate)
        try:
            for packet in self._audio.encode(frame):
                self._container.mux(packet)
        except (av.error.FFmpegError, OSError) as exc:
            raise OutputError(f"cannot write {self.path}: {_message(exc)}") from exc
        self._audio_next = pts + int(samples.shape[1])
        self.audio_samples += int(samples.shape[1])

    def _finish(self) -> None:
        if self._container is None:  # no frame came: there is nothing worth a file
            logger.info("recording %s: no frames, no file", self.path)
            return
        # Sound read ahead of the last picture stays out: both tracks end together.
        self._write_audio(until=self._picture_end(self._last_pts if self._last_pts is not None else 0))
        self.audio_dropped += len(self._audio_pending)
        self._audio_pending.clear()
        if self._audio is not None:
            try:
                for packet in self._audio.encode(None):
                    self._container.mux(packet)
            except (av.error.FFmpegError, OSError) as exc:
                raise OutputError(f"cannot write {self.path}: {_message(exc)}") from exc
        self._encode(None)
        try:
            self._container.close()
        except (av.error.FFmpegError, OSError) as exc:
            raise OutputError(f"cannot finish {self.path}: {_message(exc)}") from exc
        self._container = None
        assert self._jsonl is not None
        self._jsonl.close()
        self._jsonl = None
        # Metadata first: whoever sees the video under its final name finds its metadata there too.
        os.replace(self._tmp_metadata, self.metadata_path)
        os.replace(self._tmp, self.path)
        logger.info("recorded %d frames to %s", self.frames, self.path)

    def _abort(self) -> None:
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.close()
            self._container = None
        if self._jsonl is not None:
            with contextlib.suppress(Exception):
                self._jsonl.close()
            self._jsonl = None
        for path in (self._tmp, self._tmp_metadata):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


# --- RTSP push -------------------------------------------------------------------------------------


class RtspPusher:
    """Publishes one stream's output to ``url`` (RTSP ``RECORD`` over TCP), reconnecting on its own.

    Timestamps are the push's own clock (time since the connection opened, 90 kHz), not the source's:
    a live source's pts jump on reconnects and loops, and a server that receives a jump back stalls. The
    pace is that of the frames :meth:`run` receives.
    """

    def __init__(
        self,
        url: str,
        stream_id: str = "",
        *,
        backoff: Backoff | None = None,
        timeout: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self.shown_url = redact_url(url)
        self.stream_id = stream_id
        self.backoff = backoff or Backoff()
        self.timeout = timeout
        self._rng = rng or random.Random()
        self.frames_sent = 0
        self.drops = 0
        """Frames dropped because no connection was up (connecting, or waiting to retry)."""
        self.connects = 0
        """Successful connections (the first one included)."""
        self.failures = 0
        """Connection attempts or connections that failed with a connection error."""
        self._container: av.container.OutputContainer | None = None
        self._video: av.VideoStream | None = None
        self._size = (0, 0)
        self._t0 = 0.0
        self._last_pts = -1

    @property
    def connected(self) -> bool:
        return self._container is not None

    async def run(self, frames: AsyncIterator[OutputFrame]) -> None:
        """Push every frame ``frames`` yields while connected; drop them while not."""
        worker = _Worker(f"push-{self.stream_id}")
        connecting: asyncio.Task[None] | None = None
        attempt = 0
        retry_at = 0.0
        try:
            async for frame in frames:
                if connecting is not None and connecting.done():
                    exc = connecting.exception()
                    connecting = None
                    if exc is None:
                        attempt = 0
                    else:
                        attempt += 1
                        retry_at = self._failed(exc, attempt)
                if self._container is None:
                    self.drops += 1
                    if connecting is None and time.monotonic() >= retry_at:
                        size = (frame.y.shape[1], frame.y.shape[0])
                        connecting = asyncio.create_task(worker.call(self._connect, size, frame.full_range))
                    continue
                try:
                    await worker.call(self._send, frame)
                except Exception as exc:
                    attempt += 1
                    retry_at = self._failed(exc, attempt)
                    await worker.call(self._disconnect)
        finally:
            if connecting is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(asyncio.shield(connecting), self.timeout)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(worker.call(self._disconnect)), self.timeout)
            worker.shutdown()
            logger.info(
                "push %s to %s ended: %d frames sent, %d dropped, %d connections",
                self.stream_id,
                self.shown_url,
                self.frames_sent,
                self.drops,
                self.connects,
            )

    def _failed(self, exc: BaseException, attempt: int) -> float:
        """Log a failure and return when to try again; anything but a connection error is fatal."""
        if not is_connection_error(exc):
            # FFmpeg's errors carry the URL as their file name: report without it (credentials).
            raise OutputError(f"push to {self.shown_url} failed: {_message(exc)}") from None
        self.failures += 1
        delay = self.backoff.delay(attempt, self._rng)
        logger.warning(
            "push %s to %s: %s; retrying in %.2f s", self.stream_id, self.shown_url, _message(exc), delay
        )
        return time.monotonic() + delay

    def _connect(self, size: tuple[int, int], full_range: bool) -> None:
        container = av.open(
            self.url, mode="w", format="rtsp", options={"rtsp_transport": "tcp"}, timeout=self.timeout
        )
        try:
            video = container.add_stream(ENCODER, rate=NOMINAL_RATE, options=dict(PUSH_OPTIONS))
            video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
            video.time_base = PUSH_TIME_BASE
            video.codec_context.time_base = PUSH_TIME_BASE
            tag_colour(video.codec_context, full_range)
            container.start_encoding()  # ANNOUNCE + RECORD: a refused connection fails here
        except BaseException:
            with contextlib.suppress(Exception):
                container.close()
            raise
        self._container, self._video, self._size = container, video, size
        self._t0 = time.monotonic()
        self._last_pts = -1
        self.connects += 1
        logger.info("push %s: connected to %s", self.stream_id, self.shown_url)

    def _send(self, frame: OutputFrame) -> None:
        assert self._container is not None and self._video is not None
        video_frame = to_video_frame(frame, self._size)
        pts = max(self._last_pts + 1, round((time.monotonic() - self._t0) / PUSH_TIME_BASE))
        self._last_pts = pts
        video_frame.pts = pts
        video_frame.time_base = PUSH_TIME_BASE
        for packet in self._video.encode(video_frame):
            self._container.mux(packet)
        self.frames_sent += 1

    def _disconnect(self) -> None:
        container, self._container, self._video = self._container, None, None
        if container is not None:
            with contextlib.suppress(Exception):
                container.close()


async def run_sink(name: str, sink: FileRecorder | RtspPusher, frames: Any) -> None:
    """A sink's task: runs it, logs a failure with its traceback, and always closes its subscription (a
    lossless recorder that died must not hold the pipeline)."""
    try:
        await sink.run(frames)
    except asyncio.CancelledError:
        pass
    except Exception:
        logger.exception("%s failed", name)
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()
