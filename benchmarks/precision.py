"""Reduced-precision colorizers against the float model, back to back in one run on the same inputs.

Each model goes through the existing benchmarks, called one after the other in this process:
``benchmarks.quality`` (bsd100: PSNR, SSIM, CF, ΔCF), ``benchmarks.video_quality`` (the held-out DAVIS
sequences with memory: flicker, warp error, CDC) and the timed calls of ``benchmarks.model_speed`` (one
stream's frame through a session, memory carried and hints set) at serve's working shape for a 640x480
camera (192x256) and at model_speed's 256x256 headline. The speed rounds alternate between the models,
so a neighbour's load on a shared machine falls on all of them alike; the load average is recorded at the
start and the end. ``--live-streams`` adds ``benchmarks.live_latency`` rows (live 640x480 at 25 fps
through the real pipeline, server and a WHEP viewer) per model.

The first model is the reference. Another one is acceptable when its bsd100 mean PSNR is at most 0.2 dB
below the reference's and its mean ΔCF at most 1.0 above (:data:`TOLERANCES`); it is faster when its
median call at serve's shape is shorter.

    python -m benchmarks.precision                 # shipped float vs shipped INT8 -> int8_vs_fp32.json
    python -m benchmarks.precision --models a.onnx b.onnx --live-streams 1 2
    python -m benchmarks.precision --quick --out-dir /tmp/p     # smoke run
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    DEFAULT_RESULTS_DIR,
    BenchmarkError,
    fail,
    load_average,
    machine_line,
    machine_tags,
    model_tags,
    now_iso,
    num,
    percentiles_ms,
    require_model_file,
    run_and_write,
    shared_root,
)

DEFAULT_NAME = "int8_vs_fp32"
SERVE_SHAPE = (192, 256)
"""Serve's working shape for a 640x480 camera (``PipelineConfig.size`` 192)."""
TOLERANCES = {"psnr_drop_db": 0.2, "dcf_rise": 1.0}
QUALITY_SET = "bsd100"
LIVE_P95_MS = 150.0


def _label(path: Path, labels: list[str]) -> str:
    """A short unique label for a model file: its stem."""
    label = path.stem
    n = 2
    while label in labels:
        label, n = f"{path.stem}-{n}", n + 1
    return label


