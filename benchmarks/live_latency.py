"""Live end-to-end latency of ``chromastream serve``: camera frame in, encoded WebRTC packet out.

The path measured is the one a viewer gets: a paced 640x480 25 fps :class:`SyntheticSource` per stream,
the real :class:`~chromastream.stream.pipeline.Pipeline` at working size 256, the real aiohttp app with its
shared per-stream VP8 encoder, and one WHEP viewer per stream (an aiortc client on loopback). Latency is taken
from the frame's ``ingest_time`` (when the source produced it) to the moment the stream's encoder has
encoded it and handed the packet to every viewer's send queue, i.e. ready to packetize and send; the
network and the viewer's decoder are not part of it, because on loopback they only measure this machine
twice. The viewers run in a child process so their VP8 decoding does not steal CPU from the server and
the CPU and memory figures are the server's alone.

The limit, in the same run and on the same path, is the pipeline with a pass-through backend: it has the
shipped model's shapes and scales but returns zero ``ab`` (grey output) and the state unchanged, so what
remains is generating the picture, preprocessing, batching, 4:2:0 post-processing and the VP8 encode.
The gap between the two rows is what the network costs.

The deepfake sampler's cost is measured on one stream whose picture holds a face (a StyleGAN face from
``shared/data/faces/gan`` drifting over a grey 640x480 frame, an H.264 file played live and looped): the
pipeline without the sampler, then with it at the serve default of 2 samples a second; the throughput and
the CPU time per output frame of the two rows are compared.

Run ``python -m benchmarks.live_latency`` (``--quick`` for a smoke run, ``--soak-minutes N`` for a
memory and latency drift check on one stream); results go to ``benchmarks/results/live_latency.json``
(and ``live_soak.json``) and RESULTS.md is generated from them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from benchmarks.common import (
    BenchmarkError,
    add_model_arg,
    add_output_args,
    fail,
    machine_tags,
    model_tags,
    now_iso,
    percentiles_ms,
    whep_viewer,
    write_json,
)
from chromastream.errors import ChromastreamError
from chromastream.stream.config import PipelineConfig
from chromastream.stream.passthrough import PassThroughBackend

WIDTH, HEIGHT, FPS = 640, 480, 25.0
LIMIT_DEFINITION = (
    "same sources, pipeline, server, shared VP8 encoder and WHEP viewers, with a pass-through backend "
    "(the model's shapes and scales, zero ab, state unchanged): picture generation + preprocess + batching "
    "+ 4:2:0 post-processing + VP8 encode, no network"
)
LATENCY_DEFINITION = (
    "source ingest_time -> the stream's shared encoder has encoded the frame and queued the packet for "
    "every WHEP viewer (ready to packetize and send); one aiortc viewer per stream in a child process "
    "on loopback"
)
TARGETS = {
    "p95_ms": 150.0,
    "realtime_fps_ratio": 0.95,
    "realtime_max_drop_ratio": 0.02,
    "rss_mb_4_streams": 1536.0,
    "soak_p95_slope_ms_per_min": 2.0,
    "soak_rss_slope_mb_per_min": 5.0,
    "detector_throughput_drop": 0.10,
}
"""One stream is real time when it delivers at least 95 % of the input rate with at most 2 % of frames
dropped; a soak is flat when neither p95 nor resident memory grows faster than the slopes given."""


# ------------------------------------------------------------------------------------ measuring points


def rss_mb() -> float:
    """Resident memory of this process now (Linux ``VmRSS``); 0 where ``/proc`` is missing."""
    try:
        with open("/proc/self/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


STAGES = ("queue", "preprocess", "batch_wait", "inference", "postprocess")


def stage_totals(pipeline: Any, stream_ids: list[str]) -> dict[str, tuple[float, float]]:
    """``{stage: (seconds, count)}`` summed over streams from the pipeline's own histograms, so the rows
    can say where the time goes (queueing behind the model, or the model itself)."""
    totals: dict[str, tuple[float, float]] = {}
    for stage in STAGES:
        seconds = count = 0.0
        for stream_id in stream_ids:
            labels = {"stream": stream_id, "stage": stage}
            seconds += pipeline.registry.get_sample_value("chromastream_stage_seconds_sum", labels) or 0.0
            count += pipeline.registry.get_sample_value("chromastream_stage_seconds_count", labels) or 0.0
        totals[stage] = (seconds, count)
    return totals


def cpu_seconds() -> float:
    """User + system CPU time of every thread of this process (ONNX Runtime and encoder threads too)."""
    t = os.times()
    return t.user + t.system


class _TimedSubscription:
    """Wraps the encoder's subscription: when the encoder asks for frame N+1 it has encoded frame N and
    handed its packet to every viewer queue, so that moment minus N's ingest time is the latency."""

    def __init__(self, inner: Any, record: Callable[[float], None]) -> None:
        self._inner = inner
        self._record = record
        self._pending: float | None = None

    @property
    def drops(self) -> int:
        return int(self._inner.drops)

    def __aiter__(self) -> _TimedSubscription:
        return self

    async def __anext__(self) -> Any:
        if self._pending is not None:
            self._record(time.monotonic() - self._pending)
            self._pending = None
        frame = await self._inner.__anext__()
        self._pending = float(frame.ingest_time)
        return frame

    def close(self) -> None:
        self._pending = None
        self._inner.close()


