"""Prometheus metrics of the live pipeline, in a registry of its own.

Each :class:`~chromastream.stream.pipeline.Pipeline` owns one :class:`PipelineMetrics`; the server exposes its
``registry`` on ``/metrics``. A private registry (rather than prometheus_client's global one) lets tests and
embedding applications run several pipelines in one process without name clashes. Series are labelled by
stream where the value belongs to a stream; when a stream is removed its series are removed too, so a
server that sees many short-lived streams does not grow its metrics without bound.

Latencies are in seconds (the Prometheus convention); the per-frame metadata carries milliseconds.

The server has two more sets of its own, in its registry: :class:`SessionMetrics` (WebRTC sessions opened,
closed and expired) and :class:`LoopLagMonitor` (how late the event loop runs, the one number that shows
whether anything blocks it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

logger = logging.getLogger("chromastream.stream.metrics")

#: Stages of a frame's path, as used for the ``stage`` label of ``chromastream_stage_seconds``:
#: waiting in the stream's input queue, preparing the network input, waiting for a batch to fill,
#: the inference call itself, and turning the network output into the output frame's planes.
STAGES = ("queue", "preprocess", "batch_wait", "inference", "postprocess")
#: Stages whose CPU time is measured, for ``chromastream_stage_cpu_seconds``: the CPU time of the thread that
#: does the stage's work (``time.thread_time``), which is what a stage costs the machine. Wall time is not:
#: a stage that waits for a core shared with other threads takes longer without costing more. Inference is
#: left out (its runtime spreads one call over a pool of threads of its own); the encode of WebRTC output is
#: ``chromastream_webrtc_encode_cpu_seconds`` (:class:`EncoderMetrics`).
CPU_STAGES = ("preprocess", "postprocess")
#: Where frames are dropped: inside the source (its own handover; mirrored from its stats), the stream's
#: input queue (the pipeline fell behind a live source), or one subscriber's queue (that viewer fell behind).
DROP_STAGES = ("source", "input", "subscriber")
RESET_REASONS = ("reconnect", "loop", "scene_cut", "request", "resize")
"""Reasons the pipeline itself uses; ``resize`` is a change of the frame size mid-stream."""

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    1.0,
    2.0,
    5.0,
)
_CPU_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)


class PipelineMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.frames_in = Counter(
            "chromastream_frames_in", "Frames received from the stream's source", ["stream"], registry=r
        )
        self.frames_out = Counter(
            "chromastream_frames_out", "Colorized frames published to subscribers", ["stream"], registry=r
        )
        self.dropped = Counter(
            "chromastream_dropped_frames",
            "Frames dropped to keep latency bounded, by where they were dropped",
            ["stream", "stage"],
            registry=r,
        )
        self.resets = Counter(
            "chromastream_resets", "Recurrent-state resets, by reason", ["stream", "reason"], registry=r
        )
        self.reconnects = Counter(
            "chromastream_reconnects", "Times the stream's source reconnected", ["stream"], registry=r
        )
        self.connect_attempts = Counter(
            "chromastream_connect_attempts",
            "Connections the stream's source tried (a camera that is down retries with backoff; the log "
            "says only when it goes down and comes back)",
            ["stream"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "chromastream_stage_seconds",
            "Time a frame spends in each stage of the pipeline",
            ["stream", "stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_cpu_seconds = Histogram(
            "chromastream_stage_cpu_seconds",
            "CPU time of the thread doing each stage's work, per frame (see CPU_STAGES)",
            ["stream", "stage"],
            buckets=_CPU_BUCKETS,
            registry=r,
        )
        self.latency_seconds = Histogram(
            "chromastream_latency_seconds",
            "End-to-end latency: from the source handing a frame over to its colorized frame being published",
            ["stream"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "chromastream_batch_size",
            "Frames per inference call (of all streams sharing a working shape)",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.viewers = Gauge(
            "chromastream_viewers", "Open subscriptions to the stream's output", ["stream"], registry=r
        )
        self.verdicts = Counter(
            "chromastream_deepfake_verdicts",
            "Deepfake detector verdicts on the stream's sampled frames, by label (no_face, real, uncertain, "
            "fake)",
            ["stream", "verdict"],
            registry=r,
        )
        self.fake_probability = Gauge(
            "chromastream_deepfake_probability",
            "The detector's latest calibrated probability that the most suspicious face in view is fake "
            "(no series while no face is in view)",
            ["stream"],
            registry=r,
        )
        self._reset_reasons: dict[str, set[str]] = {}
        self._verdict_labels: dict[str, set[str]] = {}

    def count_reset(self, stream_id: str, reason: str) -> None:
        """Count a state reset; sources may name reasons beyond :data:`RESET_REASONS`."""
        self._reset_reasons.setdefault(stream_id, set()).add(reason)
        self.resets.labels(stream_id, reason).inc()

    def count_verdict(self, stream_id: str, verdict: dict[str, Any]) -> None:
        """One sampled frame's verdict (the metadata's ``deepfake`` shape): counted by label, and its
        probability kept as the stream's latest (removed while no face is in view, so a dashboard never
        shows a stale probability for an empty scene)."""
        label = str(verdict.get("label", "unknown"))
        self._verdict_labels.setdefault(stream_id, set()).add(label)
        self.verdicts.labels(stream_id, label).inc()
        probability = verdict.get("probability")
        if probability is None:
            _remove(self.fake_probability, stream_id)
        else:
            self.fake_probability.labels(stream_id).set(float(probability))

    def forget(self, stream_id: str) -> None:
        """Remove every series of a stream that has gone."""
        for metric in (
            self.frames_in,
            self.frames_out,
            self.reconnects,
            self.connect_attempts,
            self.latency_seconds,
            self.viewers,
            self.fake_probability,
        ):
            _remove(metric, stream_id)
        for label in self._verdict_labels.pop(stream_id, set()):
            _remove(self.verdicts, stream_id, label)
        for stage in DROP_STAGES:
            _remove(self.dropped, stream_id, stage)
        for reason in self._reset_reasons.pop(stream_id, set()):
            _remove(self.resets, stream_id, reason)
        for stage in STAGES:
            _remove(self.stage_seconds, stream_id, stage)
        for stage in CPU_STAGES:
            _remove(self.stage_cpu_seconds, stream_id, stage)


def _remove(metric: Counter | Gauge | Histogram, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # the series was never created
        metric.remove(*labels)


# ------------------------------------------------------------------------------------ WebRTC sessions

SESSION_KINDS = ("whep", "whip")
"""``whep``: a viewer; ``whip``: a publisher."""
SESSION_EXPIRY_REASONS = ("connect_timeout", "failed", "closed", "disconnected")
"""Why the server ends a session on its own: it did not connect (ICE and DTLS) within
``webrtc.connect_timeout_s``, its transport failed, the peer closed it, or it stayed disconnected longer
than ``webrtc.disconnect_grace_s``."""
SESSION_CLOSE_REASONS = ("client", "stream_ended", "shutdown", *SESSION_EXPIRY_REASONS)
"""Every reason a session ends: the client's ``DELETE``, the end or removal of its stream, the server
stopping, or an expiry."""


class SessionMetrics:
    """Counters of the server's WebRTC sessions, by kind (:data:`SESSION_KINDS`) and reason.

    ``opened - closed`` is the number of sessions open now; ``expired`` counts the closes that the server
    decided by itself (a subset of ``closed``, with the same reasons), which is where abandoned clients
    show up.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.opened = Counter(
            "chromastream_webrtc_sessions_opened",
            "WebRTC sessions answered, by kind (whep: viewers, whip: publishers)",
            ["kind"],
            registry=registry,
        )
        self.closed = Counter(
            "chromastream_webrtc_sessions_closed",
            "WebRTC sessions ended, by kind and reason (expiries included)",
            ["kind", "reason"],
            registry=registry,
        )
        self.expired = Counter(
            "chromastream_webrtc_sessions_expired",
            "WebRTC sessions the server ended because they did not connect in time or lost their transport",
            ["kind", "reason"],
            registry=registry,
        )
        for kind in SESSION_KINDS:
            self.opened.labels(kind)

    def count_open(self, kind: str) -> None:
        self.opened.labels(kind).inc()

    def count_close(self, kind: str, reason: str) -> None:
        self.closed.labels(kind, reason).inc()
        if reason in SESSION_EXPIRY_REASONS:
            self.expired.labels(kind, reason).inc()


