"""The live pipeline: many streams in, colorized frames with metadata out, latency bounded.

Each stream is a small graph of three tasks joined by bounded queues, all of them one type,
:class:`~chromastream.stream.queues.DropQueue` (the queues are described in ``docs/ARCHITECTURE.md``):

``read``
    pulls events from the stream's :class:`~chromastream.stream.frames.Source` into the *input queue*, of
    ``queue_size`` frames. The queue's :class:`DropPolicy` is named per source: ``DROP_OLDEST`` for live
    sources (a camera does not wait for us; when we fall behind, the oldest frame goes and the drop is
    counted, so latency stays bounded) and ``WAIT`` for files (nothing is lost; the reader simply waits).
    Resets and the end of the stream are never dropped. Every ``1 / detector_rate`` seconds it also hands
    an input frame to the optional :class:`DetectorHook`, in a task of its own, so the detector never
    delays a frame.

    ``queue_size`` is the whole bound on a live frame's wait: it reaches inference having waited behind at
    most ``queue_size`` frames. The reader never waits on a live stream's input queue, so it takes each
    frame as soon as the source hands it over; a source that decodes in a thread hands frames to the loop
    through a handover of a single frame (:mod:`chromastream.stream.sources._common`), which sits
    *behind* the input queue and so puts no frame ahead of any other. Frames the handover replaced are
    the source's drops (``stage="source"`` in the metrics), frames the input queue dropped are the
    pipeline's (``stage="input"``); each drop is counted once, where it happened.
``infer``
    takes one frame at a time: scene-cut check, network input, and the recurrent state and hint raster
    from the stream's :class:`~chromastream.models.runtime.stream_memory.StreamMemory` (in the CPU
    executor), then the shared :class:`~chromastream.stream.batcher.Batcher`, which runs frames of all
    streams in one inference call, and back to the memory for the new state and the filtered ab in Lab
    units. The stream's memory lives in this task and nowhere else (the engine is stateless); it is the
    same object :class:`~chromastream.models.runtime.session.ColorizerSession` uses for ``colorize`` and
    the benchmarks. This task decides *when* the memory starts afresh (start, source reset, resize,
    request, scene cut) and counts why.
``output``
    turns the low-resolution ``ab`` and the full-resolution input luma into 4:2:0 planes (CPU executor;
    the output's Y plane *is* the input's), attaches the metadata and offers the frame to every
    :class:`Subscription`. Between ``infer`` and ``output`` sits a queue of one frame, so a frame is
    post-processed while the next one is inferred.

Subscribers (WebRTC encoders, SSE clients, recorders) each have their own bounded queue and drop their own
oldest frame when they fall behind, so a slow viewer never slows the pipeline or another viewer.

A supervisor task per stream owns the three tasks: when the source ends, the last frame flows out and
subscribers receive :class:`~chromastream.stream.frames.EndOfStream`; when any task fails, the error is logged
with its traceback and shown in :class:`StreamInfo`, the other tasks are cancelled and the source is closed.
Closing is bounded by :attr:`Pipeline.close_timeout`, so a source that hangs cannot hang
:meth:`Pipeline.stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
from prometheus_client import CollectorRegistry

from chromastream.errors import ChromastreamError
from chromastream.kernels.frame_ops import FrameOps, frame_ops_for
from chromastream.models.colorizer.hints import Hint, checked_hints
from chromastream.models.runtime.base import F32, Backend
from chromastream.models.runtime.session import working_shape
from chromastream.models.runtime.stream_memory import StreamMemory
from chromastream.stream.batcher import Batcher
from chromastream.stream.config import PipelineConfig, StreamConfig
from chromastream.stream.errors import OutputError
from chromastream.stream.frames import (
    U8,
    AudioChunk,
    EndOfStream,
    Frame,
    OutputFrame,
    Reset,
    Source,
    SourceEvent,
)
from chromastream.stream.metadata import ColorizerInfo, frame_metadata
from chromastream.stream.metrics import PipelineMetrics
from chromastream.stream.queues import DropPolicy, DropQueue
from chromastream.stream.scene_cut import SceneCutDetector
from chromastream.stream.sinks import FileRecorder, RtspPusher, run_sink
from chromastream.stream.urls import redact_url

logger = logging.getLogger(__name__)

_R = TypeVar("_R")

#: Window of the rolling rates and latency percentiles in :class:`StreamInfo`.
WINDOW_S = 5.0
_WINDOW_MAX = 4096


class PipelineError(ChromastreamError):
    """Base class of the pipeline's errors."""


