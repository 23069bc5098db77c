"""Helpers every benchmark shares: where the data lives, what machine a figure came from, how calls are
timed and summarized, the common arguments, and how results are written.

A figure without its machine is meaningless (the same model runs 10x apart on a laptop and a server),
so every JSON file carries :func:`machine_tags`; the load average is recorded because a busy machine
explains a slow run better than any guess afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from chromastream.errors import ChromastreamError
from chromastream.models.runtime.engine_cache import file_sha256

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


class BenchmarkError(ChromastreamError):
    """A benchmark cannot run (missing data, missing tool); the message says what to do."""


def shared_root() -> Path:
    """``CHROMASTREAM_SHARED``, else ``../shared`` beside the repository root."""
    env = os.environ.get("CHROMASTREAM_SHARED")
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared"


def default_model_path() -> Path:
    """The model the runtime would pick (the shipped one unless ``CHROMASTREAM_MODEL`` says otherwise)."""
    from chromastream.models.runtime.registry import default_model_path as runtime_default

    return runtime_default()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> dict[str, Any]:
    """The commit the code ran from and whether the tree had local changes (figures from a dirty
    tree cannot be reproduced from the commit alone)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded; empty where the system does not say."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return []


def machine_tags() -> dict[str, Any]:
    """CPU, cores, library versions, load and commit: what a reader needs to compare two figures."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 1
    try:
        import onnxruntime as ort

        providers = list(ort.get_available_providers())
    except ImportError:  # pragma: no cover - core dependency
        providers = []
    return {
        "cpu": _cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_usable": usable,
        "loadavg": load_average(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": _version("numpy"),
        "onnxruntime": _version("onnxruntime"),
        "onnxruntime_providers": providers,
        "torch": _version("torch"),
        "opencv": _version("opencv-python-headless") or _version("opencv-python"),
        "av": _version("av"),
        "git": git_commit(),
    }


def machine_line(data: dict[str, Any]) -> str:
    """The machine of a result file (its :func:`machine_tags`) as one sentence of RESULTS.md."""
    m = data.get("machine") or {}
    git = m.get("git") or {}
    commit = (git.get("commit") or "unknown")[:10] + (" (with local changes)" if git.get("dirty") else "")
    load = "/".join(str(x) for x in m.get("loadavg") or []) or "?"
    return (
        f"Machine: {m.get('cpu', '?')}, {m.get('cores_usable', '?')} usable of {m.get('cores_logical', '?')} "
        f"logical cores, load {load} at start; Python {m.get('python', '?')}, "
        f"onnxruntime {m.get('onnxruntime', '?')}, torch {m.get('torch') or 'not installed'}, "
        f"numpy {m.get('numpy', '?')}, PyAV {m.get('av', '?')}; commit `{commit}`."
    )


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def model_tags(path: Path, version: str, backend: str) -> dict[str, Any]:
    """Identify the model by content as well as by its declared version: two trainings may both
    call themselves the same version."""
    return {
        "path": str(path),
        "version": version,
        "sha256": file_sha256(path)[:16],
        "backend": backend,
    }


def safe_name(text: str) -> str:
    """A string made safe for a file name (model versions become part of result file names)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "unknown"


