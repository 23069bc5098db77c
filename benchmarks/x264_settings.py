"""libx264 presets and threads for the live path, measured per frame size and use.

The live encoders (the shared WebRTC encoder, the RTSP push, the recorder) run on the same cores as the
colorizer, so every millisecond of CPU an encoder takes is a millisecond the model does not get. This
benchmark encodes colorized video (a DAVIS sequence colorized once up front by the shipped model, its
chroma as smooth as the colorizer makes it) at 640x480, 1280x720 and 1920x1080 with each preset of
:data:`PRESETS` and each threading of :data:`THREADINGS`, in the rate control of each use:

* ``live``: what the WebRTC encoder does, average bitrate (``webrtc.bitrate``, 1.5 Mbit/s by default),
  baseline profile, ``tune=zerolatency``, a key frame every ``keyframe_interval`` frames;
* ``record``: what a recording does, constant quality (CRF) without B-frames and without a tune (so with
  x264's lookahead, which costs latency but a file does not mind).

Measured per run: CPU milliseconds per frame (the process's CPU time over the encode calls and the final
flush, so other jobs on a shared machine disturb it little; every encoder thread counts), wall
milliseconds per ``encode`` call (p50/p95: what a frame waits on a live path), the output bitrate at 30
fps, PSNR of the decoded Y plane and of U/V against the encoder's input, SSIM of Y on every
:data:`SSIM_EVERY`-th frame, and the encoder's latency in frames: the most frames that went in without
their packet coming out. ``tune=zerolatency`` alone gives 0; frame threads add a frame per extra thread
(FFmpeg turns x264's sliced threads into frame threads unless the thread type is ``slice``).

    python -m benchmarks.x264_settings            # full run, writes benchmarks/results/x264_settings.json
    python -m benchmarks.x264_settings --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from benchmarks.common import (
    BenchmarkError,
    add_model_args,
    add_output_args,
    machine_line,
    machine_tags,
    model_tags,
    now_iso,
    num,
    percentiles_ms,
    require_model_file,
    run_and_write,
)
from benchmarks.metrics import U8

NAME = "x264_settings"
SIZES: tuple[tuple[int, int], ...] = ((640, 480), (1280, 720), (1920, 1080))
PRESETS = ("ultrafast", "superfast", "veryfast", "faster")
THREADINGS: tuple[tuple[int, str], ...] = (
    (1, "slice"),
    (2, "slice"),
    (0, "slice"),
    (2, "frame"),
    (0, "frame"),
)
"""(threads, thread type): one thread; two and x264's automatic count (1.5 per core) as slices of each
frame (no latency) and as frame threads (one frame of latency per extra thread)."""
USES = ("live", "record")
FPS = 30
SSIM_EVERY = 10
"""SSIM costs far more than PSNR at 1080p; every tenth frame keeps the run short and still samples the
whole clip."""
SWEEP_PRESETS = ("superfast", "veryfast")
SWEEP_CRFS = (18, 20, 22, 24)
"""A CRF sweep of the two candidate presets of a recording (one thread): at one CRF two presets give
different bitrates *and* qualities, so which one spends fewer bits for the same picture needs each
preset's bitrate-quality curve (:func:`bits_at_equal_quality`)."""
SEQUENCE = "car-shadow"
"""A held-out DAVIS sequence with real camera motion (the colorizer never trained on it)."""


@dataclass(frozen=True)
class Setting:
    use: str
    preset: str
    threads: int
    thread_type: str
    crf: int = 20
    """The CRF of ``record`` (a recording's is 20); ``live`` runs at a bitrate instead."""

    @property
    def label(self) -> str:
        return f"{self.preset} t{self.threads or 'auto'} {self.thread_type}"


# ------------------------------------------------------------------------------------------- frames