class DuplicateStream(PipelineError):
    """A stream with that id exists already."""


class UnknownStream(PipelineError):
    """No stream has that id."""


class PipelineClosed(PipelineError):
    """The pipeline was stopped; it takes no more streams."""


# --- subscriptions ---------------------------------------------------------------------------------


def _is_frame(item: object) -> bool:
    return isinstance(item, Frame | OutputFrame)


class Subscription:
    """One consumer's view of a stream's output: an async iterator of :class:`OutputFrame`.

    It ends (``StopAsyncIteration``) when the stream ends or is removed, or after :meth:`close`. With the
    default ``DROP_OLDEST`` policy a consumer that falls behind loses its own oldest frames (counted in
    :attr:`drops`) and nobody else notices; ``WAIT`` makes the pipeline wait for this consumer, for
    lossless recording of files only.
    """

    def __init__(
        self,
        stream_id: str,
        maxsize: int,
        policy: DropPolicy,
        on_close: Callable[[Subscription], None],
        on_drop: Callable[[], None],
    ):
        self.stream_id = stream_id
        self.policy = policy
        self._queue: DropQueue[OutputFrame | EndOfStream] = DropQueue(
            maxsize, policy, _is_frame, lambda _: on_drop()
        )
        self._on_close: Callable[[Subscription], None] | None = on_close
        self._ended = False  # EndOfStream queued: nothing more is delivered
        self._finished = False  # the consumer has seen the end

    @property
    def drops(self) -> int:
        """Frames this subscriber lost by falling behind."""
        return self._queue.drops

    @property
    def closed(self) -> bool:
        return self._ended

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> OutputFrame:
        if self._finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, EndOfStream):
            self._finished = True
            self._detach()
            raise StopAsyncIteration
        return item

    def close(self) -> None:
        """Stop receiving at once (frames not yet taken are discarded); a consumer waiting in
        ``__anext__`` wakes up and the iteration ends, and a pipeline waiting to deliver moves on."""
        self._ended = True
        self._queue.close(EndOfStream(self.stream_id))
        self._detach()

    async def _deliver(self, frame: OutputFrame) -> None:
        if self._ended:
            return
        if self.policy is DropPolicy.WAIT:
            await self._queue.put(frame)
        else:
            self._queue.put_nowait(frame)

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(EndOfStream(self.stream_id))

    def _detach(self) -> None:
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close(self)


