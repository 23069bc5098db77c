"""Where a stream's colorized frames go besides viewers: a recorded file and a pushed RTSP stream.

Both sinks consume a :class:`~chromastream.stream.pipeline.Subscription` and do their encoding in a thread of
their own (one per sink, so one encoder is never touched by two threads and a slow disk or network never holds
the event loop).

:class:`FileRecorder`
    records in segments named after their UTC start time (never over an earlier run's files), as
    fragmented MP4 (or Matroska) flushed packet by packet, so a crash leaves every segment playable up to
    its last fragment; one metadata object per frame goes beside each segment as JSON lines
    (``<segment>.jsonl``). Frames are placed on a clock that keeps a camera's outage as a gap and never
    squeezes frames (:mod:`chromastream.stream.recording`), frames the live path dropped are filled with
    the last picture and marked, and the source's sound is written beside them as AAC.
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
import random
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import av
import av.error
import numpy as np
from av.video.frame import PictureType

from chromastream.stream.av_glue import (
    ENCODER,
    ENCODER_OPTIONS,
    NVENC,
    av_message,
    h264_level,
    live_h264_encoder,
    nvenc_options,
    tag_colour,
    to_video_frame,
    x264_options,
)
from chromastream.stream.config import RecordConfig
from chromastream.stream.errors import OutputError
from chromastream.stream.formats import CONTAINERS
from chromastream.stream.frames import AudioChunk, OutputFrame
from chromastream.stream.recording import TICKS, TIME_BASE, RecordingClock, SegmentNames
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
#: x264 settings for a live push, besides the preset, tune and threads of a live encoder
#: (:func:`~chromastream.stream.av_glue.x264_options`, which has no lookahead): no B-frames (every frame
#: leaves at once), baseline for players and servers that take nothing else, and a key frame every second
#: so a viewer that joins (or a server after our reconnect) starts decoding within a second.
PUSH_OPTIONS = {"profile": "baseline", "g": "25", "bf": "0"}
#: Frames between the push's key frames (``g`` above), also for NVENC.
PUSH_KEYFRAME_INTERVAL = 25
#: RTSP timestamps are in 90 kHz units by convention; the push clock is counted in them.
PUSH_TIME_BASE = Fraction(1, 90000)


class _Worker:
    """One thread for one encoder: calls made from the event loop run there, in order."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# --- recording -------------------------------------------------------------------------------------

#: Containers a recording may use: each stays readable up to its last fragment (MP4, MOV) or cluster
#: (Matroska) when the process dies.
RECORD_CONTAINERS = {suffix: CONTAINERS[suffix] for suffix in (".mp4", ".mov", ".mkv")}
#: Fragmented MP4/MOV: the track header first, then one fragment per key frame and no index to write at
#: the end, so a segment plays up to its last fragment whenever it is read.
_FRAGMENTED = {"movflags": "+frag_keyframe+empty_moov+default_base_moof"}
#: A key frame (and with it an MP4 fragment) at least this often, in seconds of the recording at any frame
#: rate: the most a crash can take from a segment, besides the few frames inside the encoder.
RECORD_KEYFRAME_S = 2.0
#: x264 settings of a recording, besides its preset and threads
#: (:func:`~chromastream.stream.av_glue.x264_options`): the file path's CRF, without B-frames, so packets
#: leave in display order (a segment's last packet is its last picture, whose duration then reaches the
#: next segment's start) and fewer frames are inside the encoder when the process dies.
RECORD_OPTIONS = {"crf": ENCODER_OPTIONS["crf"], "bf": "0"}
#: How long a recording whose disk failed waits before it tries a new segment.
RECORD_RETRY_S = 10.0
#: The sound is moved onto the picture's clock again only when the two drift apart by more than this.
AUDIO_RESYNC_S = Fraction(1, 10)


