"""Model-only speed of the colorizer: frames per second and latency tails of the realistic call.

The realistic call is one frame of one stream at the 256x256 working size through a
:class:`~chromastream.models.runtime.session.ColorizerSession` with its recurrent memory carried from frame to
frame and a few user hints rasterized, so the figure includes everything the pipeline pays per frame apart
from decoding, colour conversion and encoding (``benchmarks.video_speed`` measures those end to end).

Figures need a yardstick from the same machine in the same run: the target (30 fps at 256, batch 1)
and a measured float32 matmul throughput, which tells a reader whether a slow figure comes from the
model or from a slow or busy machine. The run warms up first (ONNX Runtime allocates and tunes on the
first calls), rotates through several inputs so no cache sees the same frame twice in a row, and
reports medians and tails. ONNX Runtime on the CPU returns only when the work is done, so the wall
clock around each call is the latency; no device synchronization is needed.

Writes ``model_speed.json`` and a copy named by the model version (``model_speed_<version>.json``),
so the report can show a new model beside the previous one.

    python -m benchmarks.model_speed                  # ~10 s per configuration
    python -m benchmarks.model_speed --quick --out-dir /tmp/ms   # smoke run
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from benchmarks.common import (
    BenchmarkError,
    add_model_args,
    add_output_args,
    fail,
    machine_tags,
    model_tags,
    now_iso,
    percentiles_ms,
    safe_name,
    write_json,
)

TARGET_FPS = 30.0
TARGET_SIZE = 256
N_INPUTS = 8
HINTS = (
    {"x": 0.25, "y": 0.3, "a": 20.0, "b": 40.0},
    {"x": 0.7, "y": 0.6, "a": -30.0, "b": 10.0},
    {"x": 0.5, "y": 0.85, "a": 5.0, "b": -35.0},
)


def synthetic_l(n: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """Lab L planes with image-like structure (smoothed noise plus edges), values in 0..100."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        noise = rng.random((height // 8 + 1, width // 8 + 1), dtype=np.float32)
        smooth = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
        edges = (rng.random((height, width), dtype=np.float32) > 0.98).astype(np.float32)
        frames.append(np.clip(smooth * 90.0 + edges * 10.0, 0.0, 100.0).astype(np.float32))
    return frames


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


def _summary(
    name: str, batch: int, size: tuple[int, int], samples: list[float], **extra: Any
) -> dict[str, Any]:
    total = sum(samples)
    return {
        "name": name,
        "batch": batch,
        "height": size[0],
        "width": size[1],
        "iterations": len(samples),
        "seconds": total,
        "fps": batch * len(samples) / total if total > 0 else 0.0,
        "latency_ms": percentiles_ms(samples),
        **extra,
    }


