"""Hint benchmark (docs/ARCHITECTURE.md, Measures, the protocol of Zhang et al. 2017, "Real-Time User-Guided
Image Colorization with Learned Deep Priors", Fig. 4): PSNR against the number of colour hints revealed from
the ground truth.

A simulated user clicks N random points and gives each the true colour there; a colorizer that uses
hints well climbs steeply with N, one that ignores them stays flat at its N = 0 PSNR. The curve is what
separates "has a hint input" from "follows hints".

Protocol, per picture (grey input as in :mod:`benchmarks.quality`):

- points: pixel positions drawn uniformly over the picture by a generator seeded with ``--seed`` and
  the picture's name, so every N, model and run sees the same points; the N points are the first N of
  one draw, so the hints for N = 10 include those for N = 5 and the curve measures adding hints, not
  changing them;
- each hint is a disc of radius ``HINT_RADIUS_PX`` pixels at the network's working size
  (``Hint.radius = HINT_RADIUS_PX / short side at working size``) carrying the mean Lab a/b of the
  ground truth over the same disc at full resolution: a small patch, as in Zhang et al., not a single
  pixel that noise or an edge could dominate;
- the picture is colorized with those hints (memory off) and scored against the truth: PSNR and ΔCF.

Near-grey ground truths are left out of the headline curve, as in :mod:`benchmarks.quality` (hints
cannot add colour that is not there), but kept in the per-picture rows and ``curve_all``.

    python -m benchmarks.hints_curve                                  # bsd100, shipped model
    python -m benchmarks.hints_curve --limit 2 --counts 0 5 --out-dir /tmp/h   # smoke run
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import zlib
from typing import Any

import numpy as np

from benchmarks import metrics
from benchmarks.common import (
    add_model_args,
    add_output_args,
    fail,
    image_session,
    run_and_write,
)
from benchmarks.metrics import F64, U8
from benchmarks.quality import EVAL_SETS, gray_input, is_near_gray, list_images, listed_near_gray, load_rgb

DEFAULT_COUNTS = (0, 1, 2, 5, 10, 20, 50, 100)
DEFAULT_SEED = 2017
HINT_RADIUS_PX = 2.5
"""Hint disc radius in pixels at the working size: about a 5x5 patch, the middle of the 1..9 px patch
sizes Zhang et al. sample, small enough that a hint never straddles much of an object boundary."""
TARGETS_DB: dict[int, float] = {10: 2.0, 100: 5.0}
"""Required PSNR gain over no hints: +2 dB with 10 hints, +5 dB with 100."""


def point_rng(seed: int, name: str) -> np.random.Generator:
    """A generator fixed by the seed and the picture's name (CRC32, not ``hash``, which Python salts per
    process), so a picture gets the same points whatever else is in the run."""
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


def sample_points(name: str, height: int, width: int, count: int, seed: int) -> list[tuple[int, int]]:
    """``count`` pixel positions ``(x, y)`` uniform over the picture; a prefix of a longer draw is the
    shorter draw."""
    # One (x, y) pair of doubles per point, drawn in order: the first k pairs do not depend on count.
    u = point_rng(seed, name).random((count, 2))
    xs = np.minimum((u[:, 0] * width).astype(np.int64), width - 1)
    ys = np.minimum((u[:, 1] * height).astype(np.int64), height - 1)
    return [(int(x), int(y)) for x, y in zip(xs, ys, strict=True)]


def patch_mean_ab(ab: F64, x: int, y: int, radius: float) -> tuple[float, float]:
    """Mean a/b of ``ab [H, W, 2]`` over the disc of ``radius`` pixels around ``(x, y)`` (at least the
    pixel itself)."""
    height, width = ab.shape[:2]
    r = max(radius, 0.5)
    x0, x1 = max(math.floor(x - r), 0), min(math.ceil(x + r) + 1, width)
    y0, y1 = max(math.floor(y - r), 0), min(math.ceil(y + r) + 1, height)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    disc = (xx - x) ** 2 + (yy - y) ** 2 <= r * r
    values = ab[y0:y1, x0:x1][disc]
    return float(values[:, 0].mean()), float(values[:, 1].mean())


def make_hints(truth: U8, points: list[tuple[int, int]], radius: float) -> list[Any]:
    """Hints at ``points`` (pixel positions of ``truth``) with the truth's mean colour over a disc of
    ``radius`` (relative to the short side, the :class:`Hint` convention)."""
    from chromastream.kernels.lab_numpy import rgb_to_lab
    from chromastream.models.colorizer.hints import AB_LIMIT, Hint

    height, width = truth.shape[:2]
    ab: F64 = np.asarray(rgb_to_lab(truth.astype(np.float64) / 255.0), dtype=np.float64)[..., 1:]
    radius_px = radius * min(height, width)
    hints = []
    for x, y in points:
        a, b = patch_mean_ab(ab, x, y, radius_px)
        hints.append(
            Hint(
                x=x / max(width - 1, 1),
                y=y / max(height - 1, 1),
                a=float(np.clip(a, -AB_LIMIT, AB_LIMIT)),
                b=float(np.clip(b, -AB_LIMIT, AB_LIMIT)),
                radius=radius,
            )
        )
    return hints


def hint_radius(height: int, width: int, size: int, multiple: int) -> float:
    """``Hint.radius`` that gives ``HINT_RADIUS_PX`` pixels at the working size of this picture."""
    from chromastream.models.runtime.session import working_shape

    return HINT_RADIUS_PX / min(working_shape(height, width, size, multiple))


def evaluate_image(session: Any, truth: U8, name: str, counts: list[int], seed: int) -> dict[str, Any]:
    """One picture colorized with each number of hints; PSNR, CF and ΔCF for each."""
    from chromastream.kernels.combine import lab_to_rgb_u8

    height, width = truth.shape[:2]
    radius = hint_radius(height, width, session.size, session.backend.info.size_multiple)
    all_hints = make_hints(truth, sample_points(name, height, width, max(counts), seed), radius)
    gray, lightness = gray_input(truth)
    cf_gt = metrics.colourfulness(truth)
    by_count: dict[str, dict[str, float]] = {}
    session.reset()
    try:
        for n in counts:
            session.set_hints(all_hints[:n])
            out = lab_to_rgb_u8(lightness, session.predict_ab(lightness))
            cf = metrics.colourfulness(out)
            by_count[str(n)] = {"psnr": metrics.psnr(out, truth), "cf": cf, "dcf": abs(cf - cf_gt)}
    finally:
        session.set_hints([])
    gray_rgb: U8 = np.repeat(gray[..., None], 3, axis=2)
    return {
        "name": name,
        "width": int(width),
        "height": int(height),
        "hint_radius": radius,
        "cf_gt": cf_gt,
        "gray_psnr": metrics.psnr(gray_rgb, truth),
        "by_count": by_count,
    }


def curve(rows: list[dict[str, Any]], counts: list[int]) -> list[dict[str, Any]]:
    """Mean PSNR per N and its gain over N = 0 (the mean of per-picture gains, which equals the
    difference of the means on the same pictures); ``None`` gain when N = 0 was not run."""
    out = []
    for n in counts:
        key = str(n)
        psnr = metrics.summarize(r["by_count"][key]["psnr"] for r in rows)
        gains = [r["by_count"][key]["psnr"] - r["by_count"]["0"]["psnr"] for r in rows] if 0 in counts else []
        out.append(
            {
                "n": n,
                "psnr": psnr,
                "gain_db": metrics.summarize(gains) if gains else None,
                "dcf": metrics.summarize(r["by_count"][key]["dcf"] for r in rows),
            }
        )
    return out


def verdicts(points: list[dict[str, Any]]) -> dict[str, bool | None]:
    """Each target met or not; ``None`` where its N (or N = 0) was not part of the run."""
    gains = {p["n"]: (p["gain_db"] or {}).get("mean") for p in points}
    result: dict[str, bool | None] = {}
    for n, target in TARGETS_DB.items():
        gain = gains.get(n)
        result[str(n)] = None if gain is None or not math.isfinite(gain) else bool(gain >= target)
    return result


def _fmt(x: Any, digits: int = 2) -> str:
    return "-" if not isinstance(x, int | float) or not math.isfinite(x) else f"{x:+.{digits}f}"


def print_summary(result: dict[str, Any]) -> None:
    print(
        f"\nhints curve  model {result['model']['version']}  size {result['size']}  "
        f"{result['n_images']} pictures (near-grey excluded)"
    )
    print(f"{'N':>5}{'PSNR':>9}{'gain':>9}{'ΔCF':>8}   target")
    for p in result["curve"]:
        target = TARGETS_DB.get(p["n"])
        print(
            f"{p['n']:>5}{p['psnr']['mean']:>9.2f}{_fmt((p['gain_db'] or {}).get('mean')):>9}"
            f"{p['dcf']['mean']:>8.1f}   {'' if target is None else f'≥ +{target:.1f} dB'}"
        )


def run(args: argparse.Namespace) -> dict[str, Any]:
    session, set_dirs, head = image_session(args, "hints_curve")
    result: dict[str, Any] = {
        **head,
        "seed": args.seed,
        "counts": args.counts,
        "hint_radius_px": HINT_RADIUS_PX,
        "definition": (
            "grey input = Lab L with a=b=0 (8-bit); N points uniform over the picture (seeded by --seed "
            "and the picture name; the N points are the first N of one draw); each hint a disc of "
            f"{HINT_RADIUS_PX} px radius at the working size with the ground truth's mean Lab a/b over "
            "that disc; memory off; PSNR on 8-bit RGB; dCF = |CF(out) - CF(gt)|; gain = PSNR(N) - "
            "PSNR(0) per picture, averaged"
        ),
        "targets_gain_db": {str(n): t for n, t in TARGETS_DB.items()},
        "sets": {},
    }
    started = time.perf_counter()
    all_rows: list[dict[str, Any]] = []
    for name in args.sets:
        set_dir = set_dirs[name]
        listed = listed_near_gray(set_dir)
        paths = list_images(set_dir)[: args.limit]
        rows: list[dict[str, Any]] = []
        skipped: list[dict[str, str]] = []
        for path in paths:
            try:
                truth = load_rgb(path)
            except ValueError as exc:
                skipped.append({"name": path.name, "reason": str(exc)})
                continue
            row = evaluate_image(session, truth, path.name, args.counts, args.seed)
            row["near_gray"] = path.name in listed or is_near_gray(truth)
            rows.append(row)
        colour = [r for r in rows if not r["near_gray"]]
        result["sets"][name] = {
            "n": len(colour),
            "curve": curve(colour, args.counts),
            "near_gray": [r["name"] for r in rows if r["near_gray"]],
            "skipped": skipped,
            "rows": rows,
        }
        all_rows.extend(rows)
        print(f"{name}: {len(rows)} pictures", flush=True)
    colour_rows = [r for r in all_rows if not r["near_gray"]]
    result["n_images"] = len(colour_rows)
    result["curve"] = curve(colour_rows, args.counts)
    result["curve_all"] = curve(all_rows, args.counts)
    result["gray_psnr"] = metrics.summarize(r["gray_psnr"] for r in colour_rows)
    result["pass"] = verdicts(result["curve"])
    result["seconds"] = time.perf_counter() - started
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.hints_curve",
        description=(
            "PSNR of the colorizer against the number of random hints revealed from the ground truth "
            "(Zhang et al. 2017 protocol). Writes hints_curve.json into the output folder."
        ),
    )
    parser.add_argument(
        "--sets", nargs="+", choices=EVAL_SETS, default=["bsd100"], help="evaluation sets (default: bsd100)"
    )
    parser.add_argument(
        "--limit", type=int, default=None, metavar="N", help="first N pictures per set (smoke runs)"
    )
    parser.add_argument(
        "--counts",
        type=int,
        nargs="+",
        default=list(DEFAULT_COUNTS),
        metavar="N",
        help=f"numbers of hints (default: {' '.join(map(str, DEFAULT_COUNTS))}); include 0 for the gains",
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"point seed (default: {DEFAULT_SEED})"
    )
    add_model_args(parser)
    add_output_args(parser, "hints_curve.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    from chromastream.models.colorizer.hints import MAX_HINTS
    from chromastream.models.runtime.session import MAX_SIZE, MIN_SIZE

    args = build_parser().parse_args(argv)
    args.counts = sorted(set(args.counts))
    if args.limit is not None and args.limit < 1:
        return fail("--limit must be at least 1")
    if args.counts[0] < 0 or args.counts[-1] > MAX_HINTS:
        return fail(f"--counts must lie in 0..{MAX_HINTS}")
    if not MIN_SIZE <= args.size <= MAX_SIZE:
        return fail(f"--size must be in {MIN_SIZE}..{MAX_SIZE}")
    return run_and_write("hints_curve", args.out_dir, lambda: run(args), print_summary)


if __name__ == "__main__":
    sys.exit(main())