# --- stream bookkeeping ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """A snapshot of one stream for the API and the viewer page."""

    id: str
    url: str
    """The source URL as :func:`~chromastream.stream.urls.redact_url` shows it everywhere: without user
    name, password or secret query values."""
    state: str
    """``starting`` (no frame out yet), ``running``, ``reconnecting`` (a live source is down and retrying),
    ``ended`` (the source ended or the stream was removed) or ``failed`` (see ``error``)."""
    error: str | None
    width: int | None
    height: int | None
    fps_in: float
    """Frames per second from the source over the last 5 s (before any drop)."""
    fps_out: float
    latency_ms_p50: float | None
    """End-to-end latency (source -> published) over the last 5 s."""
    latency_ms_p95: float | None
    frames_in: int
    frames_out: int
    drops: int
    """Frames of a live source dropped because the pipeline fell behind (in the source's own handover or
    the pipeline's input queue); a subscriber's drops are its own (:attr:`Subscription.drops`)."""
    resets: int
    """State resets (reconnect, loop, scene cut, request, size change)."""
    viewers: int
    """Open subscriptions to the stream's output."""
    deepfake: dict[str, Any] | None = None
    """The detector's latest verdict (the metadata's ``deepfake`` shape); ``None`` while there is none."""
    decoder: str | None = None
    """What decodes the source's video: ``h264 (software)``, ``h264 (cuda)`` (NVDEC, see
    ``sources.decode``); ``None`` before the input is opened, and for sources that decode nothing
    themselves (test patterns, WHIP publishers, whose video the WebRTC library decodes)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Rolling:
    """Timestamps (and values) of recent events, for rates and percentiles over a sliding window."""

    def __init__(self) -> None:
        self._items: deque[tuple[float, float]] = deque(maxlen=_WINDOW_MAX)

    def add(self, now: float, value: float = 0.0) -> None:
        self._items.append((now, value))

    def _recent(self, now: float) -> list[tuple[float, float]]:
        while self._items and self._items[0][0] < now - WINDOW_S:
            self._items.popleft()
        return list(self._items)

    def rate(self, now: float) -> float:
        items = self._recent(now)
        if len(items) < 2 or items[-1][0] <= items[0][0]:
            return 0.0
        return (len(items) - 1) / (items[-1][0] - items[0][0])

    def percentile(self, now: float, q: float) -> float | None:
        items = self._recent(now)
        if not items:
            return None
        return round(float(np.percentile([v for _, v in items], q)), 3)


class DetectorHook(Protocol):
    """Where the deepfake detector plugs in: it sees sampled *input* frames, off the video path.

    The pipeline calls :meth:`detect` at most ``detector_rate`` times a second per stream, never with two
    calls in flight for one stream, and never waits for it before colorizing; a frame that arrives while a
    call is running is simply not sampled. The returned verdict (the metadata's ``deepfake`` shape, see
    :mod:`chromastream.stream.metadata`) goes into every following frame's metadata until the next verdict.
    """

    async def detect(self, frame: Frame) -> dict[str, Any]: ...

    def forget(self, stream_id: str) -> None:
        """The stream is gone: drop its face tracks."""
        ...


@dataclass(slots=True)
class _Colorized:
    frame: Frame
    ab: F32  # [2, h, w], Lab units
    colorizer: ColorizerInfo


class _Stream:
    """Everything the pipeline keeps about one stream (only the pipeline touches it)."""

    def __init__(self, cfg: StreamConfig, source: Source, queue_size: int, metrics: PipelineMetrics):
        self.cfg = cfg
        self.id = cfg.id
        self.source = source
        self.live = bool(getattr(source, "live", True))
        self.state = "starting"
        self.error: str | None = None
        self.width: int | None = None
        self.height: int | None = None
        self.frames_in = 0
        self.frames_out = 0
        self.resets = 0
        self.hints: tuple[Hint, ...] = tuple(cfg.hints)
        self.reset_requested = False
        self.fps_in = _Rolling()
        self.fps_out = _Rolling()
        self.latency = _Rolling()
        self.subscribers: list[Subscription] = []
        self.verdict: dict[str, Any] | None = None
        self.last_sample = -float("inf")
        self.detecting: asyncio.Task[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.sinks: list[asyncio.Task[None]] = []  # recorder / RTSP push of StreamConfig, if asked for
        self.audio_sinks: list[FileRecorder] = []  # recorders, which also keep the source's sound
        self.reconnects_seen = 0
        self.connect_attempts_seen = 0
        self.source_drops = 0
        dropped = metrics.dropped.labels(cfg.id, "input")

        def count_drop(_: SourceEvent) -> None:
            dropped.inc()

        self.input: DropQueue[Frame | Reset | EndOfStream] = DropQueue(
            queue_size, DropPolicy.DROP_OLDEST if self.live else DropPolicy.WAIT, _is_frame, count_drop
        )
        # One frame between inference and post-processing: they overlap, and back-pressure reaches the
        # input queue, which is where a live stream's drops belong.
        self.colorized: DropQueue[_Colorized | EndOfStream] = DropQueue(1, DropPolicy.WAIT, _is_frame)

    @property
    def drops(self) -> int:
        return self.input.drops + self.source_drops

    def end_subscribers(self) -> None:
        for sub in list(self.subscribers):
            sub._end()


@dataclass(frozen=True, slots=True)
class _SourceReport:
    reconnects: int | None
    dropped: int | None
    connect_attempts: int | None
    reconnecting: bool


def _source_report(source: Source) -> _SourceReport:
    """What a source says about itself beyond the :class:`Source` protocol, duck-typed so any source may
    report it: ``stats.reconnects`` and ``stats.dropped`` (counters, object or mapping) and whether it is
    reconnecting now (``state == "reconnecting"`` or ``connected is False`` on the source or its stats)."""
    stats = getattr(source, "stats", None)

    def get(obj: Any, name: str) -> Any:
        return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)

    def counter(name: str) -> int | None:
        value = get(stats, name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    reconnecting = any(
        get(obj, "state") == "reconnecting" or get(obj, "connected") is False for obj in (source, stats)
    )
    return _SourceReport(counter("reconnects"), counter("dropped"), counter("connect_attempts"), reconnecting)


#: Frames a recorder of a live stream may fall behind before its oldest are dropped (and repeated).
RECORDER_QUEUE = 16


def _recording_problem(stream: _Stream, problem: str | None) -> None:
    """A recorder stopped working (``problem``) or works again (``None``): shown as the stream's error
    while the stream itself keeps running."""
    if stream.state == "failed":
        return
    if problem is not None:
        stream.error = f"recording: {problem}"
    elif stream.error is not None and stream.error.startswith("recording: "):
        stream.error = None


# --- the pipeline ----------------------------------------------------------------------------------


class Pipeline:
    """Runs every stream's graph over one backend; the server's and the CLI's only handle on streams."""

    close_timeout = 2.0
    """Seconds a stream's tasks and its source get to finish when stopped before they are abandoned."""
    sink_close_timeout = 10.0
    """Seconds a stream's sinks get to flush (a recorder's encoder, a push's last packets) when it ends."""
    sink_check_timeout = 10.0
    """Seconds the start-up check of a recording's folder may take before the stream is failed."""

    def __init__(
        self,
        config: PipelineConfig,
        backend: Backend,
        *,
        detector: DetectorHook | None = None,
        registry: CollectorRegistry | None = None,
        decode: str = "auto",
        h264_encoder: str = "auto",
    ):
        self.config = config
        self.backend = backend
        self.decode = decode
        """How the streams' sources decode (``sources.decode``), for the sources it opens from a URL."""
        self.h264_encoder = h264_encoder
        """The RTSP push's H.264 encoder (``webrtc.h264_encoder``)."""
        self.detector = detector
        self.metrics = PipelineMetrics(registry)
        self.registry: CollectorRegistry = self.metrics.registry
        self.batcher = Batcher(backend, config.max_batch, config.max_wait_ms, self.metrics)
        # Frame pre/post-processing follows the model: on its GPU when it has one (kernels.frame_ops).
        self.frame_ops: FrameOps = frame_ops_for(backend)
        self._streams: dict[str, _Stream] = {}
        self._started = False
        self._stopped = False
        self._cpu: ThreadPoolExecutor | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the streams added so far; later ones start as they are added."""
        if self._stopped:
            raise PipelineClosed("the pipeline was stopped; create a new one")
        if self._started:
            return
        self._started = True
        for stream in self._streams.values():
            if stream.state != "failed":  # failed when added (an unwritable recording)
                self._launch(stream)

    async def stop(self) -> None:
        """Remove every stream (subscribers see the end), stop batching and the executors. Idempotent."""
        self._stopped = True
        ids = list(self._streams)
        await asyncio.gather(*(self._remove(i) for i in ids), return_exceptions=True)
        await self.batcher.close()
        if self._cpu is not None:
            self._cpu.shutdown(wait=False, cancel_futures=True)
            self._cpu = None

    async def add_stream(self, cfg: StreamConfig, source: Source | None = None) -> StreamInfo:
        """Add a stream and start it (if the pipeline runs); without ``source``, one is opened from
        ``cfg.url`` with :func:`chromastream.stream.sources.open_source`."""
        if self._stopped:
            raise PipelineClosed("the pipeline was stopped; it takes no more streams")
        if cfg.id in self._streams:
            raise DuplicateStream(f"stream {cfg.id!r} exists already")
        if source is None:
            from chromastream.stream.sources import open_source

            opened: Any = open_source(cfg.id, cfg.url, **_source_options(cfg, self.decode))
            source = await opened if inspect.isawaitable(opened) else opened
            assert source is not None
        if cfg.id in self._streams:  # added by someone else while the source opened
            with contextlib.suppress(Exception):
                await asyncio.wait_for(source.close(), self.close_timeout)
            raise DuplicateStream(f"stream {cfg.id!r} exists already")
        try:
            sinks = self._make_sinks(cfg, bool(getattr(source, "live", True)))
            problem = await self._check_sinks(sinks)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(source.close(), self.close_timeout)
            raise
        stream = _Stream(cfg, source, self.config.queue_size, self.metrics)
        self._streams[cfg.id] = stream
        self.batcher.callers = len(self._streams)
        self.metrics.viewers.labels(cfg.id).set(0)
        if problem is not None:
            # The stream is there, failed, with the reason where an operator looks (the API, the log),
            # rather than running without the recording it was configured to keep.
            stream.state, stream.error = "failed", problem
            logger.error("stream %s not started: %s", cfg.id, problem)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(source.close(), self.close_timeout)
            return self._info(stream)
        self._start_sinks(stream, sinks)
        if self._started:
            self._launch(stream)
        return self._info(stream)

    async def remove_stream(self, stream_id: str) -> None:
        """Stop a stream, close its source, end its subscriptions and forget it."""
        self._get(stream_id)
        await self._remove(stream_id)

    async def _remove(self, stream_id: str) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        try:
            if stream.task is not None:
                stream.task.cancel()
                # The supervisor's own clean-up is bounded; this bound only guards against a bug there.
                await asyncio.wait({stream.task}, timeout=3 * self.close_timeout)
            else:
                await self._close_source(stream)
        finally:
            if stream.state != "failed":
                stream.state = "ended"
            stream.end_subscribers()
            await self._finish_sinks(stream)
            self._streams.pop(stream_id, None)
            self.batcher.callers = len(self._streams)
            self.metrics.forget(stream_id)
            if self.detector is not None:
                with contextlib.suppress(Exception):
                    self.detector.forget(stream_id)

    # --- queries -----------------------------------------------------------------------------------

    def streams(self) -> list[StreamInfo]:
        return [self._info(s) for s in self._streams.values()]

    def info(self, stream_id: str) -> StreamInfo:
        return self._info(self._get(stream_id))

    def subscribe(
        self, stream_id: str, maxsize: int = 2, policy: DropPolicy = DropPolicy.DROP_OLDEST
    ) -> Subscription:
        """A new consumer of the stream's output, from its next frame on (see :class:`Subscription`)."""
        stream = self._get(stream_id)
        dropped = self.metrics.dropped.labels(stream_id, "subscriber")
        viewers = self.metrics.viewers.labels(stream_id)

        def on_close(sub: Subscription) -> None:
            if sub in stream.subscribers:
                stream.subscribers.remove(sub)
                viewers.set(len(stream.subscribers))

        sub = Subscription(stream_id, maxsize, policy, on_close, dropped.inc)
        if stream.state in ("ended", "failed"):
            sub._end()
        else:
            stream.subscribers.append(sub)
            viewers.set(len(stream.subscribers))
        return sub

    # --- control -----------------------------------------------------------------------------------

    def set_hints(self, stream_id: str, hints: Sequence[Hint]) -> None:
        """Replace the stream's hints from its next frame on; they persist across resets and reconnects
        (a fixed camera keeps its known colours)."""
        self._get(stream_id).hints = checked_hints(hints)

    def add_hint(self, stream_id: str, hint: Hint) -> None:
        self.set_hints(stream_id, (*self._get(stream_id).hints, hint))

    def clear_hints(self, stream_id: str) -> None:
        self.set_hints(stream_id, ())

    def hints(self, stream_id: str) -> list[Hint]:
        return list(self._get(stream_id).hints)

    def reset(self, stream_id: str) -> None:
        """Forget the stream's recurrent state at its next frame (reason ``request``)."""
        self._get(stream_id).reset_requested = True

    # --- internals ---------------------------------------------------------------------------------

    def _get(self, stream_id: str) -> _Stream:
        try:
            return self._streams[stream_id]
        except KeyError:
            raise UnknownStream(f"no stream {stream_id!r}") from None

    def _info(self, s: _Stream) -> StreamInfo:
        now = time.monotonic()
        state = s.state
        reconnecting = self._mirror(s).reconnecting
        if reconnecting and state == "running":
            state = "reconnecting"
        return StreamInfo(
            id=s.id,
            url=redact_url(s.cfg.url),
            state=state,
            error=s.error,
            width=s.width,
            height=s.height,
            fps_in=round(s.fps_in.rate(now), 3),
            fps_out=round(s.fps_out.rate(now), 3),
            latency_ms_p50=s.latency.percentile(now, 50),
            latency_ms_p95=s.latency.percentile(now, 95),
            frames_in=s.frames_in,
            frames_out=s.frames_out,
            drops=s.drops,
            resets=s.resets,
            viewers=len(s.subscribers),
            deepfake=s.verdict,
            decoder=getattr(s.source, "decoder", None),
        )

    def _mirror(self, s: _Stream) -> _SourceReport:
        """Bring the metrics up to the source's own counters (reconnects, frames it dropped itself)."""
        report = _source_report(s.source)
        if s.id not in self._streams:  # removed: its series are gone and must stay gone
            return report
        if report.reconnects is not None and report.reconnects > s.reconnects_seen:
            self.metrics.reconnects.labels(s.id).inc(report.reconnects - s.reconnects_seen)
            s.reconnects_seen = report.reconnects
        if report.connect_attempts is not None and report.connect_attempts > s.connect_attempts_seen:
            self.metrics.connect_attempts.labels(s.id).inc(report.connect_attempts - s.connect_attempts_seen)
            s.connect_attempts_seen = report.connect_attempts
        if report.dropped is not None and report.dropped > s.source_drops:
            self.metrics.dropped.labels(s.id, "source").inc(report.dropped - s.source_drops)
            s.source_drops = report.dropped
        return report

    def _cpu_pool(self) -> ThreadPoolExecutor:
        if self._cpu is None:
            workers = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
            self._cpu = ThreadPoolExecutor(max_workers=max(2, workers), thread_name_prefix="frames")
        return self._cpu

    def _make_sinks(self, cfg: StreamConfig, live: bool) -> list[FileRecorder | RtspPusher]:
        """The sinks ``cfg`` asks for, built (and validated) before the stream is registered. A recording
        of a live source is timed by the wall clock, one of a file by the file's own timestamps."""
        sinks: list[FileRecorder | RtspPusher] = []
        if cfg.record is not None:
            sinks.append(FileRecorder(cfg.record, cfg.id, paced=live))
        if cfg.rtsp_push is not None:
            sinks.append(RtspPusher(cfg.rtsp_push, cfg.id, encoder=self.h264_encoder))
        return sinks

    async def _check_sinks(self, sinks: list[FileRecorder | RtspPusher]) -> str | None:
        """Why a sink cannot work at all (a recording folder that cannot be written), or ``None``. The
        check runs in a thread with a time limit: a hung network mount must not hang the server."""
        for sink in sinks:
            if not isinstance(sink, FileRecorder):
                continue
            try:
                await asyncio.wait_for(asyncio.to_thread(sink.check), self.sink_check_timeout)
            except TimeoutError:
                return f"cannot record to {sink.names.folder}: no answer within {self.sink_check_timeout:g} s"
            except OutputError as exc:
                return str(exc)
        return None

    def _start_sinks(self, stream: _Stream, sinks: list[FileRecorder | RtspPusher]) -> None:
        """Subscribe each sink before the stream's first frame. A recorder of a file source is lossless
        (the pipeline waits for it); of a live source it drops its oldest frames like any viewer, only
        with more room, and repeats the last picture in their place (see :class:`FileRecorder`), so the
        live path's latency stays bounded. A push is live output and never makes the pipeline wait."""
        for sink in sinks:
            if isinstance(sink, FileRecorder):
                stream.audio_sinks.append(sink)
                sink.on_problem = lambda problem, s=stream: _recording_problem(s, problem)
                policy = DropPolicy.DROP_OLDEST if stream.live else DropPolicy.WAIT
                sub = self.subscribe(stream.id, maxsize=RECORDER_QUEUE, policy=policy)
                name = f"stream {stream.id}: recording to {sink.path}"
            else:
                sub = self.subscribe(stream.id, maxsize=2)
                name = f"stream {stream.id}: push to {sink.shown_url}"
            stream.sinks.append(asyncio.create_task(run_sink(name, sink, sub), name=name))

    async def _finish_sinks(self, stream: _Stream) -> None:
        """Let the sinks flush after their subscriptions ended; a sink that hangs is cancelled."""
        if not stream.sinks:
            return
        _, pending = await asyncio.wait(stream.sinks, timeout=self.sink_close_timeout)
        for task in pending:
            logger.warning("stream %s: %s did not finish in time", stream.id, task.get_name())
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=self.close_timeout)

    def _launch(self, stream: _Stream) -> None:
        stream.task = asyncio.get_running_loop().create_task(
            self._supervise(stream), name=f"stream {stream.id}"
        )

    async def _close_source(self, s: _Stream) -> None:
        try:
            await asyncio.wait_for(s.source.close(), self.close_timeout)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            logger.warning("stream %s: source did not close within %.1f s", s.id, self.close_timeout)
        except Exception:
            logger.exception("stream %s: closing the source failed", s.id)

    async def _supervise(self, s: _Stream) -> None:
        tasks = [
            asyncio.create_task(self._read(s), name=f"{s.id} read"),
            asyncio.create_task(self._infer(s), name=f"{s.id} infer"),
            asyncio.create_task(self._output(s), name=f"{s.id} output"),
        ]
        try:
            pending: set[asyncio.Task[None]] = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
                failed = [t for t in done if not t.cancelled() and t.exception() is not None]
                if failed:
                    exc = failed[0].exception()
                    assert exc is not None
                    s.state, s.error = "failed", f"{type(exc).__name__}: {exc}"
                    if isinstance(exc, ChromastreamError):  # the input's fault (a file, a camera): one line
                        logger.error("stream %s failed: %s", s.id, exc)
                    else:  # a bug: the traceback is what finds it
                        logger.error("stream %s failed", s.id, exc_info=exc)
                    break
        except asyncio.CancelledError:
            pass
        finally:
            for t in tasks:
                t.cancel()
            if s.detecting is not None:
                s.detecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait(tasks, timeout=self.close_timeout)
            with contextlib.suppress(asyncio.CancelledError):
                await self._close_source(s)
            if s.state != "failed":
                s.state = "ended"
            s.end_subscribers()

    async def _read(self, s: _Stream) -> None:
        events = s.source.events()
        try:
            async for event in events:
                if isinstance(event, Frame):
                    now = time.monotonic()
                    s.frames_in += 1
                    s.fps_in.add(now)
                    self.metrics.frames_in.labels(s.id).inc()
                    await s.input.put(event)
                    self._sample(s, event, now)
                elif isinstance(event, Reset):
                    s.resets += 1
                    self.metrics.count_reset(s.id, event.reason)
                    # A source that counts its reconnects is mirrored in _mirror; count the others here.
                    if event.reason == "reconnect" and _source_report(s.source).reconnects is None:
                        self.metrics.reconnects.labels(s.id).inc()
                    s.input.put_nowait(event)
                elif isinstance(event, AudioChunk):
                    for recorder in s.audio_sinks:  # sound skips the colorizer
                        recorder.add_audio(event)
                elif isinstance(event, EndOfStream):
                    break
                self._mirror(s)
            s.input.put_nowait(EndOfStream(s.id))
        except asyncio.CancelledError:
            pass
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(aclose(), self.close_timeout)

    def _sample(self, s: _Stream, frame: Frame, now: float) -> None:
        rate = self.config.detector_rate
        if self.detector is None or rate <= 0 or now - s.last_sample < 1.0 / rate:
            return
        if s.detecting is not None and not s.detecting.done():
            return
        s.last_sample = now
        s.detecting = asyncio.create_task(self._detect(s, self.detector, frame), name=f"{s.id} detect")

    async def _detect(self, s: _Stream, detector: DetectorHook, frame: Frame) -> None:
        try:
            s.verdict = await detector.detect(frame)
            if s.verdict is not None:
                self.metrics.count_verdict(s.id, s.verdict)
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("stream %s: the detector failed on frame %d", s.id, frame.index)

    async def _infer(self, s: _Stream) -> None:
        info = self.backend.info
        loop = asyncio.get_running_loop()
        threshold = self.config.scene_cut_threshold
        scene = SceneCutDetector(threshold) if threshold is not None else None
        memory = StreamMemory(info, self.config.memory)
        shape: tuple[int, int] | None = None
        frame_size: tuple[int, int] | None = None
        source_reset: str | None = None  # a Reset from the source, applied at the next frame
        try:
            while True:
                event = await s.input.get()
                if isinstance(event, EndOfStream):
                    await s.colorized.put(event)
                    return
                if isinstance(event, Reset):
                    source_reset = event.reason
                    if scene is not None:
                        scene.reset()
                    continue
                frame = event
                start = time.monotonic()
                self.metrics.stage_seconds.labels(s.id, "queue").observe(max(0.0, start - frame.ingest_time))
                height, width = frame.y.shape
                s.width, s.height = width, height
                if (height, width) != frame_size:
                    shape = working_shape(height, width, self.config.size, info.size_multiple)
                requested, s.reset_requested = s.reset_requested, False
                hints = s.hints
                assert shape is not None
                # Why the memory starts fresh here, most fundamental reason first; a scene cut is only
                # known once _prepare has looked at the frame.
                reason: str | None = None
                if frame_size is None:
                    reason = "start"
                elif source_reset is not None:
                    reason = source_reset
                elif (height, width) != frame_size:
                    reason = "resize"
                elif requested:
                    reason = "request"
                (L, cut, hint_input, state), prepare_cpu = await loop.run_in_executor(
                    self._cpu_pool(),
                    _thread_timed,
                    _prepare,
                    self.frame_ops,
                    frame.y,
                    frame.full_range,
                    shape,
                    info.l_scale,
                    scene,
                    memory,
                    hints,
                    reason is not None,
                )
                if reason is None and cut:
                    reason = "scene_cut"
                # Source resets were counted as they arrived; the pipeline's own are counted as they apply.
                if reason is not None and frame_size is not None and source_reset is None:
                    s.resets += 1
                    self.metrics.count_reset(s.id, reason)
                source_reset = None
                frame_size = (height, width)
                prepared = time.monotonic()
                self.metrics.stage_seconds.labels(s.id, "preprocess").observe(prepared - start)
                self.metrics.stage_cpu_seconds.labels(s.id, "preprocess").observe(prepare_cpu)
                result = await self.batcher.submit(s.id, L, hint_input, state)
                self.metrics.stage_seconds.labels(s.id, "batch_wait").observe(result.wait_s)
                self.metrics.stage_seconds.labels(s.id, "inference").observe(result.run_s)
                ab = memory.update(L, result.ab, result.state)
                colorizer = ColorizerInfo(
                    model=info.version,
                    backend=self.backend.name,
                    size=shape,
                    latency_ms=result.run_s * 1000.0,
                    memory=self.config.memory,
                    hints=len(hints),
                    reset=reason,
                )
                await s.colorized.put(_Colorized(frame, ab, colorizer))
        except asyncio.CancelledError:
            pass

    async def _output(self, s: _Stream) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                item = await s.colorized.get()
                if isinstance(item, EndOfStream):
                    if s.state != "failed":
                        s.state = "ended"
                    s.end_subscribers()
                    return
                frame = item.frame
                start = time.monotonic()
                (y, u, v), post_cpu = await loop.run_in_executor(
                    self._cpu_pool(),
                    _thread_timed,
                    self.frame_ops.to_yuv420,
                    frame.y,
                    item.ab,
                    frame.full_range,
                )
                now = time.monotonic()
                latency = now - frame.ingest_time
                self.metrics.stage_seconds.labels(s.id, "postprocess").observe(now - start)
                self.metrics.stage_cpu_seconds.labels(s.id, "postprocess").observe(post_cpu)
                self.metrics.latency_seconds.labels(s.id).observe(latency)
                metadata = frame_metadata(
                    s.id, frame.index, frame.pts, frame.time_base, item.colorizer, latency * 1000.0, s.verdict
                )
                out = OutputFrame(
                    s.id,
                    frame.index,
                    frame.pts,
                    frame.time_base,
                    y,
                    u,
                    v,
                    frame.full_range,
                    frame.ingest_time,
                    metadata,
                )
                for sub in list(s.subscribers):
                    await sub._deliver(out)
                s.frames_out += 1
                s.fps_out.add(now)
                s.latency.add(now, latency * 1000.0)
                self.metrics.frames_out.labels(s.id).inc()
                if s.state == "starting":
                    s.state = "running"
        except asyncio.CancelledError:
            pass


