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

The encode-cost study (``--encode-cost``) runs four 640x480 streams watched by one viewer and then by four
(``--viewers K`` puts viewers on the first K streams only; a stream nobody watches is colorized but not
encoded), colorizer and limit, one worker, and sets the server's CPU-seconds per second side by side. Every
row also gets a capacity table: CPU ms per frame of each stage from the server's own
``chromastream_stage_cpu_seconds`` and ``chromastream_webrtc_encode_cpu_seconds`` (thread CPU time, read
from ``/metrics`` before and after the window), the rest of the server's CPU from ``/proc``, the streams
they predict, and the streams and frames the row actually held (:data:`CAPACITY_DEFINITION`).

    python -m benchmarks.serve_throughput              # a few minutes on 2 cores
    python -m benchmarks.serve_throughput --quick      # smoke run: seconds
    python -m benchmarks.serve_throughput --encode-cost    # about 2 minutes
    python -m benchmarks.serve_throughput --mps            # the same under CUDA MPS (docs/GPU.md)

Writes ``serve_throughput.json`` (``serve_encode_cost.json`` with ``--encode-cost``; ``_cuda`` added on a
machine with a CUDA device; ``_mps`` added to the
name with ``--mps``); ``python -m benchmarks.report`` puts them into RESULTS.md.