class _Segment:
    """One segment being written: container, encoder, sound track and metadata lines, all under the
    segment's final name from the start (fragmented, so it is playable up to its last fragment at any
    time). Its clock starts at zero at its first picture, ``start`` ticks into the recording."""

    def __init__(
        self,
        path: Path,
        fmt: str,
        start: int,
        size: tuple[int, int],
        full_range: bool,
        audio: tuple[int, str] | None,
    ) -> None:
        self.path = path
        self.metadata_path = path.with_suffix(".jsonl")
        self.start = start
        self.frames = 0
        self._last_key: int | None = None  # segment ticks of the last key frame
        self._held: av.Packet[Any] | None = None  # the newest video packet: its duration is known only later
        self._audio_next = 0  # where the next sound sample belongs (samples since the segment's start)
        options = {"flush_packets": "1", **(_FRAGMENTED if fmt in ("mp4", "mov") else {})}
        try:
            self._container = av.open(str(path), mode="w", format=fmt, options=options)
        except (av.error.FFmpegError, OSError) as exc:
            raise OutputError(f"cannot create {path}: {av_message(exc)}") from exc
        try:
            codec_options = {**RECORD_OPTIONS, **x264_options(*size, "record")}
            video = self._container.add_stream(ENCODER, rate=NOMINAL_RATE, options=codec_options)
            video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
            video.time_base = TIME_BASE
            video.codec_context.time_base = TIME_BASE
            tag_colour(video.codec_context, full_range)
            self._video = video
            self._audio: av.AudioStream | None = None
            if audio is not None:
                try:
                    self._audio = self._container.add_stream("aac", rate=audio[0], layout=audio[1])
                except (ValueError, av.error.FFmpegError) as exc:
                    logger.warning("recording %s: the sound is left out (%s)", path, av_message(exc))
            self._container.start_encoding()
            self._jsonl = open(self.metadata_path, "x", encoding="utf-8", buffering=1)  # noqa: SIM115
        except (av.error.FFmpegError, OSError) as exc:
            with contextlib.suppress(Exception):
                self._container.close()
            raise OutputError(f"cannot create {path}: {av_message(exc)}") from exc

    def write_picture(self, picture: av.VideoFrame, at: int, metadata: dict[str, Any]) -> None:
        """Encode ``picture`` at ``at`` (recording ticks) and write its metadata line."""
        pts = at - self.start
        picture.pts = pts
        picture.time_base = TIME_BASE
        key = self._last_key is None or pts - self._last_key >= RECORD_KEYFRAME_S * TICKS
        picture.pict_type = PictureType.I if key else PictureType.NONE
        if key:
            self._last_key = pts
        self._encode(picture)
        line = {**metadata, "recording_time": round(pts / TICKS, 6)}
        try:
            self._jsonl.write(json.dumps(line, separators=(",", ":")) + "\n")
        except OSError as exc:
            raise OutputError(f"cannot write {self.metadata_path}: {av_message(exc)}") from exc
        self.frames += 1

    def _encode(self, picture: av.VideoFrame | None) -> None:
        try:
            for packet in self._video.encode(picture):
                if self._held is not None:
                    self._container.mux(self._held)
                self._held = packet
        except (av.error.FFmpegError, OSError) as exc:
            raise OutputError(f"cannot write {self.path}: {av_message(exc)}") from exc

    def write_sound(self, samples: np.ndarray, rate: int, position: int) -> int:
        """Encode ``samples`` at ``position`` (samples since the segment's start); a gap since the last
        sound is filled with silence. Returns the samples written, 0 if the sound did not fit."""
        audio = self._audio
        if audio is None or rate != audio.codec_context.sample_rate:
            return 0
        if samples.shape[0] != (1 if audio.layout.name == "mono" else 2):
            return 0  # the source's sound changed shape mid-recording
        if position < 0:  # began before this segment's first picture: the previous segment has it
            samples, position = samples[:, -position:], 0
        gap = position - self._audio_next
        if gap < 0 or samples.shape[1] == 0:  # overlaps sound already written: keep what came first
            return 0
        written = 0
        if 0 < gap <= MAX_SILENCE_S * rate:
            written += self._encode_samples(np.zeros((samples.shape[0], gap), np.float32), self._audio_next)
        return written + self._encode_samples(samples, position)

    def _encode_samples(self, samples: np.ndarray, pts: int) -> int:
        assert self._audio is not None
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
            raise OutputError(f"cannot write {self.path}: {av_message(exc)}") from exc
        self._audio_next = pts + int(samples.shape[1])
        return int(samples.shape[1])

    def close(self, end: int) -> None:
        """Flush the encoders and close the files; the last picture lasts until ``end`` (recording ticks:
        the next segment's start), so consecutive segments cover the recording without a hole."""
        try:
            if self._audio is not None:
                for packet in self._audio.encode(None):
                    self._container.mux(packet)
            self._encode(None)
            held, self._held = self._held, None
            if held is not None:
                if held.pts is not None and held.time_base is not None:
                    until = round((end - self.start) * TIME_BASE / held.time_base)
                    held.duration = max(1, until - held.pts)
                self._container.mux(held)
            self._container.close()
        except (av.error.FFmpegError, OSError) as exc:
            raise OutputError(f"cannot finish {self.path}: {av_message(exc)}") from exc
        finally:
            with contextlib.suppress(OSError):
                self._jsonl.close()

    def abandon(self) -> None:
        """Stop writing after a failure: what reached the file stays readable up to its last fragment."""
        with contextlib.suppress(Exception):
            self._container.close()
        with contextlib.suppress(Exception):
            self._jsonl.close()


