"""Throughput of the real ``chromastream serve`` with one and with two worker processes, beside its limit.

Each row starts ``chromastream serve`` as a person would (a child process, ``--workers 1`` or ``2``) with N
streams at 640x480 or 1920x1080, each a grey H.264 clip (made here, 30 fps) played live and looped: paced
like a camera, decoded in a thread as a camera's stream is. Every stream gets one WHEP viewer (an aiortc
client on loopback, in this process), which is what makes the server encode it. A viewer counts the
frames it is sent by their per-frame metadata messages on the data channel (one per encoded frame) and
does not decode the video (its decoder is replaced by one that drops the packets), so the viewers take
as little as possible of the cores the server needs. The limit, in the same run and on the same path, is
the server with ``pipeline.backend: pass-through`` (:mod:`chromastream.stream.passthrough`): everything
but the network (source, preprocessing, batching, 4:2:0 post-processing, VP8 encode, WebRTC send).

Reported per row: frames per second delivered per stream and in total, p50/p95 of the pipeline's latency
carried in each frame's metadata (source -> colorized frame published; the encode comes after), the
frames the server dropped, and the CPU time of the server's processes (front and workers) and of the
viewers. The checks: the limit with two workers at least 1.7 times that with one, and the colorized
frames per second with two workers not below one worker's. The load average at start and end is
recorded: the development machines share two cores with other jobs.

    python -m benchmarks.serve_throughput              # a few minutes on 2 cores
    python -m benchmarks.serve_throughput --quick      # smoke run: seconds

Writes ``serve_throughput.json``; ``python -m benchmarks.report`` puts it into RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.common import (
    BenchmarkError,
    add_output_args,
    default_model_path,
    load_average,
    machine_tags,
    model_tags,
    now_iso,
    num,
    run_and_write,
)

FPS = 30
TARGETS = {"limit_ratio_2_workers": 1.7, "model_ratio_2_workers": 1.0}
LIMIT_DEFINITION = (
    "the same server, sources, viewers and VP8 encode with pipeline.backend: pass-through (the model's "
    "shapes and scales, no network, grey output)"
)
LATENCY_DEFINITION = (
    "the pipeline's latency in each frame's metadata, as the viewers received it: source -> colorized "
    "frame published to the stream's encoder (the encode and the network come after)"
)
START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Resolution:
    name: str
    width: int
    height: int
    streams: int
    """Enough streams that one worker cannot keep them all at 30 fps even without the model."""


@dataclass(frozen=True)
class Plan:
    resolutions: tuple[Resolution, ...]
    modes: tuple[str, ...]
    workers: tuple[int, ...]
    warmup_s: float
    seconds: float
    size: int
    quick: bool


FULL = (Resolution("640x480", 640, 480, 6), Resolution("1080p", 1920, 1080, 3))
QUICK = (Resolution("320x240", 320, 240, 1),)


def make_plan(args: argparse.Namespace) -> Plan:
    return Plan(
        resolutions=QUICK if args.quick else FULL,
        modes=tuple(args.modes),
        workers=tuple(args.workers),
        warmup_s=1.0 if args.quick else args.warmup,
        seconds=2.0 if args.quick else args.seconds,
        size=args.size,
        quick=args.quick,
    )


# --------------------------------------------------------------------------------------- the server


@dataclass
class Server:
    process: subprocess.Popen[str]
    base: str
    log: Path


CLIP_SECONDS = 4.0


def make_clip(res: Resolution, folder: Path) -> Path:
    """The stream's source: a grey H.264 clip at ``res``, 30 fps (``benchmarks.video_speed``'s pattern)."""
    from benchmarks.video_speed import ClipSpec
    from benchmarks.video_speed import make_clip as write_clip

    spec = ClipSpec(res.name, res.width, res.height, FPS, CLIP_SECONDS)
    return write_clip(folder / f"{res.name}.mp4", spec, audio=False)


def _serve_config(res: Resolution, clip: Path, mode: str, workers: int, size: int) -> dict[str, Any]:
    pipeline: dict[str, Any] = {"size": size, "detector_rate": 0}
    if mode == "limit":
        pipeline["backend"] = "pass-through"
    url = str(clip)  # a file plays live (paced) and loops by default
    return {
        "port": 0,
        "workers": workers,
        "pipeline": pipeline,
        "webrtc": {"max_viewers": 2},
        "streams": [{"id": f"cam{i}", "url": url} for i in range(res.streams)],
    }


@contextlib.contextmanager
def serving(config: dict[str, Any], folder: Path) -> Iterator[Server]:
    """``chromastream serve --config`` in a child process until the block ends (then SIGTERM)."""
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    log = folder / "serve.log"
    with log.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "chromastream.stream.cli", "serve", "--config", str(path), "--quiet"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        try:
            line = _first_line(process, START_TIMEOUT_S)
            if "viewer at" not in line:
                raise BenchmarkError(f"serve did not start: {line!r}; its log: {log.read_text()[-2000:]}")
            base = line.split("viewer at", 1)[1].strip().split("/?", 1)[0].rstrip("/")
            yield Server(process, base, log)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if process.stdout is not None:
                process.stdout.close()


def _first_line(process: subprocess.Popen[str], timeout: float) -> str:
    lines: list[str] = []
    assert process.stdout is not None
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    return lines[0] if lines else ""


def _tree_stats(root: int) -> list[list[str]]:
    """``/proc/<pid>/stat`` fields (after the name) of ``root`` and every process below it."""
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
    tree = {root}
    grew = True
    while grew:
        below = {pid for pid, fields in stats.items() if int(fields[1]) in tree} - tree
        tree |= below
        grew = bool(below)
    return [stats[pid] for pid in tree if pid in stats]


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU time of ``root`` and every process below it (the front and its workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    return sum((int(f[11]) + int(f[12])) / tick for f in _tree_stats(root))


def tree_rss_mb(root: int) -> float:
    """Resident memory of ``root`` and every process below it."""
    page = os.sysconf("SC_PAGE_SIZE")
    return sum(int(f[21]) * page for f in _tree_stats(root)) / 2**20


def machine_busy_seconds() -> float:
    """CPU time every process of the machine has used (``/proc/stat``), to show what others took."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


