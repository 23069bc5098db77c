"""Video-quality benchmark (docs/ARCHITECTURE.md, Measures): does the colorizer's memory make video steadier
without making each frame worse?

Each held-out DAVIS sequence is made grey (Lab L, a = b = 0, 8-bit, as in :mod:`benchmarks.quality`)
and colorized frame by frame, in order, three ways in the same run:

- ``memory``: one session with its recurrent memory on, reset at the start of the sequence (how a
  stream is colorized);
- ``per_frame``: memory off, every frame colorized on its own (a still-image colorizer applied to video);
- ``gray``: the grey input as the output (the trivial baseline: perfectly steady, no colour).

All three are scored against the colour frames: PSNR, SSIM, CF and ΔCF per frame (means), and over time
CDC (k = 1, 2, 4), warp error and flicker. The temporal measures of ``gray`` are ~0 by construction,
which is why the judgement compares ``memory`` with ``per_frame`` and not with ``gray``: the memory must
cut flicker and warp error well below the per-frame colorizer's while keeping its PSNR. The ground
truth's own CDC and warp error are reported for scale (real colour edges, lighting changes and flow
mistakes all count): an output far steadier than the truth is usually a muted one, so read these
figures beside ΔCF.

Writes ``video_quality.json`` and ``video_strip_<seq>.png`` (rows grey | per-frame | memory | truth over
frames spread through the sequence) for the first sequences, because flicker is easier to see than to
read.

    python -m benchmarks.video_quality                                 # held-out sequences, shipped model
    python -m benchmarks.video_quality --sequences blackswan --max-frames 4 --out-dir /tmp/v   # smoke
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks import metrics
from benchmarks.common import (
    BenchmarkError,
    add_model_args,
    add_output_args,
    fail,
    machine_tags,
    model_tags,
    now_iso,
    require_model_file,
    run_and_write,
)
from benchmarks.metrics import F32, U8
from benchmarks.quality import gray_input, list_images, load_rgb
from chromastream.models.colorizer import spec

MODES = ("memory", "per_frame", "gray")
MODE_LABELS = {"memory": "memory", "per_frame": "per-frame", "gray": "grey"}
FRAME_MEASURES = ("psnr", "ssim", "cf", "dcf")
TARGETS: dict[str, float] = {
    "flicker_ratio_max": 0.6,
    "warp_ratio_max": 0.6,
    "cdc_ratio_max": 0.99,
    "psnr_drop_max_db": 0.3,
}
"""The memory must bring flicker and warp error to at most 60 % of the per-frame colorizer's, keep CDC
below it, and cost no more than 0.3 dB of PSNR: steadiness bought with worse frames is no gain. "Below"
for CDC means at least 1 % lower: a memory that changes nothing differs from per-frame only in
rounding, and a tie is not a win."""
STRIP_COLUMNS = 6
STRIP_THUMB_HEIGHT = 120
STRIP_LABEL_WIDTH = 84


def davis_root(shared: Path) -> Path:
    return shared / "data" / "video" / "davis"


def default_sequences() -> list[str]:
    """The sequences the colorizer is never trained on (``spec.DAVIS_EVAL_SEQUENCES``)."""
    return list(spec.DAVIS_EVAL_SEQUENCES)


def load_frames(seq_dir: Path, max_frames: int | None) -> list[U8]:
    paths = list_images(seq_dir)
    if max_frames is not None:
        paths = paths[:max_frames]
    return [load_rgb(p) for p in paths]


def colorize(session: Any, lightness: list[F32]) -> tuple[list[U8], float]:
    """The session's outputs for the frames in order (memory or not is the session's setting), and the
    mean seconds per frame of model plus output conversion."""
    from chromastream.kernels.combine import lab_to_rgb_u8

    session.reset()
    outputs: list[U8] = []
    start = time.perf_counter()
    for plane in lightness:
        outputs.append(lab_to_rgb_u8(plane, session.predict_ab(plane)))
    seconds = (time.perf_counter() - start) / max(len(lightness), 1)
    return outputs, seconds


def frame_means(outputs: list[U8], truths: list[U8], cf_truths: list[float]) -> dict[str, float]:
    """Per-frame image measures averaged over the sequence."""
    scores = [metrics.image_scores(o, t, cf) for o, t, cf in zip(outputs, truths, cf_truths, strict=True)]
    return {m: float(np.mean([s[m] for s in scores])) for m in FRAME_MEASURES}


def _ratio(num: Any, den: Any) -> float:
    if not isinstance(num, int | float) or not isinstance(den, int | float):
        return math.nan
    if not (math.isfinite(num) and math.isfinite(den)) or den <= 0:
        return math.nan
    return float(num) / float(den)


def compare(memory: dict[str, Any], per_frame: dict[str, Any]) -> dict[str, Any]:
    """The figures the memory is judged by, and whether each meets its target (``None``: not measurable,
    e.g. a one-frame sequence)."""
    flicker_ratio = _ratio(memory.get("flicker"), per_frame.get("flicker"))
    warp_ratio = _ratio(memory.get("warp"), per_frame.get("warp"))
    cdc_mem = (memory.get("cdc") or {}).get("mean", math.nan)
    cdc_pf = (per_frame.get("cdc") or {}).get("mean", math.nan)
    cdc_diff = cdc_mem - cdc_pf
    cdc_ratio = _ratio(cdc_mem, cdc_pf)
    psnr_diff = memory["psnr"] - per_frame["psnr"]

    def check(value: float, ok: bool) -> bool | None:
        return bool(ok) if math.isfinite(value) else None

    return {
        "flicker_ratio": flicker_ratio,
        "warp_ratio": warp_ratio,
        "cdc_diff": cdc_diff,
        "cdc_ratio": cdc_ratio,
        "psnr_diff_db": psnr_diff,
        "pass": {
            "flicker": check(flicker_ratio, flicker_ratio <= TARGETS["flicker_ratio_max"]),
            "warp": check(warp_ratio, warp_ratio <= TARGETS["warp_ratio_max"]),
            "cdc": check(cdc_ratio, cdc_ratio <= TARGETS["cdc_ratio_max"]),
            "psnr": check(psnr_diff, psnr_diff >= -TARGETS["psnr_drop_max_db"]),
        },
    }


def _thumb(rgb: U8, height: int) -> U8:
    h, w = rgb.shape[:2]
    width = max(1, round(w * height / h))
    out: U8 = np.asarray(cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA), dtype=np.uint8)
    return out


def _text(img: U8, text: str, x: int, y: int) -> None:
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (20, 20, 20), 1, cv2.LINE_AA)


def strip_indices(n: int, count: int = STRIP_COLUMNS) -> list[int]:
    """Frames spread evenly from the first to the last: drift in the memory shows late, not early."""
    if n <= count:
        return list(range(n))
    return sorted({round(i * (n - 1) / (count - 1)) for i in range(count)})


def video_strip(name: str, rows: list[tuple[str, list[U8]]], indices: list[int]) -> U8:
    """A grid with one row per method and one column per picked frame, the frame number on top."""
    gap, header = 4, 34
    thumbs = [[_thumb(frames[i], STRIP_THUMB_HEIGHT) for i in indices] for _, frames in rows]
    col_width = max(t.shape[1] for row in thumbs for t in row)
    width = STRIP_LABEL_WIDTH + len(indices) * (col_width + gap) + gap
    height = header + len(rows) * (STRIP_THUMB_HEIGHT + gap) + gap
    sheet = np.full((height, width, 3), 255, dtype=np.uint8)
    _text(sheet, f"{name}    rows: grey input | per-frame | memory | ground truth", gap, 14)
    for j, idx in enumerate(indices):
        _text(sheet, f"frame {idx}", STRIP_LABEL_WIDTH + j * (col_width + gap), header - 6)
    for r, ((label, _), row) in enumerate(zip(rows, thumbs, strict=True)):
        y = header + r * (STRIP_THUMB_HEIGHT + gap)
        _text(sheet, label, gap, y + STRIP_THUMB_HEIGHT // 2)
        for j, t in enumerate(row):
            x = STRIP_LABEL_WIDTH + j * (col_width + gap)
            sheet[y : y + t.shape[0], x : x + t.shape[1]] = t
    return sheet


def evaluate_sequence(
    sessions: dict[str, Any], seq_dir: Path, max_frames: int | None, strip_path: Path | None
) -> dict[str, Any]:
    """All three modes on one sequence: per-mode measures, the truth's own temporal figures, the
    memory-versus-per-frame comparison."""
    truths = load_frames(seq_dir, max_frames)
    if len(truths) < 2:
        raise BenchmarkError(f"{seq_dir} has {len(truths)} frame(s); the video measures need at least 2")
    grays, planes = zip(*(gray_input(t) for t in truths), strict=True)
    lightness: list[F32] = [np.asarray(p, dtype=np.float32) for p in planes]
    outputs: dict[str, list[U8]] = {}
    seconds: dict[str, float] = {}
    for mode in ("memory", "per_frame"):
        outputs[mode], seconds[mode] = colorize(sessions[mode], lightness)
    outputs["gray"] = [np.repeat(g[..., None], 3, axis=2) for g in grays]
    cf_truths = [metrics.colourfulness(t) for t in truths]
    warps = metrics.warp_errors({**outputs, "truth": truths}, truths)
    modes: dict[str, Any] = {}
    for mode in MODES:
        modes[mode] = {
            **frame_means(outputs[mode], truths, cf_truths),
            "cdc": metrics.cdc(outputs[mode]),
            "warp": warps[mode],
            "flicker": metrics.flicker(outputs[mode], truths),
            "seconds_per_frame": seconds.get(mode),
        }
    strip = None
    if strip_path is not None:
        picks = strip_indices(len(truths))
        rows = [
            ("grey", outputs["gray"]),
            ("per-frame", outputs["per_frame"]),
            ("memory", outputs["memory"]),
            ("truth", truths),
        ]
        sheet = video_strip(seq_dir.name, rows, picks)
        strip_path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(strip_path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        strip = strip_path.name
    return {
        "frames": len(truths),
        "width": int(truths[0].shape[1]),
        "height": int(truths[0].shape[0]),
        "modes": modes,
        "truth": {"cf": float(np.mean(cf_truths)), "cdc": metrics.cdc(truths), "warp": warps["truth"]},
        "compare": compare(modes["memory"], modes["per_frame"]),
        "strip": strip,
    }


def _mean_of(values: list[Any]) -> Any:
    """Mean over sequences, each counting once, key by key for nested dicts (CDC), skipping gaps."""
    if values and isinstance(values[0], dict):
        keys = [k for k in values[0] if all(isinstance(v, dict) and k in v for v in values)]
        return {k: _mean_of([v[k] for v in values]) for k in keys}
    finite = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def mean_over_sequences(sequences: dict[str, dict[str, Any]]) -> dict[str, Any]:
    seqs = list(sequences.values())
    modes = {m: _mean_of([s["modes"][m] for s in seqs]) for m in MODES}
    return {
        "n": len(seqs),
        "frames": sum(s["frames"] for s in seqs),
        "modes": modes,
        "truth": _mean_of([s["truth"] for s in seqs]),
        "compare": compare(modes["memory"], modes["per_frame"]),
    }


def _fmt(x: Any, digits: int = 2) -> str:
    return "-" if not isinstance(x, int | float) or not math.isfinite(x) else f"{x:.{digits}f}"


def print_summary(result: dict[str, Any]) -> None:
    print(f"\nvideo quality  model {result['model']['version']}  size {result['size']}")
    print(f"{'sequence':<14}{'mode':<11}{'PSNR':>8}{'SSIM':>8}{'ΔCF':>7}{'CDC':>9}{'warp':>8}{'flicker':>9}")
    groups = [*result["sequences"].items(), ("mean", result["mean"])]
    for name, s in groups:
        for i, mode in enumerate(MODES):
            v = s["modes"][mode]
            print(
                f"{name if i == 0 else '':<14}{MODE_LABELS[mode]:<11}{_fmt(v['psnr']):>8}"
                f"{_fmt(v['ssim'], 4):>8}{_fmt(v['dcf'], 1):>7}{_fmt(v['cdc'].get('mean'), 5):>9}"
                f"{_fmt(v['warp']):>8}{_fmt(v['flicker']):>9}"
            )
    c, t = result["mean"]["compare"], TARGETS
    print(
        f"\nmemory / per-frame: flicker {_fmt(c['flicker_ratio'])} (target ≤ {t['flicker_ratio_max']}), "
        f"warp {_fmt(c['warp_ratio'])} (≤ {t['warp_ratio_max']}), "
        f"CDC {_fmt(c['cdc_ratio'], 3)} (≤ {t['cdc_ratio_max']}), "
        f"PSNR {_fmt(c['psnr_diff_db'])} dB (≥ -{t['psnr_drop_max_db']})"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    from chromastream.models.runtime.registry import create_backend
    from chromastream.models.runtime.session import ColorizerSession

    require_model_file(args.model)
    root = davis_root(args.shared)
    if not root.is_dir():
        raise BenchmarkError(f"DAVIS sequences not found at {root} (set CHROMASTREAM_SHARED)")
    missing = [s for s in args.sequences if not (root / s).is_dir()]
    if missing:
        raise BenchmarkError(f"sequence(s) {', '.join(missing)} not found under {root}")
    backend = create_backend(args.backend, args.model)
    # The backend is stateless, so both sessions share it: the two modes differ only in the memory.
    sessions = {
        "memory": ColorizerSession(backend, size=args.size, memory=True),
        "per_frame": ColorizerSession(backend, size=args.size, memory=False),
    }
    result: dict[str, Any] = {
        "benchmark": "video_quality",
        "date": now_iso(),
        "model": model_tags(args.model, backend.info.version, backend.name),
        "size": args.size,
        "max_frames": args.max_frames,
        "definition": (
            "grey input = Lab L with a=b=0 (8-bit); modes: memory = one session with memory, reset at "
            "the start of each sequence; per_frame = memory off; gray = grey input as output. PSNR on "
            "8-bit RGB, SSIM per RGB channel (mean), CF Hasler-Süsstrunk, dCF = |CF(out) - CF(gt)|, "
            "frame means; CDC = mean JS divergence of per-channel RGB histograms of frames t and t+k; "
            "warp = mean |dab| between output t and output t+1 warped by DIS flow of the ground truth, "
            "forward-backward occlusion check; flicker = mean |dab| between consecutive outputs where "
            "the ground truth's ab changes < 1. Means over sequences count each sequence once."
        ),
        "targets": dict(TARGETS),
        "machine": machine_tags(),
        "sequences": {},
    }
    started = time.perf_counter()
    for i, name in enumerate(args.sequences):
        strip = args.out_dir / f"video_strip_{name}.png" if i < args.strips else None
        t0 = time.perf_counter()
        result["sequences"][name] = evaluate_sequence(sessions, root / name, args.max_frames, strip)
        frames = result["sequences"][name]["frames"]
        print(f"{name}: {frames} frames in {time.perf_counter() - t0:.1f} s", flush=True)
    result["mean"] = mean_over_sequences(result["sequences"])
    result["pass"] = result["mean"]["compare"]["pass"]
    result["seconds"] = time.perf_counter() - started
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.video_quality",
        description=(
            "Video quality of the colorizer on held-out DAVIS sequences: memory on, memory off and the "
            "grey baseline in the same run (PSNR, SSIM, colourfulness, CDC, warp error, flicker). "
            "Writes video_quality.json and video_strip_<sequence>.png into the output folder."
        ),
    )
    parser.add_argument(
        "--sequences", nargs="+", default=None, help="DAVIS sequences (default: the held-out ones)"
    )
    parser.add_argument(
        "--max-frames", type=int, default=None, metavar="N", help="first N frames per sequence (smoke runs)"
    )
    add_model_args(parser)
    parser.add_argument(
        "--strips",
        type=int,
        default=2,
        metavar="K",
        help="write a strip PNG for the first K sequences (default: 2; 0 for none)",
    )
    add_output_args(parser, "video_quality.json and the strips")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_frames is not None and args.max_frames < 2:
        return fail("--max-frames must be at least 2 (the video measures compare consecutive frames)")
    if args.strips < 0:
        return fail("--strips must be 0 or more")
    from chromastream.models.runtime.session import MAX_SIZE, MIN_SIZE

    if not MIN_SIZE <= args.size <= MAX_SIZE:
        return fail(f"--size must be in {MIN_SIZE}..{MAX_SIZE}")
    args.sequences = args.sequences or default_sequences()
    return run_and_write("video_quality", args.out_dir, lambda: run(args), print_summary)


if __name__ == "__main__":
    sys.exit(main())
