"""Prometheus metrics of the live pipeline, in a registry of its own.

Each :class:`~chromastream.stream.pipeline.Pipeline` owns one :class:`PipelineMetrics`; the server exposes its
``registry`` on ``/metrics``. A private registry (rather than prometheus_client's global one) lets tests and
embedding applications run several pipelines in one process without name clashes. Series are labelled by
stream where the value belongs to a stream; when a stream is removed its series are removed too, so a
server that sees many short-lived streams does not grow its metrics without bound.

Latencies are in seconds (the Prometheus convention); the per-frame metadata carries milliseconds.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Stages of a frame's path, as used for the ``stage`` label of ``chromastream_stage_seconds``:
#: waiting in the stream's input queue, preparing the network input, waiting for a batch to fill,
#: the inference call itself, and turning the network output into the output frame's planes.
STAGES = ("queue", "preprocess", "batch_wait", "inference", "postprocess")
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
        self._reset_reasons: dict[str, set[str]] = {}

    def count_reset(self, stream_id: str, reason: str) -> None:
        """Count a state reset; sources may name reasons beyond :data:`RESET_REASONS`."""
        self._reset_reasons.setdefault(stream_id, set()).add(reason)
        self.resets.labels(stream_id, reason).inc()

    def forget(self, stream_id: str) -> None:
        """Remove every series of a stream that has gone."""
        for metric in (
            self.frames_in,
            self.frames_out,
            self.reconnects,
            self.connect_attempts,
            self.latency_seconds,
            self.viewers,
        ):
            _remove(metric, stream_id)
        for stage in DROP_STAGES:
            _remove(self.dropped, stream_id, stage)
        for reason in self._reset_reasons.pop(stream_id, set()):
            _remove(self.resets, stream_id, reason)
        for stage in STAGES:
            _remove(self.stage_seconds, stream_id, stage)


def _remove(metric: Counter | Gauge | Histogram, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # the series was never created
        metric.remove(*labels)