# --------------------------------------------------------------------------------------- the viewers


@dataclass
class Tally:
    """What the viewers of one stream received: frames (metadata messages) and their latencies."""

    frames: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    recording: bool = False

    def add(self, message: Any) -> None:
        try:
            event = json.loads(message)
        except (TypeError, ValueError):
            return
        if "card" in event:
            return  # a "reconnecting" card is not a frame
        self.frames += 1
        if self.recording and isinstance(event.get("latency_ms"), int | float):
            self.latencies_ms.append(float(event["latency_ms"]))


class _DroppingDecoder:
    """Takes the received frames and decodes none: delivery is counted on the data channel."""

    def decode(self, encoded_frame: Any) -> list[Any]:
        return []


@contextlib.contextmanager
def _skip_decoding() -> Iterator[None]:
    """The benchmark's viewers skip decoding while it runs; aiortc's own decoders come back after, so a
    process that goes on (a test run) still decodes video."""
    import aiortc.rtcrtpreceiver

    original = aiortc.rtcrtpreceiver.get_decoder
    aiortc.rtcrtpreceiver.get_decoder = lambda codec: _DroppingDecoder()  # type: ignore[assignment]
    try:
        yield
    finally:
        aiortc.rtcrtpreceiver.get_decoder = original


@contextlib.asynccontextmanager
async def viewer(session: Any, base: str, stream_id: str, tally: Tally) -> AsyncIterator[None]:
    from aiortc import RTCSessionDescription

    from chromastream.stream.webrtc import allow_loopback_candidates, peer_connection

    allow_loopback_candidates()
    pc = peer_connection()
    pc.addTransceiver("video", direction="recvonly")
    channel = pc.createDataChannel("metadata")
    channel.on("message", tally.add)
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp"}
    async with session.post(f"{base}/whep/{stream_id}", data=pc.localDescription.sdp, headers=headers) as r:
        if r.status != 201:
            raise BenchmarkError(f"WHEP for {stream_id} answered {r.status}: {await r.text()}")
        answer = await r.text()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    try:
        yield
    finally:
        await pc.close()