class FileRecorder:
    """Records one stream's output as a series of segments, with a metadata line per frame beside each.

    Segments (:class:`~chromastream.stream.config.RecordConfig`) are named after their UTC start time and
    created exclusively, so no run writes over another's files. Each is written under its final name as
    fragmented MP4 (or Matroska) and flushed packet by packet: if the process dies, every finished segment
    plays and the one being written plays up to its last fragment. A segment starts at the first frame
    ``segment_s`` after the previous one's start, and the previous one's last picture lasts until then, so
    the segments' durations add up to the recording's.

    **Timeline.** :class:`~chromastream.stream.recording.RecordingClock` places each frame: for a live
    source on the wall clock at which the source delivered it, smoothed by the source's own timestamps
    while those agree with it. A camera that is down for 20 s leaves a 20 s gap, never a run of squeezed
    frames, and the recording lasts as long as the time it covers. Each metadata line carries
    ``recording_time``, the frame's time in its segment.

    **Every source frame accounted for.** A live stream drops its oldest frames when the machine cannot
    colorize them all (that keeps the live path's latency bounded), and the recorder's own queue drops
    if the disk falls behind. Colorizing the recording's frames on a lossless path of their own would
    need more CPU exactly when there is none to spare, and it would fall further behind for as long as the
    load lasts. Instead each frame the recorder did not receive (a gap in :attr:`OutputFrame.index`) is
    *filled*: the last picture is repeated at the missing frame's place on the recording's clock, and its
    metadata line says ``"filled": true`` with the missing frame's ``index`` and the index it ``repeats``.
    An operator sees a picture for every moment the camera delivered one, and knows which pictures are
    repeats. A repeated picture costs the encoder next to nothing.

    **Failures.** A segment that cannot be created or written (a full or unmounted disk) is abandoned with
    one line in the log, :attr:`on_problem` is told, and a new segment is tried :data:`RECORD_RETRY_S`
    later; frames in between are counted in :attr:`lost`. :meth:`check` tells at start-up whether the
    folder can be written at all.

    The source's sound (:meth:`add_audio`, on the source's clock) follows the picture's clock and is
    written up to the end of each picture, so both tracks end together; a gap in it becomes silence.
    """

    def __init__(self, target: RecordConfig, stream_id: str = "", *, paced: bool = False) -> None:
        names = SegmentNames.for_path(target.path, stream_id)
        if names.suffix not in RECORD_CONTAINERS:
            raise OutputError(
                f"cannot record to {target.path}: use one of {', '.join(sorted(RECORD_CONTAINERS))}"
            )
        self.target = target
        self.path = target.path
        self.names = names
        self.stream_id = stream_id
        self.format = RECORD_CONTAINERS[names.suffix]
        self.clock = RecordingClock(paced)
        self.segments: list[Path] = []
        """Segments finished so far, oldest first."""
        self.frames = 0
        """Frames of the stream written."""
        self.filled = 0
        """Pictures repeated in place of frames the recorder did not receive."""
        self.lost = 0
        """Frames not recorded because no segment could be written (a disk failure)."""
        self.audio_samples = 0
        """Sound samples written (silence for gaps included)."""
        self.audio_dropped = 0
        """Sound chunks not written (no sound track in the segment, overlapping sound, recorder behind)."""
        self.on_problem: Callable[[str | None], None] | None = None
        """Told (on the event loop) when recording stops working, with the reason, and when it works again
        (``None``)."""
        self._segment: _Segment | None = None
        self._segment_ticks = round(target.segment_s * TICKS)
        self._utc0: datetime | None = None  # the UTC time of the recording's tick 0
        self._size = (0, 0)
        self._full_range = False
        self._last_index: int | None = None
        self._last_at: int | None = None
        self._last_picture: av.VideoFrame | None = None
        self._picture_end: Fraction | None = None  # the end of the last picture on the source's clock
        self._retry_at = 0.0
        self._problem: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._audio_pending: deque[AudioChunk] = deque()
        self._audio_format: tuple[int, str] | None = None
        self._audio_offset: int | None = None  # recording ticks minus the sound's source ticks

    def check(self) -> None:
        """Raise :class:`OutputError` unless the segments' folder can be created and written to (it writes
        and removes a nameless temporary file there)."""
        folder = self.names.folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as exc:
            raise OutputError(f"cannot record to {folder}: {exc.strerror or exc}") from None

    def add_audio(self, chunk: AudioChunk) -> None:
        """From the event loop: the source's sound, written beside the frames by the recorder's thread."""
        if self._audio_format is None:
            self._audio_format = (chunk.rate, chunk.layout)
        if len(self._audio_pending) >= MAX_PENDING_AUDIO:
            self._audio_pending.popleft()
            self.audio_dropped += 1
        self._audio_pending.append(chunk)

    async def run(self, frames: AsyncIterator[OutputFrame]) -> None:
        """Record every frame ``frames`` yields; finish the last segment when it ends (or fails, or the
        task is cancelled: what was recorded stays)."""
        self._loop = asyncio.get_running_loop()
        worker = _Worker(f"record-{self.stream_id}")
        try:
            async for frame in frames:
                await worker.call(self._write, frame)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(worker.call(self._finish))
            raise
        else:
            await worker.call(self._finish)
        finally:
            worker.shutdown()

    # --- in the recorder's thread ------------------------------------------------------------------

    def _write(self, frame: OutputFrame) -> None:
        if self._utc0 is None:
            self._utc0 = datetime.now(UTC) - timedelta(seconds=max(0.0, time.monotonic() - frame.ingest_time))
        last_index = self._last_index
        steps = frame.index - last_index if last_index is not None and frame.index > last_index else 1
        source = None if frame.pts is None else frame.pts * frame.time_base
        at = self.clock.place(source, frame.ingest_time, steps)
        if steps > 1 and last_index is not None:
            self._fill(last_index, steps - 1, at)
        if self._segment is None or at - self._segment.start >= self._segment_ticks:
            self._next_segment(at, frame)
        if source is not None:
            self._picture_end = source + Fraction(round(self.clock.interval), TICKS)
            self._follow_picture_clock()
        segment = self._segment
        self._last_index, self._last_at = frame.index, at
        if segment is None:
            self.lost += 1
            return
        try:
            if source is not None and self._picture_end is not None:
                # Sound up to the end of this picture, no further: the sound of pictures still in the
                # colorizer waits for them, so whenever the stream stops, both tracks end together.
                self._write_sound(segment, self._picture_end)
            picture = to_video_frame(frame, self._size)
            segment.write_picture(picture, at, {**frame.metadata, "filled": False})
        except OutputError as exc:
            self.lost += 1
            self._failed(exc)
            return
        self._last_picture = picture
        self.frames += 1

    def _fill(self, last_index: int, missing: int, at: int) -> None:
        """Repeat the last picture for the ``missing`` frames between the last one and this one (at
        ``at``): evenly spaced, or one frame interval apart just before ``at`` when the two frames are
        further apart than that (an outage: the missing frames came with the camera's return)."""
        segment, picture, last_at = self._segment, self._last_picture, self._last_at
        if segment is None or picture is None or last_at is None:
            self.lost += missing
            return
        step = min(self.clock.interval, (at - last_at) / (missing + 1))
        k = 1
        try:
            for k in range(1, missing + 1):
                metadata = {"stream": self.stream_id, "index": last_index + k, "filled": True}
                metadata["repeats"] = last_index
                segment.write_picture(picture, at - round((missing + 1 - k) * step), metadata)
                self.filled += 1
        except OutputError as exc:
            self.lost += missing - k + 1
            self._failed(exc)

    def _next_segment(self, at: int, frame: OutputFrame) -> None:
        """Close the current segment at ``at`` and start the next one with ``frame`` (unless the disk
        failed less than :data:`RECORD_RETRY_S` ago)."""
        old, self._segment = self._segment, None
        if old is not None:
            try:
                old.close(end=at)
            except OutputError as exc:
                logger.error("stream %s: %s (it plays up to its last fragment)", self.stream_id, exc)
            self.segments.append(old.path)
        if time.monotonic() < self._retry_at:
            return
        assert self._utc0 is not None
        self._size = (frame.y.shape[1], frame.y.shape[0])
        self._full_range = frame.full_range
        try:
            path = self.names.claim(self._utc0 + timedelta(seconds=at / TICKS))
        except OSError as exc:
            self._failed(OutputError(f"cannot record to {self.names.folder}: {exc.strerror or exc}"))
            return
        try:
            self._segment = _Segment(path, self.format, at, self._size, self._full_range, self._audio_format)
        except OutputError as exc:
            with contextlib.suppress(OSError):
                path.unlink()  # only the empty file claimed above
            self._failed(exc)
            return
        logger.info("stream %s: recording to %s", self.stream_id, path)
        self._report(None)
        self._prune(keep=path)

    def _follow_picture_clock(self) -> None:
        offset = self.clock.offset
        if offset is None:
            return
        if self._audio_offset is None or abs(offset - self._audio_offset) > AUDIO_RESYNC_S * TICKS:
            self._audio_offset = offset

    def _write_sound(self, segment: _Segment, until: Fraction) -> None:
        """Encode the pending sound that starts before ``until`` (seconds on the source's clock)."""
        while self._audio_pending:
            chunk = self._audio_pending[0]
            if chunk.time >= until:
                return
            self._audio_pending.popleft()
            if self._audio_offset is None:
                self.audio_dropped += 1
                continue
            at = round(chunk.time * TICKS) + self._audio_offset - segment.start
            written = segment.write_sound(chunk.samples, chunk.rate, round(Fraction(at * chunk.rate, TICKS)))
            if written:
                self.audio_samples += written
            else:
                self.audio_dropped += 1

    def _failed(self, exc: OutputError) -> None:
        segment, self._segment = self._segment, None
        if segment is not None:
            segment.abandon()
            self.segments.append(segment.path)
        self._retry_at = time.monotonic() + RECORD_RETRY_S
        logger.error(
            "stream %s: recording stopped: %s; trying again in %g s", self.stream_id, exc, RECORD_RETRY_S
        )
        self._report(str(exc))

    def _report(self, problem: str | None) -> None:
        if problem == self._problem:
            return
        self._problem = problem
        callback, loop = self.on_problem, self._loop
        if callback is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing: nobody is asking any more
                loop.call_soon_threadsafe(callback, problem)

    def _prune(self, keep: Path) -> None:
        target = self.target
        if target.retain_hours is None and target.retain_segments is None:
            return
        deleted = self.names.prune(datetime.now(UTC), target.retain_hours, target.retain_segments, keep)
        if deleted:
            logger.info("stream %s: deleted %d old segment(s) (retention)", self.stream_id, len(deleted))

    def _finish(self) -> None:
        segment, self._segment = self._segment, None
        if segment is not None and self._picture_end is not None:
            # Sound read ahead of the last picture stays out: both tracks end together.
            with contextlib.suppress(OutputError):
                self._write_sound(segment, self._picture_end)
        self.audio_dropped += len(self._audio_pending)
        self._audio_pending.clear()
        if self._last_index is None:
            logger.info("stream %s: no frames, no recording", self.stream_id)
            return
        if segment is not None:
            assert self._last_at is not None
            self.segments.append(segment.path)
            segment.close(end=self._last_at + max(1, round(self.clock.interval)))
        logger.info(
            "stream %s: recorded %d frames (%d repeated for frames the recorder did not get, %d lost) "
            "in %d segment(s)",
            self.stream_id,
            self.frames,
            self.filled,
            self.lost,
            len(self.segments),
        )