def _source_options(cfg: StreamConfig, decode: str = "auto") -> dict[str, Any]:
    """The stream's source options that differ from their defaults, whether a file loops, and how a file
    or camera decodes (``decode``, the server's ``sources.decode``).

    Each kind of source takes only its own options (``loop``/``realtime`` for files, ``transport`` for
    RTSP) and rejects the rest, so defaults are left out: a config that asks a camera to loop is an error
    worth reporting, one that merely leaves ``transport: tcp`` beside a file is not. ``loop`` unset means
    "a file loops", so a file is always told.
    """
    defaults = StreamConfig(cfg.id, cfg.url)
    options = {
        name: getattr(cfg, name)
        for name in ("loop", "realtime", "transport")
        if getattr(cfg, name) != getattr(defaults, name)
    }
    if cfg.names_file:
        options["loop"] = cfg.loops
    scheme = cfg.url.partition(":")[0].lower()
    if decode != "auto" and (cfg.names_file or scheme in ("rtsp", "rtsps")):
        options["decode"] = decode
    return options


def _thread_timed(work: Callable[..., _R], *args: Any) -> tuple[_R, float]:
    """In an executor thread: ``work``'s result and the CPU time this thread spent on it (the stage's cost
    to the machine, which its wall time is not when threads wait for a shared core)."""
    start = time.thread_time()
    result = work(*args)
    return result, time.thread_time() - start


def _prepare(
    ops: FrameOps,
    y: U8,
    full_range: bool,
    shape: tuple[int, int],
    l_scale: float,
    scene: SceneCutDetector | None,
    memory: StreamMemory,
    hints: tuple[Hint, ...],
    reset: bool,
) -> tuple[F32, bool, F32, F32]:
    """In the CPU executor: scene-cut check, network ``L [1,1,h,w]``, and the memory's hint input and
    state for the frame (fresh after ``reset`` or a cut; the hints are rasterized here when they changed)."""
    cut = scene.update(y) if scene is not None else False
    L = ops.network_l(y, shape, full_range, l_scale)
    if reset or cut:
        memory.reset()
    memory.set_hints(hints)
    hint_input, state = memory.inputs(shape)
    return L, cut, hint_input, state