async def _streams(session: Any, base: str) -> dict[str, dict[str, Any]]:
    async with session.get(f"{base}/api/streams") as r:
        return {s["id"]: s for s in (await r.json())["streams"]}


async def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise BenchmarkError(f"{what} within {timeout:.0f} s")
        await asyncio.sleep(0.2)


async def measure(server: Server, ids: list[str], plan: Plan) -> dict[str, Any]:
    """Viewers on every stream, warm-up, then the figures over ``plan.seconds``."""
    from aiohttp import ClientSession

    tallies = {i: Tally() for i in ids}
    async with ClientSession() as session, contextlib.AsyncExitStack() as stack:

        async def running() -> bool:
            streams = await _streams(session, server.base)
            return all(streams[i]["state"] == "running" for i in ids)

        await _wait(running, START_TIMEOUT_S, "the streams did not start")
        for i in ids:
            await stack.enter_async_context(viewer(session, server.base, i, tallies[i]))

        async def receiving() -> bool:
            return all(t.frames > 0 for t in tallies.values())

        await _wait(receiving, 60.0, "the viewers received nothing")
        await asyncio.sleep(plan.warmup_s)
        before = await _streams(session, server.base)
        frames0 = {i: t.frames for i, t in tallies.items()}
        load0 = load_average()
        cpu0, own0, t0 = tree_cpu_seconds(server.process.pid), own_cpu_seconds(), time.monotonic()
        busy0 = machine_busy_seconds()
        for t in tallies.values():
            t.recording = True
        await asyncio.sleep(plan.seconds)
        for t in tallies.values():
            t.recording = False
        elapsed = time.monotonic() - t0
        cpu, own = tree_cpu_seconds(server.process.pid) - cpu0, own_cpu_seconds() - own0
        busy = machine_busy_seconds() - busy0
        rss = tree_rss_mb(server.process.pid)
        after = await _streams(session, server.base)
    per_stream = []
    for i in ids:
        fps = (tallies[i].frames - frames0[i]) / elapsed
        per_stream.append(
            {
                "id": i,
                "worker": after[i].get("worker"),
                "fps": fps,
                "fps_in": (after[i]["frames_in"] - before[i]["frames_in"]) / elapsed,
                "drops": after[i]["drops"] - before[i]["drops"],
                "latency_ms": _percentiles(tallies[i].latencies_ms),
            }
        )
    everything = [x for t in tallies.values() for x in t.latencies_ms]
    return {
        "seconds": elapsed,
        "fps_per_stream_min": min(s["fps"] for s in per_stream),
        "fps_per_stream_mean": sum(s["fps"] for s in per_stream) / len(per_stream),
        "fps_total": sum(s["fps"] for s in per_stream),
        "fps_in_total": sum(s["fps_in"] for s in per_stream),
        "drops": sum(s["drops"] for s in per_stream),
        "latency_ms": _percentiles(everything),
        "server_cores_busy": cpu / elapsed,
        "fps_per_server_core": sum(s["fps"] for s in per_stream) / max(cpu / elapsed, 1e-9),
        "server_rss_mb": rss,
        "viewer_cores_busy": own / elapsed,
        "other_cores_busy": max(0.0, busy - cpu - own) / elapsed,
        "loadavg": [load0, load_average()],
        "per_stream": per_stream,
    }


def _percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    arr = np.asarray(samples)
    return {q: float(np.percentile(arr, int(q[1:]))) for q in ("p50", "p95", "p99")}


# ----------------------------------------------------------------------------------------------- runs


def run_row(res: Resolution, clip: Path, mode: str, workers: int, plan: Plan) -> dict[str, Any]:
    config = _serve_config(res, clip, mode, workers, plan.size)
    ids = [s["id"] for s in config["streams"]]
    with (
        tempfile.TemporaryDirectory(prefix="serve-throughput-") as folder,
        serving(config, Path(folder)) as server,
    ):
        try:
            figures = asyncio.run(measure(server, ids, plan))
        except BenchmarkError as exc:
            raise BenchmarkError(f"{exc}; the server's log: {server.log.read_text()[-2000:]}") from None
    row = {
        "resolution": res.name,
        "width": res.width,
        "height": res.height,
        "streams": res.streams,
        "mode": mode,
        "workers": workers,
        **figures,
    }
    lat = figures["latency_ms"]
    print(
        f"  {res.name} {mode:5s} workers={workers}: {figures['fps_total']:6.1f} fps total, "
        f"{figures['fps_per_stream_min']:5.1f} per stream (min), p50 {num(lat.get('p50'), 0)} ms, "
        f"p95 {num(lat.get('p95'), 0)} ms, server {figures['server_cores_busy']:.2f} cores",
        flush=True,
    )
    return row


