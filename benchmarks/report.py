"""Write ``benchmarks/RESULTS.md`` from the JSON files the benchmarks left in ``benchmarks/results``.

Every number in RESULTS.md comes from a recorded run, with the machine it ran on and the baseline,
limit or target measured beside it in the same run; nothing is typed in by hand, so the page cannot
drift from the measurements. Run it after any benchmark:

    python -m benchmarks.report
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from benchmarks.cluster import report_section as cluster_section
from benchmarks.common import DEFAULT_RESULTS_DIR, REPO_ROOT, fail, machine_line, num, safe_name
from benchmarks.deepfake import report_section as deepfake_section
from benchmarks.gpu_profile import NAME as GPU_PROFILE_NAMES
from benchmarks.gpu_profile import not_measured_section as gpu_profile_missing
from benchmarks.gpu_profile import report_section as gpu_profile_section
from benchmarks.precision import DEFAULT_NAME as PRECISION_NAME
from benchmarks.precision import report_section as precision_section
from benchmarks.serve_throughput import encode_cost_section as serve_encode_cost_section
from benchmarks.serve_throughput import report_section as serve_throughput_section
from benchmarks.throughput import report_section as throughput_section
from benchmarks.x264_settings import NAME as X264_NAME
from benchmarks.x264_settings import report_section as x264_section

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "RESULTS.md"
KNOWN = ("quality", "model_speed", "video_speed")
OPTIONAL = (
    "video_quality",
    "temporal_filter_sweep",
    "hints_curve",
    "live_latency",
    "live_soak",
    "serve_throughput",
    "serve_throughput_mps",
    "serve_throughput_cuda",
    "serve_throughput_cuda_mps",
    "serve_encode_cost",
    "cluster",
    PRECISION_NAME,
    "deepfake",
    X264_NAME,
)
"""Sections shown only when their JSON exists (no placeholder when absent)."""


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**PASS**" if ok else "**FAIL**")


def _stat(summary: dict[str, Any], key: str, digits: int) -> str:
    s = summary.get(key) or {}
    return f"{num(s.get('mean'), digits)} ({num(s.get('median'), digits)})"


def model_line(data: dict[str, Any]) -> str:
    model = data.get("model") or {}
    return (
        f"Model `{model.get('version', '?')}` (sha256 `{model.get('sha256', '?')}`, "
        f"{Path(str(model.get('path', '?'))).name}), backend {model.get('backend', '?')}; "
        f"run {data.get('date', '?')}."
    )


def _smoke_note(data: dict[str, Any]) -> list[str]:
    notes = []
    if data.get("quick"):
        notes.append("> Smoke run (`--quick`): too short for a final figure.")
    if data.get("limit"):
        notes.append(f"> Partial run (`--limit {data['limit']}` pictures per set): not a final figure.")
    return [*notes, ""] if notes else []


# ----------------------------------------------------------------------------------------------- sections


def quality_section(data: dict[str, Any], results_dir: Path, out: Path) -> list[str]:
    lines = ["## Image quality", "", model_line(data) + f" Working size {data.get('size', '?')}.", ""]
    lines += _smoke_note(data)
    lines += [
        "Grey input made from the Lab L channel (a = b = 0); output compared with the colour original. "
        "The grey baseline (output = grey input) is measured on the same pictures in the same run: "
        "PSNR alone rewards grey pictures, so read it beside CF and ΔCF = |CF(out) − CF(gt)| "
        "(lower is better). SSIM is the mean over the R, G and B channels. Mean (median); near-grey "
        "ground truths are left out of these rows and listed below.",
        "",
        "| set | n | method | PSNR dB ↑ | SSIM ↑ | CF | ΔCF ↓ | CF gt | model − grey |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    sets = dict(data.get("sets") or {})
    groups = [(name, s.get("summary") or {}) for name, s in sets.items()]
    if len(groups) > 1 and data.get("all"):
        groups.append(("**all**", data["all"]))
    for name, summary in groups:
        model, gray = summary.get("model") or {}, summary.get("gray") or {}
        dpsnr = (model.get("psnr") or {}).get("mean", math.nan) - (gray.get("psnr") or {}).get(
            "mean", math.nan
        )
        dcf_model = (model.get("dcf") or {}).get("mean", math.nan)
        dcf_gray = (gray.get("dcf") or {}).get("mean", math.nan)
        verdict = f"PSNR {'+' if dpsnr >= 0 else ''}{num(dpsnr)} dB, ΔCF {num(dcf_model - dcf_gray, 1)}"
        for method, vals in (("model", model), ("grey", gray)):
            first = method == "model"
            lines.append(
                f"| {name if first else ''} | {summary.get('n', '') if first else ''} | {method} | "
                f"{_stat(vals, 'psnr', 2)} | {_stat(vals, 'ssim', 4)} | {_stat(vals, 'cf', 1)} | "
                f"{_stat(vals, 'dcf', 1)} | {_stat(summary, 'cf_gt', 1) if first else ''} | "
                f"{verdict if first else ''} |"
            )
    lines.append("")
    notes = []
    for name, s in sets.items():
        if s.get("near_gray"):
            notes.append(
                f"- {name}: near-grey ground truth, left out of the means: {', '.join(s['near_gray'])}."
            )
        for skip in s.get("skipped") or []:
            notes.append(f"- {name}: skipped {skip.get('name')}: {skip.get('reason')}.")
    if notes:
        lines += [*notes, ""]
    sheets = [(name, s.get("contact_sheet")) for name, s in sets.items() if s.get("contact_sheet")]
    if sheets:
        links = []
        for name, sheet in sheets:
            path = results_dir / str(sheet)
            rel = Path(os.path.relpath(path, out.parent)).as_posix()
            links.append(f"[{name}]({rel})" + ("" if path.is_file() else " (file missing)"))
        lines += ["Contact sheets (grey | model | truth): " + ", ".join(links) + ".", ""]
    lines += [machine_line(data), ""]
    return lines


def _speed_history(results_dir: Path, current: dict[str, Any]) -> list[str]:
    """The headline of every model that has a ``model_speed_<version>.json``, the current one first."""
    cur_version = (current.get("model") or {}).get("version")
    entries = [current]
    for path in sorted(results_dir.glob("model_speed_*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        version = (data.get("model") or {}).get("version")
        if version and version != cur_version and path.stem == f"model_speed_{safe_name(version)}":
            entries.append(data)
    if len(entries) < 2:
        return []
    lines = [
        "Beside earlier models (each measured in its own run; compare the machine reference before the fps):",
        "",
        "| model | date | fps (256, b1) | p50 ms | matmul GFLOP/s | machine |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for i, data in enumerate(entries):
        head = data.get("headline") or {}
        ref = data.get("reference") or {}
        version = (data.get("model") or {}).get("version", "?")
        lines.append(
            f"| `{version}`{' (current)' if i == 0 else ''} | {data.get('date', '?')} | "
            f"{num(head.get('fps'), 1)} | {num(head.get('p50_ms'))} | "
            f"{num(ref.get('gflops_median'), 1)} | {(data.get('machine') or {}).get('cpu', '?')} |"
        )
    return [*lines, ""]


def model_speed_section(data: dict[str, Any], results_dir: Path) -> list[str]:
    target = data.get("target") or {}
    ref = data.get("reference") or {}
    head = data.get("headline") or {}
    threads = data.get("threads") or "all usable cores"
    lines = ["## Model speed", "", model_line(data) + f" Threads: {threads}.", ""]
    lines += _smoke_note(data)
    lines += [
        "Model only (no decode/encode): memory carried from frame to frame, hints set, rotating inputs, "
        "after warm-up. Batch-4 fps counts frames (4 per call); its latency is per call.",
        "",
        "| configuration | fps | p50 ms | p95 ms | p99 ms | timed calls |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in data.get("runs") or []:
        lat = r.get("latency_ms") or {}
        lines.append(
            f"| {r.get('name')} | {num(r.get('fps'), 1)} | {num(lat.get('p50'))} | "
            f"{num(lat.get('p95'))} | {num(lat.get('p99'))} | {r.get('iterations', '')} |"
        )
    lines += [
        "",
        "| check | measured | target / reference | result |",
        "| --- | ---: | ---: | --- |",
        f"| fps at {target.get('size', 256)}, batch 1 | {num(head.get('fps'), 1)} | "
        f"≥ {num(target.get('fps'), 0)} | {_mark(data.get('pass'))} |",
        f"| machine reference: {ref.get('what', 'matmul')} | {num(ref.get('gflops_median'), 1)} GFLOP/s | "
        f"best {num(ref.get('gflops_best'), 1)} GFLOP/s | – |",
        "",
    ]
    lines += _speed_history(results_dir, data)
    lines += [machine_line(data), ""]
    return lines


def video_speed_section(data: dict[str, Any]) -> list[str]:
    targets = data.get("targets") or {}
    lines = ["## Video speed (end to end)", "", model_line(data), ""]
    lines += _smoke_note(data)
    lines += [
        f"`{data.get('command', 'chromastream colorize IN OUT --quiet')}` on synthetic grey H.264 clips "
        "with AAC audio, wall clock including start-up and model loading. The limit on the same clip in "
        f"the same run: {data.get('limit_definition', 'decode + encode, no model')}. Peak memory is the "
        "process tree's peak resident set. Steady fps leaves out the start-up time, measured on a "
        "one-frame clip of the same size; the targets are judged on the wall-clock fps.",
        "",
        "| clip | frames | colorize fps | steady fps | start-up s | limit fps | colorize / limit "
        "| colorize peak MB | limit peak MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    failures = []
    for clip in data.get("clips") or []:
        col, lim = clip.get("colorize"), clip.get("limit") or {}
        col_fps = col.get("fps") if col and col.get("ok") else None
        lim_fps = lim.get("fps") if lim.get("ok") else None
        ratio = col_fps / lim_fps if col_fps and lim_fps else None
        col_text = "skipped" if col is None else ("failed" if not col.get("ok") else num(col_fps, 1))
        lines.append(
            f"| {clip.get('name')} @ {clip.get('fps')} fps | {clip.get('frames')} | {col_text} | "
            f"{num((col or {}).get('fps_steady'), 1)} | {num((col or {}).get('startup_s'))} | "
            f"{num(lim_fps, 1) if lim.get('ok') else 'failed'} | {num(ratio)} | "
            f"{num(col.get('peak_rss_mb'), 0) if col else '–'} | {num(lim.get('peak_rss_mb'), 0)} |"
        )
        for what, r in (("colorize", col), ("limit", lim)):
            if r and not r.get("ok"):
                failures.append(f"- {clip.get('name')} {what} failed: {r.get('error', 'unknown error')}.")
    verdict = data.get("pass") or {}
    fps_clip = targets.get("fps_clip", "640x480")
    clip_fps = next(
        ((c.get("colorize") or {}).get("fps") for c in data.get("clips") or [] if c.get("name") == fps_clip),
        None,
    )
    peaks = [(c.get("colorize") or {}).get("peak_rss_mb") for c in data.get("clips") or []]
    peak = max((p for p in peaks if isinstance(p, int | float)), default=None)
    lines += [
        "",
        "| check | measured | target | result |",
        "| --- | ---: | ---: | --- |",
        f"| colorize fps at {fps_clip} | {num(clip_fps, 1)} | ≥ {num(targets.get('fps'), 0)} | "
        f"{_mark(verdict.get('fps'))} |",
        f"| peak memory, any clip | {num(peak, 0)} MB | ≤ {num(targets.get('peak_rss_mb'), 0)} MB | "
        f"{_mark(verdict.get('memory'))} |",
        "",
    ]
    if failures:
        lines += [*failures, ""]
    lines += [machine_line(data), ""]
    return lines


def _link(results_dir: Path, out: Path, name: str, label: str) -> str:
    path = results_dir / name
    rel = Path(os.path.relpath(path, out.parent)).as_posix()
    return f"[{label}]({rel})" + ("" if path.is_file() else " (file missing)")


VIDEO_MODES = (("memory", "memory"), ("per_frame", "per-frame"), ("gray", "grey"))


def _ratio_cell(compare: dict[str, Any]) -> str:
    return (
        f"flicker ×{num(compare.get('flicker_ratio'))}, warp ×{num(compare.get('warp_ratio'))}, "
        f"CDC ×{num(compare.get('cdc_ratio'), 3)}, PSNR {_signed(compare.get('psnr_diff_db'))} dB"
    )


def _signed(x: Any, digits: int = 2) -> str:
    """A difference with its sign always shown; a value that rounds to zero reads ``+0.00``, not
    ``-0.00``."""
    text = num(x, digits)
    if text == "–":
        return text
    if float(text) == 0.0:
        text = text.lstrip("-")
    return text if text.startswith("-") else "+" + text


def temporal_sweep_section(data: dict[str, Any]) -> list[str]:
    """How the temporal filter's constants were chosen (training sequences only)."""
    chosen = data.get("chosen") or {}
    lines = [
        "## Temporal filter constants",
        "",
        f"Memory mode on DAVIS training sequences {', '.join(data.get('sequences') or [])} (first "
        f"{data.get('max_frames')} frames each), run {data.get('date')}. Rule: {data.get('rule')}. "
        f"Chosen: strength {chosen.get('strength')}, sigma {chosen.get('sigma')}.",
        "",
        "| strength | sigma | PSNR | ΔCF | flicker | warp | flicker / per-frame | warp / per-frame |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in data.get("rows") or []:
        lines.append(
            f"| {num(r.get('strength'))} | {num(r.get('sigma'), 1)} | {num(r.get('psnr'))} | "
            f"{num(r.get('dcf'), 1)} | {num(r.get('flicker'), 3)} | {num(r.get('warp'), 3)} | "
            f"{num(r.get('flicker_ratio'), 3)} | {num(r.get('warp_ratio'), 3)} |"
        )
    return [*lines, ""]


def video_quality_section(data: dict[str, Any], results_dir: Path, out: Path) -> list[str]:
    seqs = dict(data.get("sequences") or {})
    mean = data.get("mean") or {}
    targets = data.get("targets") or {}
    lines = [
        "## Video quality (held-out DAVIS)",
        "",
        model_line(data)
        + f" Working size {data.get('size', '?')}; sequences: "
        + (", ".join(seqs) or "none")
        + f" ({mean.get('frames', '?')} frames).",
        "",
    ]
    lines += _smoke_note(data)
    if data.get("max_frames"):
        lines += [
            f"> Partial run (`--max-frames {data['max_frames']}` per sequence): not a final figure.",
            "",
        ]
    lines += [
        "Each sequence made grey (Lab L, a = b = 0) and colorized in order three ways in the same run: "
        "**memory** (one session, memory on, reset at the start of the sequence), **per-frame** (memory "
        "off) and the **grey** baseline (output = grey input; steady by construction, so the memory is "
        "judged against per-frame). PSNR, SSIM, CF and ΔCF are frame means; CDC is the mean JS "
        "divergence of RGB histograms of frames t and t+k; warp error is the mean |Δab| between output "
        "t and output t+1 warped by DIS flow of the ground truth (occlusions removed by a "
        "forward-backward check); flicker is the mean |Δab| between consecutive outputs where the "
        "truth's ab changes by < 1. The truth column gives the ground truth's own figures for scale: an "
        "output much steadier than the truth is usually a muted one (see ΔCF). Means over sequences, "
        "each sequence counted once.",
        "",
        "| measure | memory | per-frame | grey | truth |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    modes = mean.get("modes") or {}
    truth = mean.get("truth") or {}

    def cdc(v: dict[str, Any], k: str) -> Any:
        return (v.get("cdc") or {}).get(k)

    rows: list[tuple[str, Any, int, Any]] = [
        ("PSNR dB ↑", lambda v: v.get("psnr"), 2, None),
        ("SSIM ↑", lambda v: v.get("ssim"), 4, None),
        ("CF", lambda v: v.get("cf"), 1, truth.get("cf")),
        ("ΔCF ↓", lambda v: v.get("dcf"), 1, None),
        ("CDC k=1 ↓", lambda v: cdc(v, "k1"), 5, cdc(truth, "k1")),
        ("CDC k=2 ↓", lambda v: cdc(v, "k2"), 5, cdc(truth, "k2")),
        ("CDC k=4 ↓", lambda v: cdc(v, "k4"), 5, cdc(truth, "k4")),
        ("CDC mean ↓", lambda v: cdc(v, "mean"), 5, cdc(truth, "mean")),
        ("warp error ↓", lambda v: v.get("warp"), 3, truth.get("warp")),
        ("flicker ↓", lambda v: v.get("flicker"), 3, None),
    ]
    for label, get, digits, ref in rows:
        cells = [num(get(modes.get(mode) or {}), digits) for mode, _ in VIDEO_MODES]
        lines.append(f"| {label} | {' | '.join(cells)} | {num(ref, digits)} |")
    compare = mean.get("compare") or {}
    verdict = compare.get("pass") or {}
    lines += [
        "",
        "| check (memory vs per-frame) | measured | target | result |",
        "| --- | ---: | ---: | --- |",
        f"| flicker, memory / per-frame | {num(compare.get('flicker_ratio'))} | "
        f"≤ {num(targets.get('flicker_ratio_max'))} | {_mark(verdict.get('flicker'))} |",
        f"| warp error, memory / per-frame | {num(compare.get('warp_ratio'))} | "
        f"≤ {num(targets.get('warp_ratio_max'))} | {_mark(verdict.get('warp'))} |",
        f"| CDC (mean over k), memory / per-frame | {num(compare.get('cdc_ratio'), 3)} | "
        f"≤ {num(targets.get('cdc_ratio_max'))} (lower) | {_mark(verdict.get('cdc'))} |",
        f"| PSNR, memory − per-frame | {_signed(compare.get('psnr_diff_db'))} dB | "
        f"≥ −{num(targets.get('psnr_drop_max_db'))} dB | {_mark(verdict.get('psnr'))} |",
        "",
        "Per sequence:",
        "",
        "| sequence | frames | mode | PSNR dB ↑ | SSIM ↑ | ΔCF ↓ | CDC ↓ | warp ↓ | flicker ↓ "
        "| memory vs per-frame |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, seq in seqs.items():
        seq_modes = seq.get("modes") or {}
        for i, (mode, label) in enumerate(VIDEO_MODES):
            v = seq_modes.get(mode) or {}
            first = i == 0
            lines.append(
                f"| {name if first else ''} | {seq.get('frames', '') if first else ''} | {label} | "
                f"{num(v.get('psnr'))} | {num(v.get('ssim'), 4)} | {num(v.get('dcf'), 1)} | "
                f"{num(cdc(v, 'mean'), 5)} | {num(v.get('warp'), 3)} | {num(v.get('flicker'), 3)} | "
                f"{_ratio_cell(seq.get('compare') or {}) if first else ''} |"
            )
    lines.append("")
    strips = [(name, seq.get("strip")) for name, seq in seqs.items() if seq.get("strip")]
    if strips:
        links = [_link(results_dir, out, str(strip), name) for name, strip in strips]
        lines += ["Frame strips (rows grey | per-frame | memory | truth): " + ", ".join(links) + ".", ""]
    lines += [machine_line(data), ""]
    return lines


def hints_section(data: dict[str, Any]) -> list[str]:
    sets = dict(data.get("sets") or {})
    targets = data.get("targets_gain_db") or {}
    verdict = data.get("pass") or {}
    lines = [
        "## Hints (PSNR against the number of hints)",
        "",
        model_line(data) + f" Working size {data.get('size', '?')}; set(s): {', '.join(sets) or 'none'} "
        f"({data.get('n_images', '?')} pictures); seed {data.get('seed', '?')}.",
        "",
    ]
    lines += _smoke_note(data)
    lines += [
        "The protocol of Zhang et al. (2017): N points drawn uniformly over the picture (the same points "
        "for a picture and N in every run; the N points are the first N of one draw, so hints are only "
        "ever added), each revealed as a hint disc of "
        f"{num(data.get('hint_radius_px'), 1)} px radius at the working size carrying the ground "
        "truth's mean Lab a/b over that disc; grey input from the Lab L channel; memory off. Gain is "
        "the mean per-picture PSNR difference against no hints. Near-grey ground truths are left out.",
        "",
        "| hints N | PSNR dB ↑ mean (median) | gain over N = 0 dB | ΔCF ↓ | target gain | result |",
        "| ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for point in data.get("curve") or []:
        n = point.get("n")
        target = targets.get(str(n))
        gain = (point.get("gain_db") or {}).get("mean")
        dcf = (point.get("dcf") or {}).get("mean")
        lines.append(
            f"| {n} | {_stat(point, 'psnr', 2)} | {_signed(gain)} | {num(dcf, 1)} | "
            f"{'≥ +' + num(target, 1) if target is not None else ''} | "
            f"{_mark(verdict.get(str(n))) if target is not None else ''} |"
        )
    gray = (data.get("gray_psnr") or {}).get("mean")
    lines += ["", f"Grey baseline (output = grey input) on the same pictures: PSNR {num(gray)} dB.", ""]
    missing = [n for n in targets if n not in {str(p.get("n")) for p in data.get("curve") or []}]
    if missing:
        lines += [f"Targets not measured in this run (N not in `--counts`): {', '.join(missing)}.", ""]
    notes = []
    for name, s in sets.items():
        if s.get("near_gray"):
            notes.append(f"- {name}: near-grey ground truth, left out: {', '.join(s['near_gray'])}.")
        for skip in s.get("skipped") or []:
            notes.append(f"- {name}: skipped {skip.get('name')}: {skip.get('reason')}.")
    if notes:
        lines += [*notes, ""]
    lines += [machine_line(data), ""]
    return lines


# ----------------------------------------------------------------------------------------------- the page


def _on_face_clip(row: dict[str, Any]) -> bool:
    return str(row.get("source", "")).startswith("face")


def _run_name(row: dict[str, Any]) -> str:
    return f"{row.get('mode')}{' (face clip)' if _on_face_clip(row) else ''}"


def live_latency_section(data: dict[str, Any]) -> list[str]:
    """Live streams through the server: the model beside the no-model limit, per stream count."""
    targets = data.get("targets") or {}
    src = data.get("source") or {}
    lines = ["## Live latency (serve, WebRTC)", "", model_line(data), ""]
    lines += _smoke_note(data)
    lines += [
        f"{src.get('width', '?')}x{src.get('height', '?')} at {num(src.get('fps'), 0)} fps per stream "
        f"({src.get('kind', '?')} source), working size {data.get('size', '?')}, {data.get('codec', '?')}. "
        f"Latency: {data.get('latency_definition', '?')}. The limit in the same run: "
        f"{data.get('limit_definition', 'no model')}. CPU is the server process's CPU time over wall time "
        "(100 % = one core); CPU-bound means at least 85 % of every usable core was busy. Memory is the "
        "server process's resident set, the highest sampled in the row.",
        "",
        "| run | streams | fps in | fps out | drops | p50 ms | p95 ms | p99 ms | CPU % | CPU-bound "
        "| RSS MB | real time |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for row in data.get("rows") or []:
        lat = row.get("latency_ms") or {}
        lines.append(
            f"| {_run_name(row)} | {row.get('streams')} | {num(row.get('fps_in_min'), 1)} | "
            f"{num(row.get('fps_out_min'), 1)} | {row.get('drops', '–')} | {num(lat.get('p50'), 0)} | "
            f"{num(lat.get('p95'), 0)} | {num(lat.get('p99'), 0)} | {num(row.get('cpu_percent'), 0)} | "
            f"{'yes' if row.get('cpu_bound') else 'no'} | {num(row.get('rss_mb_max'), 0)} | "
            f"{'yes' if row.get('realtime') else 'no'} |"
        )
    rows = data.get("rows") or []
    stages = ("queue", "preprocess", "batch_wait", "inference", "postprocess")
    if any(r.get("stage_mean_ms") for r in rows):
        lines += [
            "",
            "Mean time per pipeline stage (ms, from the pipeline's own histograms); the encode is the rest "
            "of the end-to-end figure.",
            "",
            "| run | streams | " + " | ".join(stages) + " |",
            "| --- | ---: | " + " | ".join("---:" for _ in stages) + " |",
        ]
        for row in rows:
            means = row.get("stage_mean_ms") or {}
            cells = " | ".join(num(means.get(s), 1) for s in stages)
            lines.append(f"| {_run_name(row)} | {row.get('streams')} | {cells} |")

    def pattern(r: dict[str, Any], n: int) -> bool:
        return r.get("mode") == "model" and r.get("streams") == n and not _on_face_clip(r)

    one: dict[str, Any] = next((r for r in rows if pattern(r, 1)), {})
    four: dict[str, Any] = next((r for r in rows if pattern(r, 4)), {})
    verdict = data.get("pass") or {}
    cost = data.get("detector_cost") or {}
    lines += [
        "",
        "fps in/out are the slowest stream's; drops are summed over streams.",
        "",
        "| check | measured | target | result |",
        "| --- | ---: | ---: | --- |",
        f"| one stream real time | {num(one.get('fps_out_min'), 1)} fps out | "
        f"≥ {num((targets.get('realtime_fps_ratio') or 0) * 100, 0)} % of "
        f"{num(src.get('fps'), 0)} fps, ≤ {num((targets.get('realtime_max_drop_ratio') or 0) * 100, 0)} "
        f"% dropped | {_mark(verdict.get('realtime_1'))} |",
        f"| one stream p95 | {num((one.get('latency_ms') or {}).get('p95'), 0)} ms | "
        f"≤ {num(targets.get('p95_ms'), 0)} ms | {_mark(verdict.get('p95_1'))} |",
        f"| resident memory, 4 streams | {num(four.get('rss_mb_max'), 0)} MB | "
        f"≤ {num(targets.get('rss_mb_4_streams'), 0)} MB | {_mark(verdict.get('memory_4'))} |",
    ]
    if cost:
        lines.append(
            f"| colorization throughput with the deepfake sampler (face clip) | "
            f"{num(cost.get('fps_out_with'), 1)} vs {num(cost.get('fps_out_without'), 1)} fps "
            f"(drop {num(100 * cost.get('throughput_drop', math.nan), 1)} %; CPU per frame "
            f"{num(cost.get('cpu_ms_per_frame_with'), 1)} vs "
            f"{num(cost.get('cpu_ms_per_frame_without'), 1)} ms) | "
            f"drop ≤ {num(100 * (targets.get('detector_throughput_drop') or math.nan), 0)} % | "
            f"{_mark(verdict.get('detector_drop'))} |"
        )
    lines += [
        "",
        machine_line(data),
        "",
    ]
    return lines


def _at_most(value: Any, limit: Any) -> bool | None:
    if not isinstance(value, int | float) or not isinstance(limit, int | float):
        return None
    return bool(value <= limit)


def live_soak_section(data: dict[str, Any]) -> list[str]:
    """One live stream held for minutes: latency and memory must stay flat."""
    targets = data.get("targets") or {}
    lines = ["## Live soak", "", model_line(data), ""]
    lines += _smoke_note(data)
    points = data.get("points") or []
    p95, p95_max = data.get("p95_slope_ms_per_min"), targets.get("soak_p95_slope_ms_per_min")
    rss, rss_max = data.get("rss_slope_mb_per_min"), targets.get("soak_rss_slope_mb_per_min")
    lines += [
        f"One stream with one WHEP viewer for {num(data.get('minutes'), 1)} minutes; p95 latency of each "
        f"{num(data.get('interval_s'), 0)} s interval and the resident memory at its end, with the "
        "least-squares slope per minute.",
        "",
        "| minute | p95 ms | RSS MB |",
        "| ---: | ---: | ---: |",
        *[
            f"| {num(p.get('t_min'), 1)} | {num(p.get('p95_ms'), 0)} | {num(p.get('rss_mb'), 0)} |"
            for p in points
        ],
        "",
        "| check | measured | target | result |",
        "| --- | ---: | ---: | --- |",
        f"| p95 slope | {num(p95)} ms/min | ≤ {num(p95_max)} ms/min | {_mark(_at_most(p95, p95_max))} |",
        f"| RSS slope (growth {num(data.get('rss_growth_mb'), 0)} MB) | {num(rss)} MB/min | "
        f"≤ {num(rss_max)} MB/min | {_mark(_at_most(rss, rss_max))} |",
        f"| flat (both slopes within target) | | | {_mark(data.get('flat'))} |",
        "",
        machine_line(data),
        "",
    ]
    return lines


def load_results(results_dir: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``{stem: data}`` for every readable JSON file, and a note for each one that is not."""
    found: dict[str, dict[str, Any]] = {}
    problems = []
    for path in sorted(results_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            problems.append(f"- `{path.name}` could not be read: {exc}")
            continue
        if isinstance(data, dict):
            found[path.stem] = data
        else:
            problems.append(f"- `{path.name}` is not a JSON object")
    return found, problems


def mps_section(plain: dict[str, Any], mps: dict[str, Any], base: str = "serve_throughput_cuda") -> list[str]:
    """RESULTS.md: the serve rows without and with CUDA MPS side by side (two runs of
    ``benchmarks.serve_throughput``, the second with ``--mps``)."""

    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        return (
            row.get("resolution"),
            row.get("streams"),
            row.get("mode"),
            row.get("workers"),
            row.get("viewers"),
        )

    without = {key(r): r for r in plain.get("rows") or []}
    pairs = [(without[key(r)], r) for r in mps.get("rows") or [] if key(r) in without]
    if not pairs:
        return []
    same = (plain.get("machine") or {}).get("cpu") == (mps.get("machine") or {}).get("cpu")
    lines = [
        "## Serve on one GPU without and with CUDA MPS",
        "",
        f"`{base}.json` (run {plain.get('date', '?')}) beside `{base}_mps.json` (run "
        f"{mps.get('date', '?')}, `--mps`), rows of the same streams, run and workers; MPS servers: the "
        "server processes the MPS control daemon listed while the row's server was up (0: the workers did "
        "not use MPS). docs/GPU.md says what MPS changes.",
        "",
    ]
    if not same:
        lines += ["> The two files come from different machines: the ratio below compares nothing.", ""]
    lines += [
        "| resolution | streams | run | workers | fps total | with MPS | ratio | p95 ms | with MPS "
        "| MPS servers |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for a, b in pairs:
        fa, fb = a.get("fps_total"), b.get("fps_total")
        ratio = fb / fa if isinstance(fa, int | float) and isinstance(fb, int | float) and fa else None
        lines.append(
            f"| {b.get('resolution')} | {b.get('streams')} | {b.get('mode')} | {b.get('workers')} | "
            f"{num(fa, 1)} | {num(fb, 1)} | {'x' + num(ratio) if ratio is not None else '–'} | "
            f"{num((a.get('latency_ms') or {}).get('p95'), 0)} | "
            f"{num((b.get('latency_ms') or {}).get('p95'), 0)} | "
            f"{len(b.get('mps_servers') or [])} |"
        )
    return [*lines, ""]


def gpu_sections(results: dict[str, dict[str, Any]]) -> list[str]:
    """The GPU profile (or where to get it) and the MPS comparison when both serve runs exist."""
    name = GPU_PROFILE_NAMES["cuda"]
    lines: list[str] = []
    try:
        lines += gpu_profile_section(results[name]) if name in results else gpu_profile_missing()
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        lines += [f"## {name}", "", f"`{name}.json` has an unexpected layout ({exc!r}).", ""]
    for base in ("serve_throughput_cuda", "serve_throughput"):
        if base not in results or f"{base}_mps" not in results:
            continue
        try:
            lines += mps_section(results[base], results[f"{base}_mps"], base)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            lines += [
                "## Serve with CUDA MPS",
                "",
                f"The serve files have an unexpected layout ({exc!r}).",
                "",
            ]
        break
    return lines


def render(results_dir: Path, out: Path) -> str:
    results, problems = load_results(results_dir)
    rel_results = Path(os.path.relpath(results_dir, out.parent)).as_posix()
    lines = [
        "# Benchmark results",
        "",
        "<!-- Generated file: do not edit. Regenerate: python -m benchmarks.report (or make results). -->",
        f"_Generated by `python -m benchmarks.report` from the JSON files in `{rel_results}/`; edits by "
        "hand are lost. Run the benchmarks with `make bench`._",
        "",
    ]
    sections = {
        "quality": lambda d: quality_section(d, results_dir, out),
        "model_speed": lambda d: model_speed_section(d, results_dir),
        "video_speed": video_speed_section,
    }
    for name in KNOWN:
        if name in results:
            try:
                lines += sections[name](results[name])
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                lines += [f"## {name}", "", f"`{name}.json` has an unexpected layout ({exc!r}).", ""]
        else:
            lines += [
                f"## {name.replace('_', ' ').capitalize()}",
                "",
                f"No `{name}.json` yet: run `python -m benchmarks.{name}`.",
                "",
            ]
    optional = {
        "video_quality": lambda d: video_quality_section(d, results_dir, out),
        "temporal_filter_sweep": temporal_sweep_section,
        "hints_curve": hints_section,
        "live_latency": live_latency_section,
        "live_soak": live_soak_section,
        "serve_throughput": serve_throughput_section,
        "serve_throughput_mps": serve_throughput_section,
        "serve_throughput_cuda": serve_throughput_section,
        "serve_throughput_cuda_mps": serve_throughput_section,
        "serve_encode_cost": serve_encode_cost_section,
        "cluster": cluster_section,
        PRECISION_NAME: precision_section,
        "deepfake": deepfake_section,
        X264_NAME: x264_section,
    }
    for name in OPTIONAL:
        if name in results:
            try:
                lines += optional[name](results[name])
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                lines += [f"## {name}", "", f"`{name}.json` has an unexpected layout ({exc!r}).", ""]
    for name in sorted(s for s in results if s.startswith("throughput_")):
        try:
            lines += throughput_section(results[name])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            lines += [f"## {name}", "", f"`{name}.json` has an unexpected layout ({exc!r}).", ""]
    lines += gpu_sections(results)
    extra = [
        s
        for s in results
        if s not in KNOWN
        and s not in OPTIONAL
        and s != GPU_PROFILE_NAMES["cuda"]
        and not s.startswith(("model_speed_", "throughput_"))
    ]
    if extra:
        lines += ["## Other result files", "", *[f"- `{s}.json`" for s in extra], ""]
    if problems:
        lines += ["## Unreadable result files", "", *problems, ""]
    return "\n".join(lines).rstrip() + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report",
        description="Generate RESULTS.md from the benchmark JSON files (never edit the numbers by hand).",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=DEFAULT_RESULTS_DIR,
        help=f"folder of *.json results (default: {DEFAULT_RESULTS_DIR})",
    )
    parser.add_argument("--out", type=Path, default=None, help=f"file to write (default: {DEFAULT_OUT})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out: Path = args.out or DEFAULT_OUT
    if not args.results_dir.is_dir() or not any(args.results_dir.glob("*.json")):
        return fail(f"no benchmark results in {args.results_dir}: run the benchmarks first (make bench)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(args.results_dir, out), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