def colorized_clip(shared: Path, backend: Any, size: int, frames: int) -> list[U8]:
    """The sequence's frames colorized by the model (memory on, as the live path runs), RGB, played
    forward then backward to make ``frames`` frames without a cut."""
    from benchmarks.quality import gray_input, list_images, load_rgb
    from chromastream.kernels.combine import lab_to_rgb_u8
    from chromastream.models.runtime.session import ColorizerSession

    folder = shared / "data" / "video" / "davis" / SEQUENCE
    if not folder.is_dir():
        raise BenchmarkError(f"DAVIS sequence not found at {folder} (set CHROMASTREAM_SHARED)")
    session = ColorizerSession(backend, size=size, memory=True)
    paths = list_images(folder)[: max(frames, 2)]
    out: list[U8] = []
    for path in paths:
        _, lightness = gray_input(load_rgb(path))
        out.append(lab_to_rgb_u8(lightness, session.predict_ab(lightness)))
    cycle = out + out[-2:0:-1]
    return [cycle[i % len(cycle)] for i in range(frames)]


def yuv_frames(clip: list[U8], width: int, height: int) -> list[av.VideoFrame]:
    """The clip scaled to ``width`` x ``height`` (area averaging down, bicubic up: the clip is 854x480, so
    720p and 1080p are smoother than a camera's own) as yuv420p frames (BT.601, limited range), as the
    live path hands them to its encoders."""
    frames = []
    for rgb in clip:
        shrink = width * height < rgb.shape[0] * rgb.shape[1]
        scaled = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(scaled, dtype=np.uint8), format="rgb24")
        frames.append(frame.reformat(format="yuv420p"))
    return frames