def summarize(rows: list[dict[str, Any]], plan: Plan) -> list[dict[str, Any]]:
    """Per resolution: the totals per worker count and the two checks."""
    summary = []
    for res in plan.resolutions:

        def total(mode: str, workers: int, res: Resolution = res) -> float | None:
            found = [
                r["fps_total"]
                for r in rows
                if (r["resolution"], r["mode"], r["workers"]) == (res.name, mode, workers)
            ]
            return found[0] if found else None

        limit1, limit2, model1, model2 = (
            total("limit", 1),
            total("limit", 2),
            total("model", 1),
            total("model", 2),
        )
        limit_ratio = limit2 / limit1 if limit1 and limit2 is not None else None
        model_ratio = model2 / model1 if model1 and model2 is not None else None
        summary.append(
            {
                "resolution": res.name,
                "streams": res.streams,
                "limit_fps_total": {"1": limit1, "2": limit2},
                "model_fps_total": {"1": model1, "2": model2},
                "limit_ratio": limit_ratio,
                "model_ratio": model_ratio,
                "pass": {
                    "limit_ratio": None
                    if limit_ratio is None
                    else limit_ratio >= TARGETS["limit_ratio_2_workers"],
                    "model_not_below": None
                    if model_ratio is None
                    else model_ratio >= TARGETS["model_ratio_2_workers"],
                },
            }
        )
    return summary


def run(args: argparse.Namespace) -> dict[str, Any]:
    from chromastream.models.runtime.registry import create_backend

    plan = make_plan(args)
    started = time.monotonic()
    model_path = default_model_path()
    backend = create_backend("auto", model_path)
    result: dict[str, Any] = {
        "benchmark": "serve_throughput",
        "date": now_iso(),
        "quick": plan.quick,
        "machine": machine_tags(),
        "model": model_tags(model_path, backend.info.version, backend.name),
        "size": plan.size,
        "fps_per_source": FPS,
        "codec": "VP8",
        "warmup_s": plan.warmup_s,
        "window_s": plan.seconds,
        "targets": TARGETS,
        "limit_definition": LIMIT_DEFINITION,
        "latency_definition": LATENCY_DEFINITION,
    }
    del backend
    rows = []
    with _skip_decoding(), tempfile.TemporaryDirectory(prefix="serve-throughput-clips-") as clips:
        for res in plan.resolutions:
            clip = make_clip(res, Path(clips))
            for mode in plan.modes:
                for workers in plan.workers:
                    rows.append(run_row(res, clip, mode, workers, plan))
    result["rows"] = rows
    result["summary"] = summarize(rows, plan)
    result["loadavg_end"] = load_average()
    result["seconds"] = time.monotonic() - started
    return result


def print_summary(result: dict[str, Any]) -> None:
    print("\nserve throughput (frames/s delivered, all streams together):")
    for s in result["summary"]:
        print(
            f"  {s['resolution']} x{s['streams']}: limit {num(s['limit_fps_total']['1'], 1)} -> "
            f"{num(s['limit_fps_total']['2'], 1)} (x{num(s['limit_ratio'])}); model "
            f"{num(s['model_fps_total']['1'], 1)} -> {num(s['model_fps_total']['2'], 1)} "
            f"(x{num(s['model_ratio'])})"
        )