def _quality(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks import quality

    argv = ["--sets", QUALITY_SET, "--model", str(path), "--backend", args.backend, "--no-sheets"]
    argv += ["--shared", str(args.shared), "--out-dir", str(args.out_dir)]
    if args.quick:
        argv += ["--limit", "4"]
    data = quality.run(quality.build_parser().parse_args(argv))
    summary = data["sets"][QUALITY_SET]["summary"]
    return {
        "size": data["size"],
        "n": summary["n"],
        **{m: summary["model"][m]["mean"] for m in quality.MEASURES},
        "cf_gt": summary["cf_gt"]["mean"],
        "seconds": data["seconds"],
    }


def _video(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks import video_quality

    argv = ["--model", str(path), "--backend", args.backend, "--strips", "0"]
    argv += ["--shared", str(args.shared), "--out-dir", str(args.out_dir)]
    if args.quick:
        argv += ["--sequences", video_quality.default_sequences()[0], "--max-frames", "4"]
    parsed = video_quality.build_parser().parse_args(argv)
    parsed.sequences = parsed.sequences or video_quality.default_sequences()
    data = video_quality.run(parsed)
    memory = data["mean"]["modes"]["memory"]
    return {
        "size": data["size"],
        "sequences": list(data["sequences"]),
        "frames": data["mean"]["frames"],
        "psnr": memory["psnr"],
        "dcf": memory["dcf"],
        "flicker": memory["flicker"],
        "warp": memory["warp"],
        "cdc": (memory.get("cdc") or {}).get("mean"),
        "flicker_ratio_vs_per_frame": data["mean"]["compare"]["flicker_ratio"],
        "seconds": data["seconds"],
    }


def _speed(paths: list[Path], labels: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Median and tails of a session's call per model, in alternating rounds (module docstring)."""
    from benchmarks import model_speed
    from benchmarks.common import synthetic_l, time_calls
    from chromastream.models.colorizer.hints import parse_hints
    from chromastream.models.runtime.registry import create_backend
    from chromastream.models.runtime.session import ColorizerSession

    shapes = {"serve 192x256": SERVE_SHAPE, "256x256": (256, 256)}
    samples: dict[str, dict[str, list[float]]] = {label: {s: [] for s in shapes} for label in labels}
    sessions: dict[str, dict[str, tuple[ColorizerSession, list[np.ndarray]]]] = {}
    for path, label in zip(paths, labels, strict=True):
        backend = create_backend(args.backend, path)
        sessions[label] = {}
        for name, (height, width) in shapes.items():
            session = ColorizerSession(backend, size=min(height, width), memory=True)
            session.set_hints(parse_hints(list(model_speed.HINTS)))
            sessions[label][name] = (session, synthetic_l(model_speed.N_INPUTS, height, width))
    rounds = 1 if args.quick else args.rounds
    seconds = 0.5 if args.quick else args.seconds / rounds
    for _ in range(rounds):
        for label in labels:
            for name in shapes:
                session, frames = sessions[label][name]

                def call(i: int, session: ColorizerSession = session, frames: list[Any] = frames) -> None:
                    session.predict_ab(frames[i % len(frames)])

                samples[label][name] += time_calls(call, 2 if args.quick else 10, None, seconds)
    return {
        label: {
            name: {"iterations": len(s), "fps": len(s) / sum(s), "latency_ms": percentiles_ms(s)}
            for name, s in per_shape.items()
        }
        for label, per_shape in samples.items()
    }


def _live(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks import live_latency

    argv = ["--model", str(path), "--streams", *map(str, args.live_streams), "--no-detector"]
    argv += ["--out-dir", str(args.out_dir)]
    if args.quick:
        argv += ["--quick"]
    load_before = load_average()
    data, _ = live_latency.run(live_latency.build_parser().parse_args(argv))
    if data is None:  # pragma: no cover - only a --soak-only run returns none
        raise BenchmarkError("the live benchmark returned no rows")
    rows = [
        {
            "mode": r["mode"],
            "streams": r["streams"],
            "fps_out_min": r["fps_out_min"],
            "drops": r["drops"],
            "latency_ms": r["latency_ms"],
            "cpu_percent": r["cpu_percent"],
            "realtime": r["realtime"],
        }
        for r in data["rows"]
    ]
    held = [
        r["streams"]
        for r in rows
        if r["mode"] == "model" and r["realtime"] and (r["latency_ms"].get("p95") or math.inf) <= LIVE_P95_MS
    ]
    return {
        "size": data["size"],
        "seconds_per_row": data["rows"][0]["seconds"] if data["rows"] else None,
        "loadavg_before": load_before,
        "loadavg_after": load_average(),
        "rows": rows,
        "streams_held": max(held, default=0),
    }


def acceptance(reference: dict[str, Any], candidate: dict[str, Any]) -> dict[str, Any]:
    """A candidate's quality and speed against the reference (module docstring)."""
    psnr_diff = candidate["quality"]["psnr"] - reference["quality"]["psnr"]
    dcf_diff = candidate["quality"]["dcf"] - reference["quality"]["dcf"]
    p50_ref = reference["speed"]["serve 192x256"]["latency_ms"]["p50"]
    p50 = candidate["speed"]["serve 192x256"]["latency_ms"]["p50"]
    quality_ok = psnr_diff >= -TOLERANCES["psnr_drop_db"] and dcf_diff <= TOLERANCES["dcf_rise"]
    return {
        "psnr_diff_db": psnr_diff,
        "dcf_diff": dcf_diff,
        "quality_pass": bool(quality_ok),
        "speedup_serve_p50": p50_ref / p50,
        "faster": bool(p50 < p50_ref),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from chromastream.models.runtime.registry import create_backend

    paths: list[Path] = args.models
    for path in paths:
        require_model_file(path)
    labels: list[str] = []
    for path in paths:
        labels.append(_label(path, labels))
    result: dict[str, Any] = {
        "benchmark": "precision",
        "date": now_iso(),
        "quick": args.quick,
        "machine": machine_tags(),
        "tolerances": TOLERANCES,
        "serve_shape": list(SERVE_SHAPE),
        "models": [],
    }
    started = time.perf_counter()
    for path, label in zip(paths, labels, strict=True):
        backend = create_backend(args.backend, path)
        entry = {"label": label, **model_tags(path, backend.info.version, backend.name)}
        entry["precision"] = backend.info.precision
        entry["bytes"] = path.stat().st_size
        print(f"{label}: quality ({QUALITY_SET})", flush=True)
        entry["quality"] = _quality(path, args)
        print(f"{label}: video quality", flush=True)
        entry["video"] = _video(path, args)
        result["models"].append(entry)
    print("speed, alternating rounds", flush=True)
    speed = _speed(paths, labels, args)
    for entry in result["models"]:
        entry["speed"] = speed[entry["label"]]
    if args.live_streams:
        for path, entry in zip(paths, result["models"], strict=True):
            print(f"{entry['label']}: live streams {args.live_streams}", flush=True)
            entry["live"] = _live(path, args)
    reference = result["models"][0]
    for entry in result["models"][1:]:
        entry["acceptance"] = acceptance(reference, entry)
    result["loadavg_end"] = load_average()
    result["seconds"] = time.perf_counter() - started
    return result


# ------------------------------------------------------------------------------------------- output


def print_summary(result: dict[str, Any]) -> None:
    print(f"\nprecision  {QUALITY_SET} PSNR/ΔCF, video flicker, speed at serve's shape (p50 ms)")
    for m in result["models"]:
        q, v, s = m["quality"], m["video"], m["speed"]["serve 192x256"]["latency_ms"]
        line = (
            f"{m['label']:<24}{m['precision']:<6} PSNR {num(q['psnr'])}  ΔCF {num(q['dcf'], 1)}  "
            f"flicker {num(v['flicker'])}  p50 {num(s.get('p50'))} ms"
        )
        if "acceptance" in m:
            a = m["acceptance"]
            line += f"  {num(a['speedup_serve_p50'])}x  quality {'PASS' if a['quality_pass'] else 'FAIL'}"
        if "live" in m:
            line += f"  live: {m['live']['streams_held']} stream(s) at p95 <= {LIVE_P95_MS:.0f} ms"
        print(line)
    print(f"load average: start {result['machine']['loadavg']}, end {result['loadavg_end']}")


def report_section(data: dict[str, Any]) -> list[str]:
    """The RESULTS.md section for ``int8_vs_fp32.json``."""
    models = data.get("models") or []
    tol = data.get("tolerances") or TOLERANCES
    lines = ["## Reduced precision (INT8 against float)", ""]
    if data.get("quick"):
        lines += ["> Smoke run (`--quick`): too short for a final figure.", ""]
    shape = "x".join(str(x) for x in data.get("serve_shape") or SERVE_SHAPE)
    lines += [
        "The same benchmarks on each model file, back to back in one run (`python -m benchmarks.precision`); "
        f"the first row is the reference. Quality: {QUALITY_SET} means at working size "
        f"{(models[0].get('quality') or {}).get('size', '?') if models else '?'}, near-grey pictures left "
        "out; video: the held-out DAVIS sequences with memory. Speed: one stream's frame through a session "
        f"(memory carried, hints set), at serve's working shape for a 640x480 camera ({shape}) and at "
        "256x256, in rounds alternating between the models. Files other than the shipped ones go by their "
        "file name (e.g. the float graph an INT8 copy was quantized from, pads folded, written by "
        "`python -m chromastream.models.colorizer.quantize --float-output`). Acceptable: PSNR at most "
        f"{num(tol.get('psnr_drop_db'), 1)} dB below the reference and ΔCF at most "
        f"{num(tol.get('dcf_rise'), 1)} above.",
        "",
        "| model | precision | MB | PSNR dB ↑ | SSIM ↑ | ΔCF ↓ | video PSNR | flicker ↓ | warp ↓ "
        f"| p50 ms {shape} | p95 ms | p50 ms 256² | speed-up | quality |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for m in models:
        q, v = m.get("quality") or {}, m.get("video") or {}
        speed = m.get("speed") or {}
        serve = (speed.get("serve 192x256") or {}).get("latency_ms") or {}
        square = (speed.get("256x256") or {}).get("latency_ms") or {}
        acc = m.get("acceptance")
        verdict = "reference" if acc is None else ("**PASS**" if acc.get("quality_pass") else "**FAIL**")
        lines.append(
            f"| `{m.get('label')}` (`{m.get('version', '?')}`) | {m.get('precision', '?')} | "
            f"{num((m.get('bytes') or math.nan) / 1e6, 1)} | {num(q.get('psnr'))} | "
            f"{num(q.get('ssim'), 4)} | {num(q.get('dcf'), 1)} | {num(v.get('psnr'))} | "
            f"{num(v.get('flicker'))} | {num(v.get('warp'))} | "
            f"{num(serve.get('p50'))} | {num(serve.get('p95'))} | {num(square.get('p50'))} | "
            f"{'–' if acc is None else num(acc.get('speedup_serve_p50')) + '×'} | {verdict} |"
        )
    live = [m for m in models if m.get("live")]
    if live:
        lines += [
            "",
            "Live 640x480 at 25 fps per stream through `serve`'s pipeline, server and one WHEP viewer each "
            f"(`benchmarks.live_latency`, working size {live[0]['live'].get('size', '?')}); a stream count "
            f"is held when every stream stays real time with p95 ≤ {LIVE_P95_MS:.0f} ms. Indicative: the "
            "machine is shared, so the load average around each model's rows is given.",
            "",
            "| model | streams | fps out (slowest) | drops | p50 ms | p95 ms | CPU % | load before → after |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for m in live:
            rows = [r for r in m["live"].get("rows") or [] if r.get("mode") == "model"]
            load = f"{m['live'].get('loadavg_before', ['?'])[0]} → {m['live'].get('loadavg_after', ['?'])[0]}"
            for r in rows:
                lat = r.get("latency_ms") or {}
                lines.append(
                    f"| `{m.get('label')}` | {r.get('streams')} | {num(r.get('fps_out_min'), 1)} | "
                    f"{r.get('drops')} | {num(lat.get('p50'), 0)} | {num(lat.get('p95'), 0)} | "
                    f"{num(r.get('cpu_percent'), 0)} | {load} |"
                )
        lines += [
            "",
            *[
                f"- `{m.get('label')}`: {m['live'].get('streams_held')} stream(s) held at p95 ≤ "
                f"{LIVE_P95_MS:.0f} ms."
                for m in live
            ],
        ]
    end = "/".join(str(x) for x in data.get("loadavg_end") or []) or "?"
    lines += ["", machine_line(data) + f" Load at the end: {end}.", ""]
    return lines


def build_parser() -> argparse.ArgumentParser:
    from chromastream.models.runtime.registry import shipped_model_path

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.precision",
        description=(
            "Image quality, video quality and speed of several colorizer files (the first is the "
            "reference), back to back in one run; optional live-stream rows. Writes int8_vs_fp32.json."
        ),
    )
    parser.add_argument(
        "--models",
        type=Path,
        nargs="+",
        default=[shipped_model_path("fp32"), shipped_model_path("int8")],
        help="model files, the reference first (default: the shipped float and INT8 files)",
    )
    parser.add_argument("--backend", default="onnxruntime", help="runtime backend (default: onnxruntime)")
    parser.add_argument("--seconds", type=float, default=30.0, help="timed seconds per model and shape")
    parser.add_argument("--rounds", type=int, default=6, help="alternating speed rounds (default: 6)")
    parser.add_argument(
        "--live-streams", type=int, nargs="*", default=[], help="also run live rows at these stream counts"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 pictures, 4 frames, short timing")
    parser.add_argument("--name", default=DEFAULT_NAME, help=f"result file name (default: {DEFAULT_NAME})")
    parser.add_argument(
        "--out-dir", "--out", dest="out_dir", type=Path, default=DEFAULT_RESULTS_DIR, help="output folder"
    )
    parser.add_argument(
        "--shared", type=Path, default=shared_root(), help="shared data folder (default: ../shared)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if len(args.models) < 2:
        return fail("--models needs the reference and at least one other file")
    if args.rounds < 1 or args.seconds <= 0:
        return fail("--rounds must be at least 1 and --seconds positive")
    if any(n < 1 for n in args.live_streams):
        return fail("--live-streams takes positive counts")
    return run_and_write(args.name, args.out_dir, lambda: run(args), print_summary)


if __name__ == "__main__":
    sys.exit(main())