def bench_session(backend: Any, size: int, args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    """Batch 1 through a session: memory carried, hints set (the pipeline's per-frame call)."""
    from chromastream.models.colorizer.hints import parse_hints
    from chromastream.models.runtime.session import ColorizerSession

    session = ColorizerSession(backend, size=size, memory=True)
    session.set_hints(parse_hints(list(HINTS)))
    frames = synthetic_l(N_INPUTS, size, size)

    def call(i: int) -> None:
        session.predict_ab(frames[i % len(frames)])

    samples = time_calls(call, args.warmup, args.iterations, seconds)
    return _summary(f"session b1 {size}", 1, (size, size), samples, memory=True, hints=len(HINTS))


def bench_batch(
    backend: Any, batch: int, size: int, args: argparse.Namespace, seconds: float
) -> dict[str, Any]:
    """Several streams in one call, straight on the backend (what the batcher does), state carried."""
    from chromastream.models.colorizer.hints import parse_hints, rasterize

    info = backend.info
    frames = synthetic_l(N_INPUTS, size, size, seed=batch)
    inputs = [
        np.stack([frames[(i + j) % len(frames)] / info.l_scale for j in range(batch)])[:, None].astype(
            np.float32
        )
        for i in range(len(frames))
    ]
    hints = np.repeat(rasterize(parse_hints(list(HINTS)), size, size)[None], batch, axis=0)
    state = [np.zeros(info.state_shape(batch, size, size), dtype=np.float32)]

    def call(i: int) -> None:
        _, state[0] = backend.run(inputs[i % len(inputs)], hints, state[0])

    samples = time_calls(call, args.warmup, args.iterations, seconds)
    return _summary(f"backend b{batch} {size}", batch, (size, size), samples, memory=True, hints=len(HINTS))


def create(args: argparse.Namespace) -> Any:
    if args.threads is not None:
        from chromastream.models.runtime.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(args.model, threads=args.threads)
    from chromastream.models.runtime.registry import create_backend

    return create_backend(args.backend, args.model)


def run(args: argparse.Namespace) -> dict[str, Any]:
    backend = create(args)
    seconds = args.seconds
    result: dict[str, Any] = {
        "benchmark": "model_speed",
        "date": now_iso(),
        "model": model_tags(args.model, backend.info.version, backend.name),
        "threads": args.threads,
        "quick": args.quick,
        "machine": machine_tags(),
        "target": {"fps": TARGET_FPS, "size": TARGET_SIZE, "batch": 1, "name": f"session b1 {TARGET_SIZE}"},
        "reference": measure_matmul_gflops(args.quick),
        "runs": [],
    }
    started = time.perf_counter()
    runs = result["runs"]
    runs.append(bench_session(backend, TARGET_SIZE, args, seconds))
    print(f"{runs[-1]['name']}: {runs[-1]['fps']:.1f} fps", flush=True)
    if not args.headline_only:
        runs.append(bench_batch(backend, 4, TARGET_SIZE, args, seconds / 2))
        print(f"{runs[-1]['name']}: {runs[-1]['fps']:.1f} fps", flush=True)
        runs.append(bench_session(backend, 320, args, seconds / 2))
        print(f"{runs[-1]['name']}: {runs[-1]['fps']:.1f} fps", flush=True)
    headline = runs[0]
    result["headline"] = {
        "name": headline["name"],
        "fps": headline["fps"],
        "p50_ms": headline["latency_ms"]["p50"],
    }
    result["pass"] = headline["fps"] >= TARGET_FPS
    result["seconds"] = time.perf_counter() - started
    return result


def print_summary(result: dict[str, Any]) -> None:
    ref = result["reference"]
    print(f"\nmodel speed  model {result['model']['version']}  backend {result['model']['backend']}")
    print(f"{'configuration':<18}{'fps':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'iters':>7}")
    for r in result["runs"]:
        lat = r["latency_ms"]
        print(
            f"{r['name']:<18}{r['fps']:>9.1f}{lat['p50']:>9.2f}{lat['p95']:>9.2f}{lat['p99']:>9.2f}{r['iterations']:>7}"
        )
    mark = "PASS" if result["pass"] else "FAIL"
    print(f"target: >= {result['target']['fps']:.0f} fps at {result['target']['size']}, batch 1 -> {mark}")
    print(f"machine reference: {ref['what']} {ref['gflops_median']:.1f} GFLOP/s (median)")
    machine = result["machine"]
    print(f"machine: {machine['cpu']}, {machine['cores_usable']} cores, load {machine['loadavg']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.model_speed",
        description=(
            "Model-only throughput and latency (p50/p95/p99) of the colorizer at 256x256, batch 1, "
            "memory carried and hints set; also batch 4 and 320x320; beside the 30 fps target and a "
            "matmul GFLOP/s reference measured in the same run. Writes model_speed.json."
        ),
    )
    add_model_args(parser, size=None)
    parser.add_argument(
        "--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all usable cores)"
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="timed seconds for the headline run (others get half)"
    )
    parser.add_argument(
        "--iterations", type=int, default=None, help="fixed number of timed calls instead of --seconds"
    )
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls before timing")
    parser.add_argument("--headline-only", action="store_true", help="only batch 1 at 256x256")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2 warm-up calls, 5 timed calls per configuration"
    )
    add_output_args(parser, "model_speed.json", shared=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.warmup, args.iterations = min(args.warmup, 2), args.iterations or 5
    if args.iterations is not None and args.iterations < 1:
        return fail("--iterations must be at least 1")
    if not args.model.is_file():
        return fail(f"model file not found: {args.model}")
    from chromastream.models.runtime.base import BackendError

    try:
        result = run(args)
    except (BenchmarkError, BackendError) as exc:
        return fail(str(exc))
    path = write_json(args.out_dir, "model_speed", result)
    copy = args.out_dir / f"model_speed_{safe_name(result['model']['version'])}.json"
    shutil.copyfile(path, copy)
    print_summary(result)
    print(f"\nwrote {path} (and {copy.name}) in {result['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
