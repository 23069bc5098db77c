"""Image-quality benchmark (docs/ARCHITECTURE.md, Measures): colorize the evaluation photographs from their
grey version and compare with the colour originals, beside the trivial grey baseline measured on the same
pictures.

Each picture's grey input is made from its Lab L channel with a = b = 0 and stored as 8-bit grey, the
form a real grayscale source has; the model sees the L of exactly that grey picture, and its low-
resolution ab is combined with that full-resolution L (the production output path). The grey baseline
is that same grey picture as the output. PSNR alone rewards grey pictures, so CF and ΔCF are reported
beside it: a model that beats grey on PSNR but has ΔCF near CF(gt) has learnt to play safe.

Writes ``quality.json`` and one ``contact_<set>.png`` per set (grey | model | truth rows) for a person
to look at, because no number replaces seeing the colours.

    python -m benchmarks.quality                      # all four sets, shipped model
    python -m benchmarks.quality --sets set5 --limit 2 --out-dir /tmp/q   # smoke run
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks import metrics
from benchmarks.common import (
    add_model_args,
    add_output_args,
    fail,
    image_session,
    run_and_write,
)
from benchmarks.metrics import U8

EVAL_SETS = ("bsd100", "mcmaster18", "set14", "set5")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
MEASURES = ("psnr", "ssim", "cf", "dcf")
NEAR_GRAY_LEVEL = 2.0
"""Mean |R−G| and |B−G| below this (8-bit levels) marks a ground truth as near-grey; the same rule
as the data's GRAYSCALE_IMAGES.txt lists. Such pictures are left out of the headline ``summary``
(there is no colour to recover, and the grey baseline's PSNR on them hits the cap, which would swamp a
mean) but kept in ``summary_all`` and in the per-picture rows."""
SHEET_ROWS = 12
THUMB_HEIGHT = 160
LABEL_HEIGHT = 18


def _natural_key(path: Path) -> list[Any]:
    """``2.png`` before ``10.png``: sets numbered without leading zeros read in their own order."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def list_images(set_dir: Path) -> list[Path]:
    return sorted(
        (p for p in set_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=_natural_key,
    )


def listed_near_gray(set_dir: Path) -> set[str]:
    """Names a set's ``GRAYSCALE_IMAGES.txt`` lists (comments and blank lines ignored)."""
    path = set_dir / "GRAYSCALE_IMAGES.txt"
    if not path.is_file():
        return set()
    names = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return {n for n in names if n}


def is_near_gray(rgb: U8) -> bool:
    x = rgb.astype(np.int16)
    spread = max(float(np.abs(x[..., 0] - x[..., 1]).mean()), float(np.abs(x[..., 2] - x[..., 1]).mean()))
    return spread < NEAR_GRAY_LEVEL


def load_rgb(path: Path) -> U8:
    """8-bit RGB whatever the file holds: grey files are replicated to three channels, alpha dropped,
    16-bit scaled down (``IMREAD_COLOR`` does all three)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot decode {path}")
    rgb: U8 = np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)
    return rgb


def gray_input(rgb: U8) -> tuple[U8, np.ndarray]:
    """The grey picture (L channel, a = b = 0, 8-bit) and the exact Lab L of that grey picture."""
    from chromastream.kernels.lab_numpy import gray_u8_to_l_table, l_to_gray, rgb_to_lab

    lightness = rgb_to_lab(rgb.astype(np.float32) / 255.0)[..., 0]
    gray: U8 = np.clip(np.rint(l_to_gray(lightness) * 255.0), 0, 255).astype(np.uint8)
    return gray, gray_u8_to_l_table()[gray]


def _thumb(rgb: U8, height: int) -> U8:
    h, w = rgb.shape[:2]
    width = max(1, round(w * height / h))
    out: U8 = np.asarray(cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA), dtype=np.uint8)
    return out


def _label(img: U8, text: str, x: int, y: int) -> None:
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (20, 20, 20), 1, cv2.LINE_AA)


def contact_sheet(rows: list[tuple[str, U8, U8, U8, str]], title: str) -> U8:
    """Rows of grey | model | truth thumbnails with a caption line under each row."""
    gap = 6
    header = 24
    blocks = []
    for name, gray, out, truth, caption in rows:
        thumbs = [_thumb(im, THUMB_HEIGHT) for im in (gray, out, truth)]
        width = sum(t.shape[1] for t in thumbs) + gap * 2
        block = np.full((THUMB_HEIGHT + LABEL_HEIGHT, width, 3), 255, dtype=np.uint8)
        x = 0
        for t in thumbs:
            block[:THUMB_HEIGHT, x : x + t.shape[1]] = t
            x += t.shape[1] + gap
        _label(block, f"{name}  {caption}", 2, THUMB_HEIGHT + 13)
        blocks.append(block)
    width = max([b.shape[1] for b in blocks] + [480]) + 2 * gap
    height = header + sum(b.shape[0] + gap for b in blocks) + gap
    sheet = np.full((height, width, 3), 255, dtype=np.uint8)
    _label(sheet, f"{title}    columns: grey input | model | ground truth", gap, 16)
    y = header
    for b in blocks:
        sheet[y : y + b.shape[0], gap : gap + b.shape[1]] = b
        y += b.shape[0] + gap
    return sheet


def _sheet_indices(n: int, count: int = SHEET_ROWS) -> set[int]:
    """Evenly spread picks, so a sheet shows the whole set rather than its first few files."""
    if n <= count:
        return set(range(n))
    return {round(i * (n - 1) / (count - 1)) for i in range(count)}


def _summaries(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(rows)}
    for method in ("model", "gray"):
        out[method] = {m: metrics.summarize(r[method][m] for r in rows) for m in MEASURES}
    out["cf_gt"] = metrics.summarize(r["cf_gt"] for r in rows)
    return out


def evaluate_set(
    session: Any, set_dir: Path, limit: int | None, sheet_path: Path | None
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Per-picture rows for one set, and the pictures skipped with the reason."""
    from chromastream.kernels.combine import lab_to_rgb_u8

    listed = listed_near_gray(set_dir)
    paths = list_images(set_dir)
    if limit is not None:
        paths = paths[:limit]
    picks = _sheet_indices(len(paths))
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    sheet_rows: list[tuple[str, U8, U8, U8, str]] = []
    for i, path in enumerate(paths):
        try:
            truth = load_rgb(path)
            if min(truth.shape[:2]) < 16:
                raise ValueError(f"too small for SSIM's 11x11 window: {truth.shape[1]}x{truth.shape[0]}")
        except ValueError as exc:
            skipped.append({"name": path.name, "reason": str(exc)})
            continue
        gray, lightness = gray_input(truth)
        gray_rgb: U8 = np.repeat(gray[..., None], 3, axis=2)
        session.reset()
        start = time.perf_counter()
        ab = session.predict_ab(lightness)
        out = lab_to_rgb_u8(lightness, ab)
        seconds = time.perf_counter() - start
        cf_gt = metrics.colourfulness(truth)
        row: dict[str, Any] = {
            "name": path.name,
            "width": int(truth.shape[1]),
            "height": int(truth.shape[0]),
            "near_gray": path.name in listed or is_near_gray(truth),
            "cf_gt": cf_gt,
            "model": metrics.image_scores(out, truth, cf_gt),
            "gray": metrics.image_scores(gray_rgb, truth, cf_gt),
            "seconds": seconds,
        }
        rows.append(row)
        if i in picks:
            m, g = row["model"], row["gray"]
            caption = f"PSNR {m['psnr']:.2f} (grey {g['psnr']:.2f})  CF {m['cf']:.1f} / gt {cf_gt:.1f}"
            sheet_rows.append((path.stem, gray_rgb, out, truth, caption))
    if sheet_path is not None and sheet_rows:
        sheet = contact_sheet(sheet_rows, sheet_path.stem.removeprefix("contact_"))
        sheet_path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(sheet_path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    return rows, skipped


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def print_summary(result: dict[str, Any]) -> None:
    print(
        f"\nimage quality  model {result['model']['version']}  size {result['size']}"
        "  (means; near-grey pictures excluded)"
    )
    print(f"{'set':<11}{'n':>4}  {'method':<6}{'PSNR':>8}{'SSIM':>8}{'CF':>8}{'ΔCF':>8}   CF gt")
    for name, s in result["sets"].items():
        for method in ("model", "gray"):
            v = s["summary"][method]
            first = method == "model"
            print(
                f"{name if first else '':<11}{s['summary']['n'] if first else '':>4}  "
                f"{method:<6}{_fmt(v['psnr']['mean']):>8}{_fmt(v['ssim']['mean'], 4):>8}"
                f"{_fmt(v['cf']['mean'], 1):>8}{_fmt(v['dcf']['mean'], 1):>8}"
                + (f"   {_fmt(s['summary']['cf_gt']['mean'], 1)}" if first else "")
            )


def run(args: argparse.Namespace) -> dict[str, Any]:
    session, set_dirs, head = image_session(args, "quality")
    result: dict[str, Any] = {
        **head,
        "definition": (
            "grey input = Lab L with a=b=0 (8-bit); PSNR on 8-bit RGB; SSIM per RGB channel, mean "
            "(Gaussian 11x11, sigma 1.5); CF Hasler-Süsstrunk; dCF = |CF(out) - CF(gt)|; "
            "baseline 'gray' = the grey input as output"
        ),
        "sets": {},
    }
    started = time.perf_counter()
    all_rows: list[dict[str, Any]] = []
    for name in args.sets:
        sheet = args.out_dir / f"contact_{name}.png" if not args.no_sheets else None
        rows, skipped = evaluate_set(session, set_dirs[name], args.limit, sheet)
        all_rows.extend(rows)
        colour_rows = [r for r in rows if not r["near_gray"]]
        result["sets"][name] = {
            "summary": _summaries(colour_rows),
            "summary_all": _summaries(rows),
            "near_gray": [r["name"] for r in rows if r["near_gray"]],
            "skipped": skipped,
            "contact_sheet": sheet.name if sheet is not None and rows else None,
            "rows": rows,
        }
        print(f"{name}: {len(rows)} pictures" + (f", {len(skipped)} skipped" if skipped else ""), flush=True)
    result["all"] = _summaries([r for r in all_rows if not r["near_gray"]])
    result["all_including_near_gray"] = _summaries(all_rows)
    result["seconds"] = time.perf_counter() - started
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality",
        description=(
            "Image quality of the colorizer on the evaluation sets (PSNR, SSIM, colourfulness, ΔCF), "
            "beside the grey baseline measured on the same pictures. Writes quality.json and "
            "contact_<set>.png into the output folder."
        ),
    )
    parser.add_argument(
        "--sets", nargs="+", choices=EVAL_SETS, default=list(EVAL_SETS), help="evaluation sets"
    )
    parser.add_argument(
        "--limit", type=int, default=None, metavar="N", help="first N pictures per set (smoke runs)"
    )
    add_model_args(parser)
    add_output_args(parser, "quality.json and the contact sheets")
    parser.add_argument("--no-sheets", action="store_true", help="skip the contact-sheet PNGs")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.limit is not None and args.limit < 1:
        return fail("--limit must be at least 1")
    return run_and_write("quality", args.out_dir, lambda: run(args), print_summary)


if __name__ == "__main__":
    sys.exit(main())
