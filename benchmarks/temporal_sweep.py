"""Choosing the temporal filter's constants (:mod:`chromastream.models.runtime.temporal_filter`) on DAVIS
*training* sequences, by the video-quality measures of :mod:`benchmarks.video_quality`.

Each (strength, sigma) pair colorizes the same frames with memory on; strength 0 is the network's memory
alone. The rule, fixed before the run: the lowest flicker among the pairs whose PSNR is within 0.1 dB of
strength 0's and whose ΔCF is at most 0.5 above it (steadier, not greyer or blurrier). The held-out
sequences are never read here; ``benchmarks.video_quality`` judges the result on them.

Writes ``temporal_filter_sweep.json``.

    python -m benchmarks.temporal_sweep                      # ~12 min on 2 cores
    python -m benchmarks.temporal_sweep --max-frames 3 --strengths 0 0.6 --sigmas 2 --out-dir /tmp/t
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from benchmarks.common import (
    BenchmarkError,
    add_model_args,
    add_output_args,
    fail,
    machine_tags,
    model_tags,
    now_iso,
    run_and_write,
)
from benchmarks.video_quality import davis_root, evaluate_sequence, mean_over_sequences
from chromastream.models.colorizer import spec

SWEEP_SEQUENCES = ("bmx-trees", "dog", "drift-chicane", "scooter-black")
"""Four of the six DAVIS training sequences (``chromastream.models.colorizer.spec`` keeps the held-out ones
apart): camera and object motion, a still background and a chase, in about 10 minutes on 2 cores."""
PSNR_TOLERANCE_DB = 0.1
DCF_TOLERANCE = 0.5


def choose(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The rule of the module docstring; strength 0 is always eligible, so there is always a choice."""
    base = next(r for r in rows if r["strength"] == 0)
    eligible = [
        r
        for r in rows
        if r["psnr"] >= base["psnr"] - PSNR_TOLERANCE_DB and r["dcf"] <= base["dcf"] + DCF_TOLERANCE
    ]
    return min(eligible, key=lambda r: r["flicker"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from chromastream.models.runtime.registry import create_backend
    from chromastream.models.runtime.session import ColorizerSession

    root = davis_root(args.shared)
    if not root.is_dir():
        raise BenchmarkError(f"DAVIS sequences not found at {root} (set CHROMASTREAM_SHARED)")
    backend = create_backend(args.backend, args.model)
    pairs = [(0.0, args.sigmas[0])] + [(s, g) for s in args.strengths if s > 0 for g in args.sigmas]
    rows = []
    started = time.perf_counter()
    for strength, sigma in pairs:
        sessions = {
            "memory": ColorizerSession(backend, size=args.size, memory=True, smoothing=(strength, sigma)),
            "per_frame": ColorizerSession(backend, size=args.size, memory=False),
        }
        seqs = {
            name: evaluate_sequence(sessions, root / name, args.max_frames, None) for name in args.sequences
        }
        mean = mean_over_sequences(seqs)
        mem, cmp = mean["modes"]["memory"], mean["compare"]
        rows.append(
            {
                "strength": strength,
                "sigma": sigma if strength > 0 else None,
                "psnr": mem["psnr"],
                "dcf": mem["dcf"],
                "flicker": mem["flicker"],
                "warp": mem["warp"],
                "flicker_ratio": cmp["flicker_ratio"],
                "warp_ratio": cmp["warp_ratio"],
                "psnr_diff_db": cmp["psnr_diff_db"],
            }
        )
        r = rows[-1]
        print(
            f"strength {strength:.2f} sigma {sigma}: PSNR {r['psnr']:.2f} dCF {r['dcf']:.1f} "
            f"flicker ratio {r['flicker_ratio']:.3f} warp ratio {r['warp_ratio']:.3f}",
            flush=True,
        )
    best = choose(rows)
    return {
        "benchmark": "temporal_filter_sweep",
        "date": now_iso(),
        "model": model_tags(args.model, backend.info.version, backend.name),
        "sequences": list(args.sequences),
        "max_frames": args.max_frames,
        "size": args.size,
        "rule": (
            f"lowest flicker among pairs with PSNR within {PSNR_TOLERANCE_DB} dB and dCF at most "
            f"{DCF_TOLERANCE} above strength 0 (memory mode, training sequences only)"
        ),
        "rows": rows,
        "chosen": {"strength": best["strength"], "sigma": best["sigma"]},
        "machine": machine_tags(),
        "seconds": time.perf_counter() - started,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.temporal_sweep",
        description=(
            "Sweep the temporal filter's strength and sigma on DAVIS training sequences and pick the "
            "steadiest setting that keeps PSNR and colourfulness. Writes temporal_filter_sweep.json."
        ),
    )
    parser.add_argument("--sequences", nargs="+", default=list(SWEEP_SEQUENCES), help="training sequences")
    parser.add_argument("--max-frames", type=int, default=20, metavar="N", help="first N frames each")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.5, 0.7, 0.85])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[3.0])
    add_model_args(parser)
    add_output_args(parser, "temporal_filter_sweep.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    held_out = sorted(set(args.sequences) & set(spec.DAVIS_EVAL_SEQUENCES))
    if held_out:
        return fail(f"{', '.join(held_out)} are held out for evaluation; tune on training sequences only")
    if args.max_frames < 2:
        return fail("--max-frames must be at least 2 (the video measures compare consecutive frames)")
    return run_and_write("temporal_filter_sweep", args.out_dir, lambda: run(args), print_summary)


def print_summary(result: dict[str, Any]) -> None:
    print(f"chosen: {result['chosen']} ({result['rule']})")


if __name__ == "__main__":
    sys.exit(main())