# --- RTSP push -------------------------------------------------------------------------------------


class RtspPusher:
    """Publishes one stream's output to ``url`` (RTSP ``RECORD`` over TCP), reconnecting on its own.

    Timestamps are the push's own clock (time since the connection opened, 90 kHz), not the source's:
    a live source's pts jump on reconnects and loops, and a server that receives a jump back stalls. The
    pace is that of the frames :meth:`run` receives. ``encoder`` is ``webrtc.h264_encoder``: libx264 or
    NVENC (:func:`~chromastream.stream.av_glue.live_h264_encoder`, checked on the first connection).
    """

    def __init__(
        self,
        url: str,
        stream_id: str = "",
        *,
        backoff: Backoff | None = None,
        timeout: float = 5.0,
        rng: random.Random | None = None,
        encoder: str = "auto",
    ) -> None:
        self.url = url
        self.encoder = encoder
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
            raise OutputError(f"push to {self.shown_url} failed: {av_message(exc)}") from None
        self.failures += 1
        delay = self.backoff.delay(attempt, self._rng)
        logger.warning(
            "push %s to %s: %s; retrying in %.2f s", self.stream_id, self.shown_url, av_message(exc), delay
        )
        return time.monotonic() + delay

    def _connect(self, size: tuple[int, int], full_range: bool) -> None:
        container = av.open(
            self.url, mode="w", format="rtsp", options={"rtsp_transport": "tcp"}, timeout=self.timeout
        )
        try:
            name = live_h264_encoder(self.encoder)
            level = {"level": h264_level(*size, float(NOMINAL_RATE))}
            if name == NVENC:
                codec_options = {
                    **nvenc_options(None, PUSH_KEYFRAME_INTERVAL),
                    "profile": "baseline",
                    **level,
                }
            else:
                codec_options = {**PUSH_OPTIONS, **x264_options(*size, "live"), **level}
            video = container.add_stream(name, rate=NOMINAL_RATE, options=codec_options)
            assert isinstance(video, av.VideoStream)
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