def _json_safe(obj: Any) -> Any:
    """Non-finite floats become ``None``: standard JSON has no inf/nan and the report must parse it."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(out_dir: Path, name: str, data: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def num(x: Any, digits: int = 2) -> str:
    """A figure for a results table: fixed decimals, or "–" where the JSON has no number (missing, null,
    NaN, infinite, or a boolean that is not a measurement)."""
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return "–"
    return f"{x:.{digits}f}"


def percentiles_ms(samples_s: list[float]) -> dict[str, float]:
    """Latency summary in milliseconds: median and tails, because a mean hides the stalls that a
    live stream feels."""
    arr = np.asarray(samples_s, dtype=np.float64) * 1000.0
    if arr.size == 0:
        return {}
    return {
        "mean": float(arr.mean()),
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "p99": float(np.percentile(arr, 99)),
        "min": float(arr.min()),
        "max": float(arr.max()),
    }


# ------------------------------------------------------------------------------------------- timing


def time_calls(
    call: Callable[[int], None], warmup: int, iterations: int | None, seconds: float
) -> list[float]:
    """Warm up, then time ``iterations`` calls (or as many as fit in ``seconds``, estimated from the
    warm-up) one by one; ``call(i)`` receives the iteration index for rotating inputs."""
    warm = []
    for i in range(max(warmup, 1)):
        t0 = time.perf_counter()
        call(i)
        warm.append(time.perf_counter() - t0)
    if iterations is None:
        per_call = float(np.median(warm[len(warm) // 2 :]))
        iterations = int(min(max(seconds / max(per_call, 1e-6), 20), 100_000))
    samples = []
    for i in range(iterations):
        t0 = time.perf_counter()
        call(i)
        samples.append(time.perf_counter() - t0)
    return samples


def rate_summary(batch: int, shape: tuple[int, int], samples: list[float]) -> dict[str, Any]:
    """One timed configuration as the results record it: frames per second (``batch`` frames per call)
    and the latency of a call."""
    total = sum(samples)
    return {
        "batch": batch,
        "height": shape[0],
        "width": shape[1],
        "iterations": len(samples),
        "fps": batch * len(samples) / total if total > 0 else 0.0,
        "latency_ms": percentiles_ms(samples),
    }


def synthetic_l(n: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """Lab L planes with image-like structure (smoothed noise plus edges), values in 0..100."""
    import cv2

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        noise = rng.random((height // 8 + 1, width // 8 + 1), dtype=np.float32)
        smooth = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
        edges = (rng.random((height, width), dtype=np.float32) > 0.98).astype(np.float32)
        frames.append(np.clip(smooth * 90.0 + edges * 10.0, 0.0, 100.0).astype(np.float32))
    return frames


def time_backend_run(
    backend: Any,
    batch: int,
    shape: tuple[int, int],
    hints: np.ndarray,
    *,
    inputs: int,
    warmup: int,
    iterations: int | None,
    seconds: float,
) -> list[float]:
    """Seconds per ``backend.run`` call (what the batcher calls: numpy in, numpy out) on ``batch`` frames
    of ``shape``: ``inputs`` synthetic batches in rotation, the recurrent state carried from call to call,
    ``hints`` ``[batch, 3, h, w]`` as given."""
    info = backend.info
    frames = synthetic_l(inputs, *shape, seed=batch)
    batches = [
        np.stack([frames[(i + j) % len(frames)] / info.l_scale for j in range(batch)])[:, None].astype(
            np.float32
        )
        for i in range(len(frames))
    ]
    state = [np.zeros(info.state_shape(batch, *shape), dtype=np.float32)]

    def call(i: int) -> None:
        _, state[0] = backend.run(batches[i % len(batches)], hints, state[0])

    return time_calls(call, warmup, iterations, seconds)


def measure_matmul_gflops(quick: bool) -> dict[str, Any]:
    """float32 matrix-multiply throughput of this machine with numpy's BLAS (all cores): a stable,
    model-independent measure of what the CPU can do right now."""
    n = 512 if quick else 1024
    a = np.random.default_rng(1).random((n, n), dtype=np.float32)
    b = np.random.default_rng(2).random((n, n), dtype=np.float32)
    a @ b  # warm-up
    times: list[float] = []
    budget = 0.3 if quick else 2.0
    start = time.perf_counter()
    while time.perf_counter() - start < budget or len(times) < 3:
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    flops = 2.0 * n**3
    return {
        "what": f"numpy float32 matmul {n}x{n}",
        "gflops_median": flops / float(np.median(times)) / 1e9,
        "gflops_best": flops / min(times) / 1e9,
        "repeats": len(times),
    }


# ------------------------------------------------------------------------------------------- arguments


def add_model_args(parser: argparse.ArgumentParser, size: int | None = 256) -> None:
    """``--size`` (unless ``size`` is None), ``--model`` and ``--backend``: the same words and defaults in
    every benchmark that runs the colorizer."""
    if size is not None:
        parser.add_argument(
            "--size",
            type=int,
            default=size,
            help=f"working size (short side) of the network (default: {size})",
        )
    add_model_arg(parser)
    parser.add_argument("--backend", default="auto", help="runtime backend (default: auto)")


def add_model_arg(parser: argparse.ArgumentParser) -> None:
    """``--model``, resolved to the shipped model (or ``$CHROMASTREAM_MODEL``) when the parser is built."""
    parser.add_argument(
        "--model",
        type=Path,
        default=default_model_path(),
        help="ONNX model file (default: the shipped model)",
    )


def add_output_args(parser: argparse.ArgumentParser, writes: str, shared: bool = True) -> None:
    """``--out-dir`` (alias ``--out``) for the files the benchmark ``writes``, and ``--shared`` where it
    reads the shared data."""
    parser.add_argument(
        "--out-dir",
        "--out",
        dest="out_dir",
        type=Path,
        default=DEFAULT_RESULTS_DIR,
        help=f"folder for {writes} (default: {DEFAULT_RESULTS_DIR})",
    )
    if shared:
        parser.add_argument(
            "--shared",
            type=Path,
            default=shared_root(),
            help="shared data folder (default: $CHROMASTREAM_SHARED or ../shared)",
        )


def require_model_file(path: Path) -> None:
    """Refuse a ``--model`` that is not a file before anything loads or runs."""
    if not path.is_file():
        raise BenchmarkError(f"model file not found: {path}")


# ------------------------------------------------------------------------------------------- running


def fail(message: str) -> int:
    """Print a one-line error for a person and return the exit status the CLI should use."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def eval_set_dirs(shared: Path, sets: list[str]) -> dict[str, Path]:
    """The evaluation folders ``shared/data/images/eval/<set>``; a missing one is a clear error."""
    root = shared / "data" / "images" / "eval"
    if not root.is_dir():
        raise BenchmarkError(f"evaluation images not found at {root} (set CHROMASTREAM_SHARED)")
    missing = [s for s in sets if not (root / s).is_dir()]
    if missing:
        raise BenchmarkError(f"evaluation set(s) {', '.join(missing)} not found under {root}")
    return {s: root / s for s in sets}


