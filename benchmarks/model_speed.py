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
import sys
import time
from typing import Any

import numpy as np

from benchmarks.common import (
    add_model_args,
    add_output_args,
    fail,
    machine_tags,
    measure_matmul_gflops,
    model_tags,
    now_iso,
    rate_summary,
    require_model_file,
    run_and_write,
    safe_name,
    synthetic_l,
    time_backend_run,
    time_calls,
)

TARGET_FPS = 30.0
TARGET_SIZE = 256
N_INPUTS = 8
HINTS = (
    {"x": 0.25, "y": 0.3, "a": 20.0, "b": 40.0},
    {"x": 0.7, "y": 0.6, "a": -30.0, "b": 10.0},
    {"x": 0.5, "y": 0.85, "a": 5.0, "b": -35.0},
)


def _summary(name: str, batch: int, size: int, samples: list[float], **extra: Any) -> dict[str, Any]:
    return {"name": name, **rate_summary(batch, (size, size), samples), "seconds": sum(samples), **extra}


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
    return _summary(f"session b1 {size}", 1, size, samples, memory=True, hints=len(HINTS))


def bench_batch(
    backend: Any, batch: int, size: int, args: argparse.Namespace, seconds: float
) -> dict[str, Any]:
    """Several streams in one call, straight on the backend (what the batcher does), state carried."""
    from chromastream.models.colorizer.hints import parse_hints, rasterize

    hints = np.repeat(rasterize(parse_hints(list(HINTS)), size, size)[None], batch, axis=0)
    samples = time_backend_run(
        backend,
        batch,
        (size, size),
        hints,
        inputs=N_INPUTS,
        warmup=args.warmup,
        iterations=args.iterations,
        seconds=seconds,
    )
    return _summary(f"backend b{batch} {size}", batch, size, samples, memory=True, hints=len(HINTS))


def create(args: argparse.Namespace) -> Any:
    if args.threads is not None:
        from chromastream.models.runtime.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(args.model, threads=args.threads)
    from chromastream.models.runtime.registry import create_backend

    return create_backend(args.backend, args.model)


def run(args: argparse.Namespace) -> dict[str, Any]:
    require_model_file(args.model)
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
    return run_and_write(
        "model_speed",
        args.out_dir,
        lambda: run(args),
        print_summary,
        copy_as=lambda result: f"model_speed_{safe_name(result['model']['version'])}",
    )


if __name__ == "__main__":
    sys.exit(main())