``--mps`` runs the whole benchmark under a CUDA MPS control daemon of its own (private pipe and log folders,
started before anything touches the GPU, stopped at the end), so the worker processes of every row share
the GPU through one MPS server instead of time-slicing it; each row records ``"mps"`` and the MPS server
processes the control daemon listed while the row's server was up (none: the workers did not use MPS). A
run without ``--mps`` beside one with it on the same machine is the comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.common import (
    BenchmarkError,
    add_output_args,
    fail,
    load_average,
    machine_tags,
    model_tags,
    now_iso,
    num,
    run_and_write,
    whep_viewer,
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
    viewers: tuple[int | None, ...] = (None,)
    """Rows per viewer count: viewers on the first K streams (``None``: every stream has one)."""
    study: str = "workers"
    """``workers`` (1 against 2 worker processes) or ``encode_cost`` (1 viewer against one per stream)."""
    mps: bool = False
    """Under a CUDA MPS control daemon of the run's own (:func:`mps_daemon`)."""


FULL = (Resolution("640x480", 640, 480, 6), Resolution("1080p", 1920, 1080, 3))
QUICK = (Resolution("320x240", 320, 240, 1),)
ENCODE_COST = (Resolution("640x480", 640, 480, 4),)
"""The encode-cost study: four live 640x480 streams, watched by one viewer and then by four."""
ENCODE_COST_VIEWERS = (1, 4)


def make_plan(args: argparse.Namespace) -> Plan:
    quick_res = (Resolution("320x240", 320, 240, 2),) if args.encode_cost else QUICK
    resolutions = quick_res if args.quick else (ENCODE_COST if args.encode_cost else FULL)
    if args.streams is not None:
        resolutions = tuple(replace(r, streams=args.streams) for r in resolutions)
    viewers: tuple[int | None, ...] = tuple(args.viewers) if args.viewers else (None,)
    if args.encode_cost and not args.viewers:
        viewers = (1, 2) if args.quick else ENCODE_COST_VIEWERS
    for k in viewers:
        if k is not None and not 0 <= k <= min(r.streams for r in resolutions):
            raise BenchmarkError(f"--viewers {k}: must be in 0..the number of streams")
    return Plan(
        resolutions=resolutions,
        modes=tuple(args.modes),
        workers=tuple(args.workers) if args.workers else ((1,) if args.encode_cost else (1, 2)),
        warmup_s=1.0 if args.quick else args.warmup,
        seconds=2.0 if args.quick else args.seconds,
        size=args.size,
        quick=args.quick,
        viewers=viewers,
        study="encode_cost" if args.encode_cost else "workers",
        mps=args.mps,
    )


# --------------------------------------------------------------------------------------- CUDA MPS

MPS_CONTROL = "nvidia-cuda-mps-control"


def _mps_command(command: str) -> str:
    """One command to the MPS control daemon of ``CUDA_MPS_PIPE_DIRECTORY`` (its stdin interface)."""
    control = shutil.which(MPS_CONTROL) or MPS_CONTROL
    done = subprocess.run([control], input=command + "\n", capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise BenchmarkError(f"{MPS_CONTROL} {command}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def mps_server_pids() -> list[int]:
    """The MPS server processes the control daemon runs now (one per user with clients)."""
    return [int(word) for word in _mps_command("get_server_list").split() if word.isdigit()]


@contextlib.contextmanager
def mps_daemon() -> Iterator[Path]:
    """A CUDA MPS control daemon with private pipe and log folders, for the block's duration.

    The pipe and log folders go into this process's environment (``CUDA_MPS_PIPE_DIRECTORY``,
    ``CUDA_MPS_LOG_DIRECTORY``), which the ``serve`` processes inherit: a CUDA process connects to the
    daemon of its pipe folder when it first initializes CUDA. At the end the daemon is told to quit (and
    terminated by its pid file if it has not within 10 s), and the environment is put back. The daemon runs
    detached from this process, so a SIGTERM (a time limit's ``timeout``) ends the run through this cleanup
    too instead of leaving the daemon behind."""
    control = shutil.which(MPS_CONTROL)
    if control is None:
        raise BenchmarkError(
            f"--mps needs {MPS_CONTROL} (installed with the NVIDIA driver's utilities) on PATH: it is not "
            "here, so this machine cannot run CUDA MPS; run without --mps"
        )
    with tempfile.TemporaryDirectory(prefix="serve-throughput-mps-") as folder:
        dirs = {
            "CUDA_MPS_PIPE_DIRECTORY": Path(folder) / "pipe",
            "CUDA_MPS_LOG_DIRECTORY": Path(folder) / "log",
        }
        saved = {key: os.environ.get(key) for key in dirs}
        on_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGTERM) if on_main_thread else None
        if on_main_thread:
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            for key, path in dirs.items():
                path.mkdir()
                os.environ[key] = str(path)
            started = subprocess.run([control, "-d"], capture_output=True, text=True, timeout=30)
            if started.returncode != 0:
                log = dirs["CUDA_MPS_LOG_DIRECTORY"] / "control.log"
                detail = (started.stderr or started.stdout).strip() or (
                    log.read_text()[-500:] if log.exists() else ""
                )
                raise BenchmarkError(f"{MPS_CONTROL} -d failed (exit {started.returncode}): {detail}")
            try:
                yield Path(folder)
            finally:
                with contextlib.suppress(BenchmarkError, OSError, subprocess.SubprocessError):
                    _mps_command("quit")
                pid_file = dirs["CUDA_MPS_PIPE_DIRECTORY"] / "nvidia-cuda-mps-control.pid"
                deadline = time.monotonic() + 10.0
                while pid_file.exists() and time.monotonic() < deadline:
                    time.sleep(0.2)
                if pid_file.exists():
                    with contextlib.suppress(OSError, ValueError):
                        os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            if on_main_thread:
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


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
    """A viewer that counts frames by their metadata messages (its video is not decoded)."""

    def prepare(pc: Any) -> None:
        pc.createDataChannel("metadata").on("message", tally.add)

    async with whep_viewer(session, base, stream_id, prepare):
        yield


async def _streams(session: Any, base: str) -> dict[str, dict[str, Any]]:
    async with session.get(f"{base}/api/streams") as r:
        return {s["id"]: s for s in (await r.json())["streams"]}


async def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise BenchmarkError(f"{what} within {timeout:.0f} s")
        await asyncio.sleep(0.2)


async def _metrics(session: Any, base: str) -> dict[str, float]:
    """The server's stage CPU and encode figures (:func:`stage_totals`) from ``/metrics``."""
    async with session.get(f"{base}/metrics") as r:
        return stage_totals(await r.text())


def stage_totals(text: str) -> dict[str, float]:
    """Sums over every stream (and worker) of the CPU-time histograms and the counters the capacity
    table needs: ``<stage>_cpu_s`` and ``<stage>_n`` per measured pipeline stage, ``encode_cpu_s`` and
    ``encoded`` for WebRTC, ``frames_out``."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = {}

    def add(key: str, value: float) -> None:
        totals[key] = totals.get(key, 0.0) + value

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels = sample.name, sample.labels
            if name == "chromastream_stage_cpu_seconds_sum":
                add(f"{labels['stage']}_cpu_s", sample.value)
            elif name == "chromastream_stage_cpu_seconds_count":
                add(f"{labels['stage']}_n", sample.value)
            elif name == "chromastream_webrtc_encode_cpu_seconds_sum":
                add("encode_cpu_s", sample.value)
            elif name == "chromastream_webrtc_encoded_frames_total":
                add("encoded", sample.value)
            elif name == "chromastream_frames_out_total":
                add("frames_out", sample.value)
    return totals


async def measure(server: Server, ids: list[str], watched: list[str], plan: Plan) -> dict[str, Any]:
    """Viewers on the ``watched`` streams, warm-up, then the figures over ``plan.seconds``."""
    from aiohttp import ClientSession

    tallies = {i: Tally() for i in watched}
    async with ClientSession() as session, contextlib.AsyncExitStack() as stack:

        async def running() -> bool:
            streams = await _streams(session, server.base)
            return all(streams[i]["state"] == "running" for i in ids)

        await _wait(running, START_TIMEOUT_S, "the streams did not start")
        for i in watched:
            await stack.enter_async_context(viewer(session, server.base, i, tallies[i]))

        async def receiving() -> bool:
            return all(t.frames > 0 for t in tallies.values())

        await _wait(receiving, 60.0, "the viewers received nothing")
        await asyncio.sleep(plan.warmup_s)
        before, stages0 = await _streams(session, server.base), await _metrics(session, server.base)
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
        after, stages1 = await _streams(session, server.base), await _metrics(session, server.base)
    per_stream = []
    for i in ids:
        fps_out = (after[i]["frames_out"] - before[i]["frames_out"]) / elapsed
        per_stream.append(
            {
                "id": i,
                "worker": after[i].get("worker"),
                "watched": i in tallies,
                "fps": (tallies[i].frames - frames0[i]) / elapsed if i in tallies else None,
                "fps_out": fps_out,
                "fps_in": (after[i]["frames_in"] - before[i]["frames_in"]) / elapsed,
                "drops": after[i]["drops"] - before[i]["drops"],
                "latency_ms": _percentiles(tallies[i].latencies_ms) if i in tallies else {},
            }
        )
    delivered = [s["fps"] for s in per_stream if s["fps"] is not None]
    everything = [x for t in tallies.values() for x in t.latencies_ms]
    stage_delta = {k: stages1.get(k, 0.0) - stages0.get(k, 0.0) for k in stages1}
    return {
        "seconds": elapsed,
        "fps_per_stream_min": min(delivered) if delivered else None,
        "fps_per_stream_mean": sum(delivered) / len(delivered) if delivered else None,
        "fps_total": sum(delivered),
        "fps_out_total": sum(s["fps_out"] for s in per_stream),
        "fps_out_per_stream_min": min(s["fps_out"] for s in per_stream),
        "fps_in_total": sum(s["fps_in"] for s in per_stream),
        "streams_at_29_fps": sum(1 for s in per_stream if _held(s)),
        "drops": sum(s["drops"] for s in per_stream),
        "latency_ms": _percentiles(everything),
        "server_cpu_s": cpu,
        "server_cores_busy": cpu / elapsed,
        "fps_per_server_core": sum(delivered) / max(cpu / elapsed, 1e-9),
        "server_rss_mb": rss,
        "viewer_cores_busy": own / elapsed,
        "other_cores_busy": max(0.0, busy - cpu - own) / elapsed,
        "loadavg": [load0, load_average()],
        "stage_cpu": stage_delta,
        "per_stream": per_stream,
    }


HELD_FPS = 29.0
"""A stream is held when it kept this rate (its output, and what its viewer got where it has one)."""


def _held(stream: dict[str, Any]) -> bool:
    rates = [stream["fps_out"]] + ([stream["fps"]] if stream["fps"] is not None else [])
    return min(rates) >= HELD_FPS


def _percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    arr = np.asarray(samples)
    return {q: float(np.percentile(arr, int(q[1:]))) for q in ("p50", "p95", "p99")}


# ----------------------------------------------------------------------------------------------- runs


def run_row(
    res: Resolution, clip: Path, mode: str, workers: int, viewers: int | None, plan: Plan
) -> dict[str, Any]:
    config = _serve_config(res, clip, mode, workers, plan.size)
    ids = [s["id"] for s in config["streams"]]
    watched = ids if viewers is None else ids[:viewers]
    with (
        tempfile.TemporaryDirectory(prefix="serve-throughput-") as folder,
        serving(config, Path(folder)) as server,
    ):
        try:
            figures = asyncio.run(measure(server, ids, watched, plan))
        except BenchmarkError as exc:
            raise BenchmarkError(f"{exc}; the server's log: {server.log.read_text()[-2000:]}") from None
        mps_servers = mps_server_pids() if plan.mps else None
    row = {
        "resolution": res.name,
        "width": res.width,
        "height": res.height,
        "streams": res.streams,
        "viewers": len(watched),
        "mode": mode,
        "workers": workers,
        "mps": plan.mps,
        **({"mps_servers": mps_servers} if plan.mps else {}),
        **figures,
    }
    row["capacity"] = capacity(row)
    lat = figures["latency_ms"]
    print(
        f"  {res.name} {mode:5s} workers={workers} viewers={len(watched)}/{res.streams}: "
        f"{figures['fps_out_total']:6.1f} fps out, {figures['fps_total']:6.1f} fps delivered, "
        f"p50 {num(lat.get('p50'), 0)} ms, p95 {num(lat.get('p95'), 0)} ms, "
        f"server {figures['server_cores_busy']:.2f} cores (others {figures['other_cores_busy']:.2f})",
        flush=True,
    )
    return row


def usable_cores() -> int:
    """The cores this process (and so the server it starts) may run on."""
    return len(os.sched_getaffinity(0))


CAPACITY_DEFINITION = (
    "CPU ms per frame of each stage from the server's own histograms (chromastream_stage_cpu_seconds: "
    "the CPU time of the thread that did the work, time.thread_time; the encode from "
    "chromastream_webrtc_encode_cpu_seconds, per encoded frame, conversion to the encoder's picture "
    "included); 'rest' is the server's CPU time from /proc (front and workers, every thread) less those "
    "stages, per output frame: decoding (the sources' threads), inference (ONNX Runtime's threads), the "
    "event loop (RTP packetization, SRTP, signalling) and Python's own work. Streams predicted = usable "
    "cores x 1000 / (CPU ms per frame x fps), usable cores being the machine's cores less what other "
    "processes used during the row; encode is counted for the share of frames encoded in that row"
)


def capacity(row: dict[str, Any]) -> dict[str, Any]:
    """The row's CPU cost per frame by stage and the streams it predicts, beside what the row held."""
    st = row.get("stage_cpu") or {}
    frames = st.get("frames_out", 0.0)

    def per_frame(cpu_key: str, count_key: str) -> float | None:
        n = st.get(count_key, 0.0)
        return st.get(cpu_key, 0.0) / n * 1000.0 if n > 0 else None

    pre = per_frame("preprocess_cpu_s", "preprocess_n")
    post = per_frame("postprocess_cpu_s", "postprocess_n")
    encode = per_frame("encode_cpu_s", "encoded")
    if frames <= 0 or pre is None or post is None:
        return {}
    encoded_share = st.get("encoded", 0.0) / frames
    staged = pre + post + (encode or 0.0) * encoded_share
    measured_s = (
        st.get("preprocess_cpu_s", 0.0) + st.get("postprocess_cpu_s", 0.0) + st.get("encode_cpu_s", 0.0)
    )
    total = row["server_cpu_s"] / frames * 1000.0
    cores = usable_cores()
    usable = max(cores - row.get("other_cores_busy", 0.0), 0.1)
    fps = float(FPS)
    return {
        "ms_per_frame": {
            "preprocess": pre,
            "postprocess": post,
            "encode_per_encoded_frame": encode,
            "encoded_share": encoded_share,
            "rest": max(row["server_cpu_s"] - measured_s, 0.0) / frames * 1000.0,
            "stages": staged,
            "total": total,
        },
        "cores": cores,
        "usable_cores": usable,
        "predicted_streams_from_stages": usable * 1000.0 / (staged * fps),
        "predicted_streams": usable * 1000.0 / (total * fps),
        "held_streams": row["streams_at_29_fps"],
        "streams": row["streams"],
        "fps_out_total_in_streams": row["fps_out_total"] / fps,
    }


def summarize(rows: list[dict[str, Any]], plan: Plan) -> list[dict[str, Any]]:
    """Per resolution: the totals per worker count and the two checks."""
    summary = []
    for res in plan.resolutions:

        def total(mode: str, workers: int, res: Resolution = res) -> float | None:
            found = [
                r["fps_total"]
                for r in rows
                if (r["resolution"], r["mode"], r["workers"]) == (res.name, mode, workers)
                and r["viewers"] == r["streams"]
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


def encode_cost(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run (mode, workers): the fewest against the most viewers, the server's CPU beside each other,
    and what one colorized frame and one encoded frame cost.

    The server's CPU-seconds of a row are split as ``a * frames_out + b * frames_encoded``; the two rows
    give ``a`` (CPU ms of a frame colorized and published, not encoded) and ``b`` (CPU ms an encoded frame
    adds: the encode, and the packetization, SRTP and sending to its viewer). Unlike the difference of
    the cores busy, this holds when the server is saturated and the two rows put out different numbers
    of frames."""
    out = []
    for key in sorted({(r["resolution"], r["mode"], r["workers"]) for r in rows}):
        same = sorted(
            (r for r in rows if (r["resolution"], r["mode"], r["workers"]) == key), key=lambda r: r["viewers"]
        )
        if len(same) < 2 or same[0]["viewers"] == same[-1]["viewers"]:
            continue
        few, many = same[0], same[-1]
        frames = [r["stage_cpu"].get("frames_out", 0.0) for r in (few, many)]
        encoded = [r["stage_cpu"].get("encoded", 0.0) for r in (few, many)]
        cpu = [r["server_cpu_s"] for r in (few, many)]
        det = frames[0] * encoded[1] - frames[1] * encoded[0]
        colorized_ms = encoded_ms = None
        if abs(det) > 1e-9:
            colorized_ms = (cpu[0] * encoded[1] - cpu[1] * encoded[0]) / det * 1000.0
            encoded_ms = (frames[0] * cpu[1] - frames[1] * cpu[0]) / det * 1000.0
        encoder_ms = [
            r["stage_cpu"].get("encode_cpu_s", 0.0) / n * 1000.0 if n else None
            for r, n in zip((few, many), encoded, strict=True)
        ]
        out.append(
            {
                "resolution": key[0],
                "mode": key[1],
                "workers": key[2],
                "streams": many["streams"],
                "viewers": [few["viewers"], many["viewers"]],
                "server_cores_busy": [few["server_cores_busy"], many["server_cores_busy"]],
                "fps_out_total": [few["fps_out_total"], many["fps_out_total"]],
                "encoded_fps": [e / r["seconds"] for e, r in zip(encoded, (few, many), strict=True)],
                "server_cpu_ms_per_frame_out": [
                    c / f * 1000.0 if f else None for c, f in zip(cpu, frames, strict=True)
                ],
                "other_cores_busy": [few["other_cores_busy"], many["other_cores_busy"]],
                "colorized_frame_cpu_ms": colorized_ms,
                "encoded_frame_cpu_ms": encoded_ms,
                "encoder_thread_cpu_ms": encoder_ms,
                "cores_per_stream_unwatched": None if colorized_ms is None else colorized_ms * FPS / 1000.0,
                "cores_per_stream_watched": None
                if colorized_ms is None or encoded_ms is None
                else (colorized_ms + encoded_ms) * FPS / 1000.0,
            }
        )
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = make_plan(args)
    with mps_daemon() if plan.mps else contextlib.nullcontext():  # before anything here touches the GPU
        return _run(plan)


def _run(plan: Plan) -> dict[str, Any]:
    from chromastream.models.runtime.registry import create_backend, cuda_device_present, unnamed_model_path

    started = time.monotonic()
    model_path = unnamed_model_path("onnxruntime", cuda_device_present())  # what serve runs on this machine
    backend = create_backend("auto", model_path)
    result: dict[str, Any] = {
        "benchmark": "serve_throughput",
        "study": plan.study,
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
        "capacity_definition": CAPACITY_DEFINITION,
        "held_fps": HELD_FPS,
        "mps": plan.mps,
    }
    del backend
    rows = []
    with _skip_decoding(), tempfile.TemporaryDirectory(prefix="serve-throughput-clips-") as clips:
        for res in plan.resolutions:
            clip = make_clip(res, Path(clips))
            for mode in plan.modes:
                for workers in plan.workers:
                    for viewers in plan.viewers:
                        rows.append(run_row(res, clip, mode, workers, viewers, plan))
    result["rows"] = rows
    result["summary"] = summarize(rows, plan)
    result["encode_cost"] = encode_cost(rows)
    result["loadavg_end"] = load_average()
    result["seconds"] = time.monotonic() - started
    return result


def print_summary(result: dict[str, Any]) -> None:
    for e in result.get("encode_cost") or []:
        (few, many), (cores_few, cores_many) = e["viewers"], e["server_cores_busy"]
        print(f"\nencode cost, {e['resolution']} x{e['streams']} {e['mode']} workers={e['workers']}:")
        print(f"  server {cores_few:.2f} cores with {few} viewer(s), {cores_many:.2f} with {many}")
        print(
            f"  a colorized frame {num(e['colorized_frame_cpu_ms'])} CPU ms, an encoded one adds "
            f"{num(e['encoded_frame_cpu_ms'])} ms (the encoder thread alone: "
            f"{num(e['encoder_thread_cpu_ms'][1])})"
        )
    for row in result["rows"]:
        cap = row.get("capacity") or {}
        if cap:
            total, predicted = cap["ms_per_frame"]["total"], cap["predicted_streams"]
            print(
                f"  capacity {row['mode']} viewers={row['viewers']}/{row['streams']}: {total:.1f} CPU ms per "
                f"frame -> {predicted:.1f} streams on {cap['usable_cores']:.2f} usable cores; held "
                f"{cap['held_streams']} at >= {HELD_FPS:g} fps "
                f"({cap['fps_out_total_in_streams']:.2f} streams' worth of frames)"
            )
    if result.get("study") == "encode_cost":
        return
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
    parser.add_argument(
        "--workers",
        nargs="+",
        type=int,
        default=None,
        help="worker counts (default 1 2; 1 with --encode-cost)",
    )
    parser.add_argument("--streams", type=int, default=None, help="streams per row (default: per resolution)")
    parser.add_argument(
        "--viewers",
        nargs="+",
        type=int,
        default=None,
        help="rows with a WHEP viewer on the first K streams only, one row per K (default: every stream)",
    )
    parser.add_argument(
        "--encode-cost",
        action="store_true",
        help="the encode-cost study instead: 4 streams at 640x480 with 1 and with 4 viewers, one worker; "
        "writes serve_encode_cost.json",
    )
    parser.add_argument(
        "--mps",
        action="store_true",
        help=f"run under a CUDA MPS control daemon of its own ({MPS_CONTROL}; docs/GPU.md); adds _mps to the "
        "file name",
    )
    add_output_args(parser, "serve_throughput.json (serve_encode_cost.json with --encode-cost)", shared=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from chromastream.models.runtime.registry import cuda_device_present

    # A CUDA machine's rows go to their own file, so a GPU run never replaces the CPU machine's figures.
    name = (
        ("serve_encode_cost" if args.encode_cost else "serve_throughput")
        + ("_cuda" if cuda_device_present() else "")
        + ("_mps" if args.mps else "")
    )
    try:
        make_plan(args)
    except BenchmarkError as exc:
        return fail(str(exc))
    return run_and_write(name, args.out_dir, lambda: run(args), print_summary)


# --------------------------------------------------------------------------------------------- report


def report_section(data: dict[str, Any]) -> list[str]:
    """RESULTS.md: the rows, then the checks per resolution."""
    from benchmarks.common import machine_line

    model = data.get("model") or {}
    end = "/".join(str(x) for x in data.get("loadavg_end") or []) or "?"
    lines = [
        "## Serve throughput (worker processes)" + (", under CUDA MPS" if data.get("mps") else ""),
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
    lines += ["", *capacity_table(data)]
    lines += [machine_line(data) + f" Load at the end: {end}.", ""]
    return lines


if __name__ == "__main__":
    sys.exit(main())


def capacity_table(data: dict[str, Any]) -> list[str]:
    """RESULTS.md: CPU ms per frame by stage, the streams they predict and what the row held."""
    rows = [r for r in data.get("rows") or [] if r.get("capacity")]
    if not rows:
        return []
    held = num(data.get("held_fps"), 0)
    lines = [
        f"Capacity: {data.get('capacity_definition', '?')}. Held: streams that kept ≥ {held} fps out (and to "
        "their viewer, where watched); frames: the row's output frames per second over the source rate.",
        "",
        "| run | workers | streams | viewers | preprocess | postprocess | encode (per encoded frame) "
        "| encoded share | rest | CPU ms per frame | usable cores | predicted (stages only) "
        "| predicted (all CPU) | held | frames / 30 fps |",
        "| --- " + "| ---: " * 14 + "|",
    ]
    for row in rows:
        cap = row["capacity"]
        ms = cap.get("ms_per_frame") or {}
        lines.append(
            f"| {row.get('mode')} | {row.get('workers')} | {row.get('streams')} | {row.get('viewers')} | "
            f"{num(ms.get('preprocess'))} | {num(ms.get('postprocess'))} | "
            f"{num(ms.get('encode_per_encoded_frame'))} | {num(ms.get('encoded_share'))} | "
            f"{num(ms.get('rest'))} | "
            f"{num(ms.get('total'))} | {num(cap.get('usable_cores'))} | "
            f"{num(cap.get('predicted_streams_from_stages'), 1)} | {num(cap.get('predicted_streams'), 1)} | "
            f"{cap.get('held_streams')} of {cap.get('streams')} | "
            f"{num(cap.get('fps_out_total_in_streams'))} |"
        )
    return [*lines, ""]


def encode_cost_section(data: dict[str, Any]) -> list[str]:
    """RESULTS.md: the encode-cost study (one viewer against one per stream) and its capacity table."""
    from benchmarks.common import machine_line

    model = data.get("model") or {}
    end = "/".join(str(x) for x in data.get("loadavg_end") or []) or "?"
    window, warmup = num(data.get("window_s"), 0), num(data.get("warmup_s"), 0)
    lines = [
        "## Serve: the cost of encoding, and capacity",
        "",
        f"Model `{model.get('version', '?')}` ({Path(str(model.get('path', '?'))).name}), backend "
        f"{model.get('backend', '?')}, working size {data.get('size', '?')}; run {data.get('date', '?')}.",
        "",
    ]
    if data.get("quick"):
        lines += ["> Smoke run (`--quick`): too short for a final figure.", ""]
    lines += [
        "`python -m benchmarks.serve_throughput --encode-cost`: the real `chromastream serve` in a child "
        f"process, every stream a {data.get('fps_per_source', '?')} fps H.264 clip played live and looped, "
        f"a WHEP viewer ({data.get('codec', '?')}, not decoding) on the first K streams only. A stream "
        "without a viewer is colorized but not encoded, so the difference between the rows is the cost "
        "of encoding and sending the watched streams. `model`: the colorizer; `limit`: "
        f"{data.get('limit_definition', '?')}. Server cores: CPU-seconds per second of the server's "
        "processes (front and workers, from /proc; the viewers' own CPU is not in it), which other jobs on "
        "the machine disturb far less than fps; others' cores: every other process of the machine over "
        f"the same window. Windows of {window} s after {warmup} s of warm-up.",
        "",
        "| run | workers | streams | viewers | fps out (total) | fps out per stream (min) | fps delivered "
        "| encoded fps | server cores | viewer cores | others' cores | p95 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in data.get("rows") or []:
        encoded = (row.get("stage_cpu") or {}).get("encoded", 0.0) / max(row.get("seconds") or 1.0, 1e-9)
        lines.append(
            f"| {row.get('mode')} | {row.get('workers')} | {row.get('streams')} | {row.get('viewers')} | "
            f"{num(row.get('fps_out_total'), 1)} | {num(row.get('fps_out_per_stream_min'), 1)} | "
            f"{num(row.get('fps_total'), 1)} | {num(encoded, 1)} | {num(row.get('server_cores_busy'))} | "
            f"{num(row.get('viewer_cores_busy'))} | {num(row.get('other_cores_busy'))} | "
            f"{num((row.get('latency_ms') or {}).get('p95'), 0)} |"
        )
    lines += [
        "",
        "The cost of encoding: each pair of rows splits the server's CPU-seconds as a × frames out + b × "
        "frames encoded (two rows, two unknowns), so a is what a colorized frame costs unwatched and b what "
        "encoding and sending it to its viewer adds, whether or not the server was saturated; beside b, "
        "the encoder thread's own CPU time per encoded frame (`chromastream_webrtc_encode_cpu_seconds`); "
        "cores per stream: what one 30 fps stream takes, (a) or (a + b) × 30 / 1000.",
        "",
        "| run | viewers | server cores | server CPU ms per frame out | a: colorized frame, ms "
        "| b: encoded frame adds, ms | encoder thread, ms | cores per stream, unwatched → watched |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for e in data.get("encode_cost") or []:
        few, many = e.get("viewers") or ["?", "?"]
        cores = e.get("server_cores_busy") or [None, None]
        per_frame = e.get("server_cpu_ms_per_frame_out") or [None, None]
        thread = (e.get("encoder_thread_cpu_ms") or [None, None])[-1]
        lines.append(
            f"| {e.get('mode')} | {few} → {many} | {num(cores[0])} → {num(cores[1])} | "
            f"{num(per_frame[0], 1)} → {num(per_frame[1], 1)} | {num(e.get('colorized_frame_cpu_ms'), 1)} | "
            f"{num(e.get('encoded_frame_cpu_ms'), 1)} | {num(thread, 1)} | "
            f"{num(e.get('cores_per_stream_unwatched'))} → {num(e.get('cores_per_stream_watched'))} |"
        )
    lines += ["", *capacity_table(data), *_capacity_notes(data)]
    lines += [machine_line(data) + f" Load at the end: {end}.", ""]
    return lines


def _capacity_notes(data: dict[str, Any]) -> list[str]:
    """What the capacity table's columns can and cannot tell, with the inference cost it leaves in 'rest'."""
    rest = {
        (r["mode"], r["viewers"]): r["capacity"]["ms_per_frame"]["rest"]
        for r in data.get("rows") or []
        if r.get("capacity")
    }
    inference = [
        f"{num(rest[('model', v)] - rest[('limit', v)], 1)} ms with {v} viewer(s)"
        for v in sorted({v for _, v in rest})
        if ("model", v) in rest and ("limit", v) in rest
    ]
    notes = [
        "Reading the capacity table: 'predicted (all CPU)' uses every CPU-second the server spent per frame; "
        "when the server used all the cores the others left it, that prediction equals the frames it put out "
        "by construction, so it checks the accounting (cores, frames, /proc) rather than forecasting. The "
        "forecast from the pipeline's own stage timings alone is 'predicted (stages only)': it overestimates "
        "by the 'rest' column, the work no stage histogram covers (decoding, inference, the event loop)."
    ]
    if inference:
        notes.append(
            "Inference, the largest part of 'rest' with the model, is the model's 'rest' less the limit's: "
            + ", ".join(inference)
            + " of CPU per frame."
        )
    return [" ".join(notes), ""]