def build_parser() -> argparse.ArgumentParser:
    from chromastream.stream.config import PipelineConfig

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serve_throughput",
        description="Frames/s and latency of the real serve with 1 and 2 worker processes, beside the "
        "no-model limit. Writes serve_throughput.json.",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: one small stream, seconds")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured window per row (default 15)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before the window (default 5)")
    parser.add_argument(
        "--size", type=int, default=PipelineConfig().size, help="working size (default: serve's default)"
    )
    parser.add_argument(
        "--modes", nargs="+", choices=("limit", "model"), default=["limit", "model"], help="rows to run"
    )
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2], help="worker counts (default 1 2)")
    add_output_args(parser, "serve_throughput.json", shared=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_and_write("serve_throughput", args.out_dir, lambda: run(args), print_summary)


# --------------------------------------------------------------------------------------------- report


def report_section(data: dict[str, Any]) -> list[str]:
    """RESULTS.md: the rows, then the checks per resolution."""
    from benchmarks.common import machine_line

    model = data.get("model") or {}
    end = "/".join(str(x) for x in data.get("loadavg_end") or []) or "?"
    lines = [
        "## Serve throughput (worker processes)",
        "",
        f"Model `{model.get('version', '?')}`, backend {model.get('backend', '?')}, working size "
        f"{data.get('size', '?')}; run {data.get('date', '?')}.",
        "",
    ]
    if data.get("quick"):
        lines += ["> Smoke run (`--quick`): too short for a final figure.", ""]
    fps, codec = data.get("fps_per_source", "?"), data.get("codec", "?")
    window, warmup = num(data.get("window_s"), 0), num(data.get("warmup_s"), 0)
    lines += [
        "`chromastream serve --workers 1` and `--workers 2` in a child process, each stream a "
        f"{fps} fps H.264 clip played live and looped, with one WHEP viewer ({codec}; the viewers count "
        "frames by their metadata messages and do not decode). fps is frames delivered per second; latency: "
        f"{data.get('latency_definition', '?')}. The limit, in the same run: "
        f"{data.get('limit_definition', '?')}. Cores busy: CPU time of the server's processes (front and "
        "workers), of the viewers, and of every other process of the machine (other people's jobs on a "
        "shared machine) over wall time; fps per server core is the figure that other jobs disturb least. "
        f"Server RSS: front and workers together. Windows of {window} s after {warmup} s of warm-up.",
        "",
        "| resolution | streams | run | workers | fps total | fps per stream (min) | p50 ms | p95 ms "
        "| drops | server cores | fps per server core | viewer cores | others' cores | server RSS MB |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in data.get("rows") or []:
        lat = row.get("latency_ms") or {}
        lines.append(
            f"| {row.get('resolution')} | {row.get('streams')} | {row.get('mode')} | {row.get('workers')} | "
            f"{num(row.get('fps_total'), 1)} | {num(row.get('fps_per_stream_min'), 1)} | "
            f"{num(lat.get('p50'), 0)} | {num(lat.get('p95'), 0)} | {row.get('drops', '–')} | "
            f"{num(row.get('server_cores_busy'))} | {num(row.get('fps_per_server_core'), 1)} | "
            f"{num(row.get('viewer_cores_busy'))} | {num(row.get('other_cores_busy'))} | "
            f"{num(row.get('server_rss_mb'), 0)} |"
        )
    targets = data.get("targets") or {}
    lines += [
        "",
        "| resolution | check | 1 worker | 2 workers | ratio | target | result |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for s in data.get("summary") or []:
        verdict = s.get("pass") or {}
        for name, key, ratio, target, ok in (
            (
                "limit (no model), fps total",
                "limit_fps_total",
                "limit_ratio",
                "limit_ratio_2_workers",
                "limit_ratio",
            ),
            (
                "colorized, fps total",
                "model_fps_total",
                "model_ratio",
                "model_ratio_2_workers",
                "model_not_below",
            ),
        ):
            totals = s.get(key) or {}
            mark = {True: "**PASS**", False: "**FAIL**"}.get(verdict.get(ok), "n/a")
            lines.append(
                f"| {s.get('resolution')} | {name} | {num(totals.get('1'), 1)} | {num(totals.get('2'), 1)} | "
                f"{num(s.get(ratio))} | ≥ {num(targets.get(target), 1)} | {mark} |"
            )
    lines += ["", machine_line(data) + f" Load at the end: {end}.", ""]
    return lines


if __name__ == "__main__":
    sys.exit(main())