@dataclass
class _StreamTimes:
    samples: list[float] = field(default_factory=list)
    encoded: int = 0


class TimedFeed:
    """The pipeline as the server sees it, with every subscription timed (see :class:`_TimedSubscription`).
    A wrapper rather than a subclass, so the pipeline itself runs unchanged."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.times: dict[str, _StreamTimes] = {}
        self.recording = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipeline, name)

    def subscribe(self, stream_id: str, maxsize: int = 2, *args: Any, **kwargs: Any) -> Any:
        times = self.times.setdefault(stream_id, _StreamTimes())

        def record(latency: float) -> None:
            times.encoded += 1
            if self.recording:
                times.samples.append(latency)

        return _TimedSubscription(self.pipeline.subscribe(stream_id, maxsize, *args, **kwargs), record)


# ------------------------------------------------------------------------------------------- viewers


def _viewer_process(base: str, stream_ids: list[str], seconds: float, results: Any) -> None:
    """Child process: one WHEP viewer per stream for ``seconds``; reports frames received per stream."""
    counts = asyncio.run(_view(base, stream_ids, seconds))
    results.put(counts)


async def _view(base: str, stream_ids: list[str], seconds: float) -> dict[str, int]:
    from aiohttp import ClientSession

    async with ClientSession() as session, contextlib.AsyncExitStack() as stack:
        counts: dict[str, int] = {}
        for stream_id in stream_ids:
            counts[stream_id] = 0
            await stack.enter_async_context(_whep(session, base, stream_id, counts))
        await asyncio.sleep(seconds)
        return dict(counts)


@contextlib.asynccontextmanager
async def _whep(session: Any, base: str, stream_id: str, counts: dict[str, int]) -> AsyncIterator[None]:
    """A viewer that decodes every frame it receives and counts it."""
    from aiortc.mediastreams import MediaStreamError

    readers: list[asyncio.Task[None]] = []

    async def read(track: Any) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                counts[stream_id] += 1

    def prepare(pc: Any) -> None:
        @pc.on("track")
        def on_track(track: Any) -> None:
            readers.append(asyncio.get_running_loop().create_task(read(track)))

    async with whep_viewer(session, base, stream_id, prepare):
        try:
            yield
        finally:
            for task in readers:
                task.cancel()


# ----------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class RunSpec:
    mode: str  # "model", "limit" or "model+detector"
    streams: int
    warmup_s: float
    seconds: float
    size: int
    face_clip: Path | None = None
    """Play this file (live, looped) instead of the synthetic pattern."""
    detector: bool = False


def make_face_clip(path: Path, seconds: float = 8.0) -> Path | None:
    """A grey 640x480 H.264 clip with a real-looking face drifting across it (None without shared data)."""
    import av
    import cv2

    from chromastream.models.shared_data import shared_root

    faces = sorted((shared_root() / "data" / "faces" / "gan").glob("*.jpg"))
    if not faces:
        return None
    picture = cv2.imread(str(faces[0]), cv2.IMREAD_GRAYSCALE)
    if picture is None:
        return None
    face = cv2.resize(picture, (180, 180), interpolation=cv2.INTER_AREA)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=int(FPS), options={"preset": "veryfast", "crf": "23"})
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for i in range(int(seconds * FPS)):
            canvas = np.full((HEIGHT, WIDTH), 90, np.uint8)
            x = int(120 + 200 * (0.5 + 0.5 * np.sin(i / 40)))
            y = int(120 + 60 * (0.5 + 0.5 * np.cos(i / 55)))
            canvas[y : y + 180, x : x + 180] = face
            frame = av.VideoFrame.from_ndarray(np.dstack([canvas] * 3), format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
    return path


@contextlib.asynccontextmanager
async def _serving(spec: RunSpec, backend: Any) -> AsyncIterator[tuple[str, TimedFeed, list[str]]]:
    from aiohttp import web

    from chromastream.stream.config import PipelineConfig, ServeConfig, StreamConfig, WebRTCConfig
    from chromastream.stream.deepfake import DeepfakeSampler
    from chromastream.stream.pipeline import Pipeline
    from chromastream.stream.server import create_app
    from chromastream.stream.sources.file import FileSource
    from chromastream.stream.sources.synthetic import SyntheticSource

    config = PipelineConfig(size=spec.size)
    sampler = DeepfakeSampler() if spec.detector else None
    pipeline = Pipeline(config, backend, detector=sampler)
    feed = TimedFeed(pipeline)
    ids = [f"cam{i}" for i in range(spec.streams)]
    runner: web.AppRunner | None = None
    await pipeline.start()
    try:
        for stream_id in ids:
            source: Any
            if spec.face_clip is not None:
                source = FileSource(stream_id, spec.face_clip, loop=True, realtime=True)
            else:
                source = SyntheticSource(stream_id, WIDTH, HEIGHT, FPS)
            await pipeline.add_stream(StreamConfig(id=stream_id, url="synthetic:"), source)
        runner = web.AppRunner(create_app(cast(Any, feed), ServeConfig(webrtc=WebRTCConfig(max_viewers=2))))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}", feed, ids
    finally:
        if runner is not None:
            await runner.cleanup()
        await pipeline.stop()
        if sampler is not None:
            sampler.close()


async def measure(spec: RunSpec, backend: Any) -> dict[str, Any]:
    """One row: ``spec.streams`` streams with a viewer each, warmed up, then measured for ``seconds``."""
    async with _serving(spec, backend) as (base, feed, ids):
        ctx = multiprocessing.get_context("spawn")
        results = ctx.Queue()
        viewer_s = spec.warmup_s + spec.seconds + 30.0
        viewer = ctx.Process(target=_viewer_process, args=(base, ids, viewer_s, results), daemon=True)
        viewer.start()
        try:
            deadline = time.monotonic() + 60.0
            while not all(feed.times.get(i, _StreamTimes()).encoded > 0 for i in ids):
                if time.monotonic() > deadline or not viewer.is_alive():
                    raise BenchmarkError("the WHEP viewers did not start receiving within 60 s")
                await asyncio.sleep(0.1)
            await asyncio.sleep(spec.warmup_s)
            before = {i: feed.pipeline.info(i) for i in ids}
            encoded_before = {i: feed.times[i].encoded for i in ids}
            stages_before = stage_totals(feed.pipeline, ids)
            feed.recording = True
            cpu0, t0 = cpu_seconds(), time.monotonic()
            rss_samples = [rss_mb()]
            while time.monotonic() - t0 < spec.seconds:
                await asyncio.sleep(min(1.0, spec.seconds / 4))
                rss_samples.append(rss_mb())
            elapsed = time.monotonic() - t0
            cpu = cpu_seconds() - cpu0
            feed.recording = False
            after = {i: feed.pipeline.info(i) for i in ids}
            stages_after = stage_totals(feed.pipeline, ids)
        finally:
            viewer.terminate()
            viewer.join(timeout=10)
    per_stream = []
    all_samples: list[float] = []
    for i in ids:
        frames_in = after[i].frames_in - before[i].frames_in
        drops = after[i].drops - before[i].drops
        encoded = feed.times[i].encoded - encoded_before[i]
        all_samples += feed.times[i].samples
        per_stream.append(
            {
                "id": i,
                "fps_in": frames_in / elapsed,
                "fps_out": encoded / elapsed,
                "frames_in": frames_in,
                "frames_out": encoded,
                "drops": drops,
                "drop_ratio": drops / max(1, frames_in + drops),
                "latency_ms": percentiles_ms(feed.times[i].samples),
            }
        )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cpu_percent = 100.0 * cpu / elapsed
    fps_out = min(s["fps_out"] for s in per_stream)
    fps_in = min(s["fps_in"] for s in per_stream)
    realtime = all(
        s["fps_out"] >= TARGETS["realtime_fps_ratio"] * FPS
        and s["drop_ratio"] <= TARGETS["realtime_max_drop_ratio"]
        for s in per_stream
    )
    return {
        "mode": spec.mode,
        "streams": spec.streams,
        "source": "face clip (file, live, looped)" if spec.face_clip is not None else "synthetic pattern",
        "detector": spec.detector,
        "cpu_ms_per_frame": 1000.0 * cpu / max(1, sum(s["frames_out"] for s in per_stream)),
        "detector_verdicts": [after[i].deepfake for i in ids] if spec.detector else [],
        "seconds": elapsed,
        "fps_in_min": fps_in,
        "fps_out_min": fps_out,
        "fps_out_total": sum(s["fps_out"] for s in per_stream),
        "drops": sum(s["drops"] for s in per_stream),
        "latency_ms": percentiles_ms(all_samples),
        "samples": len(all_samples),
        "cpu_percent": cpu_percent,
        "cpu_cores_busy": cpu / elapsed,
        "cores_usable": cores,
        # Saturated: the process keeps about every usable core busy, so more load could only queue.
        "cpu_bound": cpu / elapsed >= 0.85 * cores,
        "realtime": realtime,
        "stage_mean_ms": {
            stage: 1000.0 * (stages_after[stage][0] - stages_before[stage][0]) / n
            for stage in STAGES
            if (n := stages_after[stage][1] - stages_before[stage][1]) > 0
        },
        "rss_mb": rss_samples[-1],
        "rss_mb_max": max(rss_samples),
        "per_stream": per_stream,
    }


async def soak(backend: Any, minutes: float, size: int, interval_s: float = 30.0) -> dict[str, Any]:
    """One stream with a viewer for ``minutes``: p95 of each interval and the RSS at its end, with the
    least-squares slope per minute (a leak or a growing queue shows as a steady positive slope)."""
    async with _serving(RunSpec("model", 1, 0.0, 0.0, size), backend) as (base, feed, ids):
        ctx = multiprocessing.get_context("spawn")
        results = ctx.Queue()
        viewer = ctx.Process(
            target=_viewer_process, args=(base, ids, minutes * 60 + 90.0, results), daemon=True
        )
        viewer.start()
        points: list[dict[str, Any]] = []
        try:
            deadline = time.monotonic() + 60.0
            while feed.times.get(ids[0], _StreamTimes()).encoded == 0:
                if time.monotonic() > deadline or not viewer.is_alive():
                    raise BenchmarkError("the WHEP viewer did not start receiving within 60 s")
                await asyncio.sleep(0.1)
            await asyncio.sleep(5.0)
            feed.recording = True
            t0 = time.monotonic()
            while time.monotonic() - t0 < minutes * 60:
                feed.times[ids[0]].samples.clear()
                await asyncio.sleep(min(interval_s, max(1.0, minutes * 60 - (time.monotonic() - t0))))
                lat = percentiles_ms(feed.times[ids[0]].samples)
                points.append(
                    {"t_min": (time.monotonic() - t0) / 60, "p95_ms": lat.get("p95"), "rss_mb": rss_mb()}
                )
        finally:
            viewer.terminate()
            viewer.join(timeout=10)

    def slope(key: str) -> float | None:
        pts = [(p["t_min"], p[key]) for p in points if p[key] is not None]
        if len(pts) < 2:
            return None
        x, y = np.asarray(pts, dtype=np.float64).T
        return float(np.polyfit(x, y, 1)[0])

    p95_slope, rss_slope = slope("p95_ms"), slope("rss_mb")
    flat = (
        None
        if p95_slope is None or rss_slope is None
        else p95_slope <= TARGETS["soak_p95_slope_ms_per_min"]
        and rss_slope <= TARGETS["soak_rss_slope_mb_per_min"]
    )
    return {
        "minutes": minutes,
        "interval_s": interval_s,
        "points": points,
        "p95_slope_ms_per_min": p95_slope,
        "rss_slope_mb_per_min": rss_slope,
        "rss_growth_mb": points[-1]["rss_mb"] - points[0]["rss_mb"] if points else None,
        "flat": flat,
    }


def detector_cost(rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """Throughput and CPU per frame with the deepfake sampler against the same face clip without it."""
    off = next((r for r in rows if r["mode"] == "model" and r.get("source", "").startswith("face")), None)
    on = next((r for r in rows if r["mode"] == "model+detector"), None)
    if off is None or on is None:
        return None
    return {
        "fps_out_without": off["fps_out_min"],
        "fps_out_with": on["fps_out_min"],
        "throughput_drop": 1.0 - on["fps_out_min"] / max(off["fps_out_min"], 1e-9),
        "cpu_ms_per_frame_without": off["cpu_ms_per_frame"],
        "cpu_ms_per_frame_with": on["cpu_ms_per_frame"],
        "cpu_per_frame_increase": on["cpu_ms_per_frame"] / max(off["cpu_ms_per_frame"], 1e-9) - 1.0,
    }


def verdict(rows: list[dict[str, Any]]) -> dict[str, bool | None]:
    def pattern(r: dict[str, Any]) -> bool:
        return r["mode"] == "model" and not r.get("source", "").startswith("face")

    one = next((r for r in rows if pattern(r) and r["streams"] == 1), None)
    four = next((r for r in rows if pattern(r) and r["streams"] == 4), None)
    cost = detector_cost(rows)
    return {
        "realtime_1": None if one is None else bool(one["realtime"]),
        "p95_1": None if one is None else bool((one["latency_ms"].get("p95") or 1e9) <= TARGETS["p95_ms"]),
        "memory_4": None if four is None else bool(four["rss_mb_max"] <= TARGETS["rss_mb_4_streams"]),
        "detector_drop": None
        if cost is None
        else bool(cost["throughput_drop"] <= TARGETS["detector_throughput_drop"]),
    }


def run(args: argparse.Namespace) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    from chromastream.models.runtime.registry import create_backend

    model_path: Path = args.model
    model = create_backend("auto", model_path)
    limit = PassThroughBackend(model.info)  # the same backend as `pipeline.backend: pass-through`
    warmup = 1.0 if args.quick else 3.0
    seconds = args.seconds if args.seconds is not None else (2.0 if args.quick else 30.0)
    specs: list[tuple[RunSpec, Any]] = []
    for n in [] if args.soak_only else args.streams:
        for mode, backend in (("model", model), ("limit", limit)):
            specs.append((RunSpec(mode, n, warmup, seconds, args.size), backend))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        face = None if args.soak_only or not args.detector else make_face_clip(Path(tmp) / "face.mp4")
        if face is not None:
            for mode, on in (("model", False), ("model+detector", True)):
                specs.append((RunSpec(mode, 1, warmup, seconds, args.size, face, on), model))
        elif args.detector and not args.soak_only:
            print("no faces in the shared data: the detector rows are skipped", file=sys.stderr)
        for spec, backend in specs:
            row = asyncio.run(measure(spec, backend))
            lat = row["latency_ms"]
            print(
                f"{spec.mode:14} x{spec.streams} ({row['source']}): out {row['fps_out_min']:.1f} fps/stream, "
                f"drops {row['drops']}, "
                f"p50/p95/p99 {lat.get('p50', 0):.0f}/{lat.get('p95', 0):.0f}/{lat.get('p99', 0):.0f} ms, "
                f"CPU {row['cpu_percent']:.0f} %, RSS {row['rss_mb_max']:.0f} MB",
                file=sys.stderr,
            )
            rows.append(row)
    common = {
        "date": now_iso(),
        "quick": bool(args.quick),
        "machine": machine_tags(),
        "model": model_tags(model_path, model.info.version, model.name),
        "source": {"kind": "synthetic", "width": WIDTH, "height": HEIGHT, "fps": FPS},
        "size": args.size,
        "codec": "VP8",
        "targets": TARGETS,
    }
    data = (
        None
        if args.soak_only
        else {
            **common,
            "latency_definition": LATENCY_DEFINITION,
            "limit_definition": LIMIT_DEFINITION,
            "warmup_s": warmup,
            "rows": rows,
            "detector_cost": detector_cost(rows),
            "pass": verdict(rows),
        }
    )
    soak_data = None
    if args.soak_minutes > 0:
        soak_data = {**common, **asyncio.run(soak(model, args.soak_minutes, args.size))}
    return data, soak_data


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.live_latency",
        description="End-to-end live latency (ingest -> encoded WebRTC packet) beside the no-model limit.",
    )
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4], help="stream counts to run")
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per row (default 30)")
    parser.add_argument("--soak-minutes", type=float, default=0.0, help="one-stream soak length (0 = off)")
    parser.add_argument(
        "--soak-only", action="store_true", help="run only the soak (live_latency.json is left as it is)"
    )
    parser.add_argument(
        "--size", type=int, default=PipelineConfig().size, help="working size (default: serve's default)"
    )
    parser.add_argument(
        "--detector",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure one face stream without and with the deepfake sampler",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s per row")
    add_model_arg(parser)
    add_output_args(parser, "live_latency.json and live_soak.json", shared=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if any(n < 1 for n in args.streams):
        return fail("--streams takes positive counts")
    if args.soak_only and args.soak_minutes <= 0:
        return fail("--soak-only needs --soak-minutes")
    try:
        data, soak_data = run(args)
    except ChromastreamError as exc:
        return fail(str(exc))
    if data is not None:
        print(f"wrote {write_json(args.out_dir, 'live_latency', data)}")
    if soak_data is not None:
        print(f"wrote {write_json(args.out_dir, 'live_soak', soak_data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