# ------------------------------------------------------------------------------------ WebRTC encoding


class EncoderMetrics:
    """What the shared WebRTC encoders (one per stream and codec with viewers) cost.

    A stream is encoded for WebRTC only while it has a viewer: ``chromastream_webrtc_encoded_frames_total``
    rises with the stream's output while someone watches and stands still otherwise, while
    ``chromastream_frames_out_total`` (colorization, metadata) goes on. ``reconnecting`` cards are encoded
    frames too. ``chromastream_webrtc_encode_cpu_seconds`` is the CPU time of the thread that made and
    encoded each picture (conversion to the encoder's frame included), so its sum over its count is the CPU
    cost of one encoded frame. Recorders and RTSP pushes encode on their own, every frame, for as long as
    the stream is configured with them.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.encoded_frames = Counter(
            "chromastream_webrtc_encoded_frames",
            "Frames encoded for WebRTC viewers (once per stream and codec, whatever the number of viewers; "
            "nothing while a stream has no viewer)",
            ["stream", "codec"],
            registry=registry,
        )
        self.encode_cpu_seconds = Histogram(
            "chromastream_webrtc_encode_cpu_seconds",
            "CPU time of making and encoding one frame for WebRTC viewers",
            ["stream", "codec"],
            buckets=_CPU_BUCKETS,
            registry=registry,
        )

    def count(self, stream_id: str, codec: str, cpu_s: float) -> None:
        self.encoded_frames.labels(stream_id, codec).inc()
        self.encode_cpu_seconds.labels(stream_id, codec).observe(cpu_s)

    def forget(self, stream_id: str, codec: str) -> None:
        """The stream has ended: remove its series, as the pipeline does with its own."""
        _remove(self.encoded_frames, stream_id, codec)
        _remove(self.encode_cpu_seconds, stream_id, codec)


# ------------------------------------------------------------------------------------ event-loop lag

_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LoopLagMonitor:
    """Measures how late the event loop wakes a task that sleeps ``interval`` seconds, over and over.

    Everything the server does (HTTP, signalling, every stream's plumbing) shares one event loop, so a
    single step that runs long on it delays all of them; the lag is that delay, seen from outside. It is
    exported as the histogram ``chromastream_event_loop_lag_seconds``, and a lag of ``warn_s`` or more is
    logged as a warning (at most once every ``warn_every_s``), since it means requests were refused time.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        interval: float = 0.05,
        warn_s: float = 0.5,
        warn_every_s: float = 10.0,
    ) -> None:
        self.interval = interval
        self.warn_s = warn_s
        self.warn_every_s = warn_every_s
        self.lag_seconds = Histogram(
            "chromastream_event_loop_lag_seconds",
            "How late the server's event loop woke a periodic timer: time every request and stream waited",
            buckets=_LAG_BUCKETS,
            registry=registry,
        )
        self.worst = 0.0
        """The largest lag seen so far, in seconds."""
        self._task: asyncio.Task[None] | None = None
        self._warned_at = -float("inf")

    def start(self) -> None:
        """Start measuring on the running loop (once; later calls do nothing)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="event-loop lag")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            start = time.monotonic()
            await asyncio.sleep(self.interval)
            lag = max(0.0, time.monotonic() - start - self.interval)
            self.lag_seconds.observe(lag)
            self.worst = max(self.worst, lag)
            now = time.monotonic()
            if lag >= self.warn_s and now - self._warned_at >= self.warn_every_s:
                self._warned_at = now
                logger.warning("the event loop was blocked for %.2f s: requests and streams waited", lag)


# ------------------------------------------------------------------------------------- metadata bus

BUS_KINDS = ("node", "status", "verdict", "summary", "frame")
"""Kinds of message on the metadata bus (:mod:`chromastream.stream.metadata_bus`)."""


class BusMetrics:
    """How the metadata bus fares: messages sent and dropped by kind, and whether it is connected.

    Only summaries and frames are ever dropped (oldest first, while the broker is slow or away); the
    states (node, status, verdict) are kept as their latest value and sent on reconnect."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Counter(
            "chromastream_bus_messages",
            "Messages published to the metadata bus (MQTT), by kind",
            ["kind"],
            registry=registry,
        )
        self.dropped = Counter(
            "chromastream_bus_dropped",
            "Metadata bus messages dropped, oldest first, because the broker was slow or unreachable",
            ["kind"],
            registry=registry,
        )
        self.connected = Gauge(
            "chromastream_bus_connected", "1 while connected to the metadata bus's broker", registry=registry
        )
        for kind in BUS_KINDS:
            self.messages.labels(kind)
        for kind in ("summary", "frame"):
            self.dropped.labels(kind)