@contextlib.asynccontextmanager
async def whep_viewer(
    session: Any, base: str, stream_id: str, prepare: Callable[[Any], None]
) -> AsyncIterator[Any]:
    """A WHEP viewer of ``stream_id`` on the server at ``base``, as the live benchmarks run them: an aiortc
    peer connection that only receives video, offered over ``session`` (aiohttp) and closed on exit.
    ``prepare`` gets the connection before the offer, to attach what the benchmark counts with (a track
    handler, a metadata data channel). A server that does not answer 201 is a :class:`BenchmarkError`."""
    from aiortc import RTCSessionDescription

    from chromastream.stream.webrtc import allow_loopback_candidates, peer_connection

    allow_loopback_candidates()
    pc = peer_connection()
    pc.addTransceiver("video", direction="recvonly")
    prepare(pc)
    try:
        await pc.setLocalDescription(await pc.createOffer())
        headers = {"Content-Type": "application/sdp"}
        url = f"{base}/whep/{stream_id}"
        async with session.post(url, data=pc.localDescription.sdp, headers=headers) as answer:
            if answer.status != 201:
                raise BenchmarkError(f"WHEP for {stream_id} answered {answer.status}: {await answer.text()}")
            sdp = await answer.text()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        yield pc
    finally:
        await pc.close()


def image_session(args: argparse.Namespace, benchmark: str) -> tuple[Any, dict[str, Path], dict[str, Any]]:
    """What every still-picture benchmark opens with: the ``--model`` checked, the evaluation folders of
    ``--sets`` found, a memory-off :class:`ColorizerSession` on ``--backend`` at ``--size``, and the head of
    its JSON (name, date, model, size, limit, machine). One place, so the picture benchmarks cannot drift
    apart in how they load the model or tag their results."""
    from chromastream.models.runtime.registry import create_backend
    from chromastream.models.runtime.session import ColorizerSession

    require_model_file(args.model)
    set_dirs = eval_set_dirs(args.shared, args.sets)
    backend = create_backend(args.backend, args.model)
    head = {
        "benchmark": benchmark,
        "date": now_iso(),
        "model": model_tags(args.model, backend.info.version, backend.name),
        "size": args.size,
        "limit": args.limit,
        "machine": machine_tags(),
    }
    return ColorizerSession(backend, size=args.size, memory=False), set_dirs, head


def run_and_write(
    name: str | Callable[[dict[str, Any]], str],
    out_dir: Path,
    run: Callable[[], dict[str, Any]],
    print_summary: Callable[[dict[str, Any]], None],
    *,
    copy_as: Callable[[dict[str, Any]], str] | None = None,
    exit_status: Callable[[dict[str, Any]], int] | None = None,
) -> int:
    """The common tail of a benchmark's ``main``: run, turn expected failures into one error line, write
    ``<name>.json`` (``name`` may be read from the result, e.g. its device) and, with ``copy_as``, a copy
    named from the result, print the summary. Returns the exit status: 2 for an expected failure (any
    :class:`~chromastream.errors.ChromastreamError`, or a missing optional dependency), else
    ``exit_status(result)``, 0 by default."""
    try:
        result = run()
    except (ChromastreamError, ImportError) as exc:
        return fail(str(exc))
    path = write_json(out_dir, name(result) if callable(name) else name, result)
    written = str(path)
    if copy_as is not None:
        copy = path.with_name(f"{copy_as(result)}.json")
        shutil.copyfile(path, copy)
        written += f" (and {copy.name})"
    print_summary(result)
    print(f"\nwrote {written} in {result['seconds']:.1f} s")
    return exit_status(result) if exit_status is not None else 0