def planes(frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from chromastream.stream.av_glue import luma_plane_view

    return luma_plane_view(frame, 0), luma_plane_view(frame, 1), luma_plane_view(frame, 2)


# ------------------------------------------------------------------------------------------- encoding


def open_encoder(setting: Setting, width: int, height: int) -> av.VideoCodecContext:
    """An x264 encoder in the rate control of ``setting.use`` (module docstring), with its preset and
    threading."""
    from chromastream.stream.webrtc import DEFAULT_BITRATE, DEFAULT_KEYFRAME_INTERVAL

    context = av.CodecContext.create("libx264", "w")
    assert isinstance(context, av.VideoCodecContext)
    options = {"preset": setting.preset, "threads": str(setting.threads), "thread_type": setting.thread_type}
    if setting.use == "live":
        context.options = options | {"tune": "zerolatency"}
        context.profile = "Baseline"
        context.bit_rate = DEFAULT_BITRATE
        context.gop_size = DEFAULT_KEYFRAME_INTERVAL
    else:
        context.options = options | {"crf": str(setting.crf), "bf": "0"}
        context.gop_size = 2 * FPS
    context.width, context.height, context.pix_fmt = width, height, "yuv420p"
    context.time_base = Fraction(1, FPS)
    context.framerate = Fraction(FPS)
    return context


def _psnr(mse: float) -> float:
    return 100.0 if mse <= 0 else 10.0 * float(np.log10(255.0**2 / mse))


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    compare: Any = structural_similarity
    return float(compare(a, b, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False))


def measure(setting: Setting, frames: list[av.VideoFrame]) -> dict[str, Any]:
    """Encode ``frames`` with ``setting``, decode the packets and compare (module docstring)."""
    width, height = frames[0].width, frames[0].height
    context = open_encoder(setting, width, height)
    packets: list[bytes] = []
    walls: list[float] = []
    delayed = 0
    cpu0 = time.process_time()
    for i, frame in enumerate(frames):
        frame.pts = i
        frame.time_base = context.time_base
        t0 = time.perf_counter()
        out = context.encode(frame)
        walls.append(time.perf_counter() - t0)
        packets += [bytes(p) for p in out]
        delayed = max(delayed, i + 1 - len(packets))
    packets += [bytes(p) for p in context.encode(None)]
    cpu = time.process_time() - cpu0

    decoder = av.CodecContext.create("h264", "r")
    decoded = [d for data in packets for d in decoder.decode(av.Packet(data))]
    decoded += decoder.decode(None)
    if len(decoded) != len(frames):
        raise BenchmarkError(f"{setting.label}: {len(frames)} frames in, {len(decoded)} decoded")
    mse_y, mse_uv, ssims = [], [], []
    for i, (src, dst) in enumerate(zip(frames, decoded, strict=True)):
        sy, su, sv = planes(src)
        dy, du, dv = planes(dst.reformat(format="yuv420p"))
        mse_y.append(float(np.mean((sy.astype(np.float32) - dy) ** 2)))
        mse_uv.append(
            float(np.mean((su.astype(np.float32) - du) ** 2) + np.mean((sv.astype(np.float32) - dv) ** 2)) / 2
        )
        if i % SSIM_EVERY == 0:
            ssims.append(_ssim(sy, dy))
    total_bytes = sum(len(p) for p in packets)
    wall = percentiles_ms(walls)
    return {
        "use": setting.use,
        "width": width,
        "height": height,
        "preset": setting.preset,
        "threads": setting.threads,
        "thread_type": setting.thread_type,
        "frames": len(frames),
        "cpu_ms_per_frame": 1000.0 * cpu / len(frames),
        "wall_ms": {"p50": wall["p50"], "p95": wall["p95"]},
        "kbps": total_bytes * 8 * FPS / len(frames) / 1000.0,
        "psnr_y": float(np.mean([_psnr(m) for m in mse_y])),
        "psnr_uv": float(np.mean([_psnr(m) for m in mse_uv])),
        "ssim_y": float(np.mean(ssims)),
        "latency_frames": delayed,
    }


def settings(uses: list[str], presets: list[str], threadings: list[tuple[int, str]]) -> list[Setting]:
    return [Setting(u, p, t, k) for u in uses for p in presets for t, k in threadings]


def bits_at_equal_quality(
    reference: list[dict[str, Any]], other: list[dict[str, Any]], key: str
) -> float | None:
    """Mean ratio of ``other``'s bitrate to ``reference``'s at the same quality ``key`` (``psnr_y`` or
    ``ssim_y``): at each point of ``other`` inside ``reference``'s quality range, ``reference``'s log
    bitrate interpolated linearly in quality (a one-sided BD-rate). Below 1: ``other`` spends fewer bits."""
    curve = sorted((float(r[key]), math.log(float(r["kbps"]))) for r in reference)
    ratios = []
    for row in other:
        quality = float(row[key])
        for (q0, b0), (q1, b1) in itertools.pairwise(curve):
            if q0 <= quality <= q1 and q1 > q0:
                ratios.append(float(row["kbps"]) / math.exp(b0 + (quality - q0) / (q1 - q0) * (b1 - b0)))
                break
    return sum(ratios) / len(ratios) if ratios else None


def sweep_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per frame size: ``veryfast``'s bits and CPU against ``superfast``'s at equal quality."""
    out = []
    for width, height in sorted({(r["width"], r["height"]) for r in rows}):
        at = [r for r in rows if (r["width"], r["height"]) == (width, height)]
        fast = [r for r in at if r["preset"] == SWEEP_PRESETS[0]]
        slow = [r for r in at if r["preset"] == SWEEP_PRESETS[1]]
        if not fast or not slow:
            continue
        cpu = sum(r["cpu_ms_per_frame"] for r in slow) / sum(r["cpu_ms_per_frame"] for r in fast)
        out.append(
            {
                "width": width,
                "height": height,
                "reference": SWEEP_PRESETS[0],
                "preset": SWEEP_PRESETS[1],
                "bits_at_equal_psnr_y": bits_at_equal_quality(fast, slow, "psnr_y"),
                "bits_at_equal_ssim_y": bits_at_equal_quality(fast, slow, "ssim_y"),
                "cpu_ratio": cpu,
            }
        )
    return out


# ------------------------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    from chromastream.models.runtime.registry import create_backend

    require_model_file(args.model)
    backend = create_backend(args.backend, args.model)
    clip = colorized_clip(args.shared, backend, args.size, args.frames)
    threadings = [t for t in THREADINGS if f"{t[0]}-{t[1]}" in args.threadings]
    runs = settings(args.uses, args.presets, threadings)
    result: dict[str, Any] = {
        "benchmark": NAME,
        "date": now_iso(),
        "quick": args.quick,
        "model": model_tags(args.model, backend.info.version, backend.name),
        "sequence": SEQUENCE,
        "frames": args.frames,
        "fps": FPS,
        "definition": (
            "cpu_ms_per_frame = process CPU time (all threads) of the encode calls and the flush / frames; "
            "wall_ms = wall time of each encode call; kbps at 30 fps; PSNR per frame of the decoded Y "
            "plane (and of U and V together) against the encoder input, mean over frames; SSIM of Y "
            f"(Gaussian 11x11, sigma 1.5) on every {SSIM_EVERY}th frame; latency_frames = the most frames "
            "in without their packet out"
        ),
        "machine": machine_tags(),
        "rows": [],
    }
    sweep = [Setting("record", p, 1, "slice", c) for p in SWEEP_PRESETS for c in args.crfs]
    sweep = sweep if "record" in args.uses else []
    result["crf_sweep"] = []
    for width, height in args.sizes:
        frames = yuv_frames(clip, width, height)
        for setting in runs:
            row = measure(setting, frames)
            result["rows"].append(row)
            print(_line(row), flush=True)
        for setting in sweep:
            row = measure(setting, frames) | {"crf": setting.crf}
            result["crf_sweep"].append(row)
            print(f"crf {setting.crf} " + _line(row), flush=True)
    result["equal_quality"] = sweep_summary(result["crf_sweep"])
    result["loadavg_end"] = machine_tags()["loadavg"]
    result["seconds"] = time.perf_counter() - started
    return result


def _line(row: dict[str, Any]) -> str:
    return (
        f"{row['use']:6} {row['width']}x{row['height']:<5} {row['preset']:9} t{row['threads'] or 'auto':4} "
        f"{row['thread_type']:5}  cpu {row['cpu_ms_per_frame']:6.2f} ms  "
        f"wall p50 {row['wall_ms']['p50']:6.2f} p95 {row['wall_ms']['p95']:6.2f} ms  "
        f"{row['kbps']:7.0f} kbps  Y {row['psnr_y']:5.2f} dB  "
        f"UV {row['psnr_uv']:5.2f} dB  SSIM {row['ssim_y']:.4f}  latency {row['latency_frames']}"
    )


def print_summary(result: dict[str, Any]) -> None:
    print(f"\n{len(result['rows'])} settings measured on {result['frames']} frames each")


def report_section(data: dict[str, Any]) -> list[str]:
    """RESULTS.md: one table per use, rows by frame size, preset and threading."""
    model = data.get("model") or {}
    end = "/".join(str(x) for x in data.get("loadavg_end") or []) or "?"
    lines = [
        "## x264 settings (preset and threads per frame size)",
        "",
        f"DAVIS `{data.get('sequence', '?')}` colorized by model `{model.get('version', '?')}`, "
        f"{data.get('frames', '?')} frames per run at {data.get('fps', '?')} fps; "
        f"run {data.get('date', '?')}.",
        "",
    ]
    if data.get("quick"):
        lines += ["> Smoke run (`--quick`): too short for a final figure.", ""]
    lines += [
        "`live` is the WebRTC encoder's mode (average bitrate, baseline, tune zerolatency); `record` a "
        "recording's (CRF 20, no B-frames, no tune). CPU ms per frame: process CPU time of the encoder, "
        "all its threads (other jobs on the machine disturb it little); wall ms: one `encode` call. "
        "PSNR/SSIM of the decoded picture against the encoder's input. Latency: frames inside the encoder "
        f"before their packet comes out. Definitions: {data.get('definition', '?')}.",
        "",
    ]
    for use in USES:
        rows = [r for r in data.get("rows") or [] if r.get("use") == use]
        if not rows:
            continue
        lines += [
            f"### {use}",
            "",
            "| size | preset | threads | type | CPU ms/frame | wall p50 ms | wall p95 ms | kbps | PSNR Y dB "
            "| PSNR UV dB | SSIM Y | latency frames |",
            "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in rows:
            wall = r.get("wall_ms") or {}
            lines.append(
                f"| {r.get('width')}x{r.get('height')} | {r.get('preset')} | {r.get('threads') or 'auto'} | "
                f"{r.get('thread_type')} | {num(r.get('cpu_ms_per_frame'))} | {num(wall.get('p50'))} | "
                f"{num(wall.get('p95'))} | {num(r.get('kbps'), 0)} | {num(r.get('psnr_y'))} | "
                f"{num(r.get('psnr_uv'))} | {num(r.get('ssim_y'), 4)} | {r.get('latency_frames', '–')} |"
            )
        lines.append("")
    sweep = data.get("crf_sweep") or []
    if sweep:
        lines += [
            "### record: CRF sweep",
            "",
            "At one CRF two presets differ in bitrate and quality both; each preset's curve (one thread) "
            "gives the bits one spends for the other's quality: the ratio below is the slower preset's "
            "bitrate over the faster one's at the same PSNR (or SSIM) of Y, interpolated on the faster "
            "one's curve (a one-sided BD-rate; below 1 the slower preset saves bits).",
            "",
            "| size | preset | CRF | CPU ms/frame | kbps | PSNR Y dB | PSNR UV dB | SSIM Y |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in sweep:
            lines.append(
                f"| {r.get('width')}x{r.get('height')} | {r.get('preset')} | {r.get('crf')} | "
                f"{num(r.get('cpu_ms_per_frame'))} | {num(r.get('kbps'), 0)} | {num(r.get('psnr_y'))} | "
                f"{num(r.get('psnr_uv'))} | {num(r.get('ssim_y'), 4)} |"
            )
        lines += [
            "",
            "| size | preset against reference | bits at equal PSNR Y | bits at equal SSIM Y | CPU |",
            "| --- | --- | ---: | ---: | ---: |",
        ]
        for q in data.get("equal_quality") or []:
            lines.append(
                f"| {q.get('width')}x{q.get('height')} | {q.get('preset')} against {q.get('reference')} | "
                f"{_times(q.get('bits_at_equal_psnr_y'))} | {_times(q.get('bits_at_equal_ssim_y'))} | "
                f"{_times(q.get('cpu_ratio'))} |"
            )
        lines.append("")
    lines += [machine_line(data) + f" Load at the end {end}.", ""]
    return lines


def _times(x: Any) -> str:
    """A ratio for the tables ("0.85x"), "–" where none could be measured (qualities that do not
    overlap)."""
    text = num(x)
    return text if text == "–" else f"{text}x"


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise argparse.ArgumentTypeError(f"{text}: even sides of at least 16 pixels")
    return width, height


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.x264_settings",
        description=(
            "CPU, latency, bitrate and quality of libx264 per preset and threading at the live frame sizes, "
            f"on colorized video. Writes {NAME}.json into the output folder."
        ),
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 640x480, few frames")
    parser.add_argument("--frames", type=int, default=90, help="frames per run (default: 90)")
    parser.add_argument("--sizes", type=_size, nargs="+", default=list(SIZES), help="WIDTHxHEIGHT ...")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument(
        "--threadings",
        nargs="+",
        default=[f"{t}-{k}" for t, k in THREADINGS],
        choices=[f"{t}-{k}" for t, k in THREADINGS],
        help="threads-type pairs (0 = x264's automatic count)",
    )
    parser.add_argument("--uses", nargs="+", default=list(USES), choices=USES)
    parser.add_argument(
        "--crfs",
        type=int,
        nargs="*",
        default=list(SWEEP_CRFS),
        help=f"CRFs of the recording sweep of {' and '.join(SWEEP_PRESETS)} (none to skip it)",
    )
    add_model_args(parser)
    add_output_args(parser, f"{NAME}.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.frames = min(args.frames, 12)
        args.sizes = [(320, 240)] if args.sizes == list(SIZES) else args.sizes
    if args.frames < 2:
        print("error: --frames must be at least 2", file=sys.stderr)
        return 2
    return run_and_write(NAME, args.out_dir, lambda: run(args), print_summary)


if __name__ == "__main__":
    sys.exit(main())
