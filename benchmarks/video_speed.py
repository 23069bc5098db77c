"""End-to-end speed and peak memory of ``chromastream colorize`` on synthetic clips, beside the limit.

The command is run as a user runs it, in its own process, so the figures include start-up, model
loading, decoding, colour conversion, encoding and audio passthrough. The limit is measured in the
same run on the same clip: a child process that decodes and re-encodes with the same encoder settings
and the same audio passthrough but no model. The gap between the two is what colorizing costs; a
colorize figure close to the limit means the model is no longer the bottleneck.

Peak memory is the child's peak resident set: ``wait4``'s ``ru_maxrss`` for the process itself, and
a ``/proc`` poll of the whole process tree (in case the command starts helpers), the larger reported.
Wall time is taken around the child alone (start-up and model loading included; the targets are judged
on it). A one-frame run of the same size gives the start-up time, and ``fps_steady`` the rate without
it, which is what a long file or a live stream sees.

Clips are generated with PyAV in a temporary folder: moving gradients and shapes in grey (U = V = 128),
H.264 in MP4 with an AAC tone, at 640x480 25 fps (~10 s, the throughput target) and 1920x1080 (~3 s,
the memory check, since frame buffers grow with resolution).

    python -m benchmarks.video_speed
    python -m benchmarks.video_speed --quick --out-dir /tmp/vs    # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    REPO_ROOT,
    BenchmarkError,
    add_model_arg,
    add_output_args,
    machine_tags,
    model_tags,
    now_iso,
    require_model_file,
    run_and_write,
)

TARGET_FPS = 15.0
TARGET_FPS_CLIP = "640x480"
TARGET_PEAK_RSS_MB = 1000.0  # 1 GB
LIMIT_DEFINITION = "PyAV decode -> the colorize command's H.264 encoder settings, audio passthrough, no model"


def encoder_settings() -> dict[str, Any]:
    """The colorize command's own encoder settings, so the limit encodes exactly as it does (the
    values below are used only where the ``stream`` package cannot be imported)."""
    codec, options = "libx264", {"preset": "veryfast", "crf": "20"}
    try:
        from chromastream.stream import video_io

        codec, options = str(video_io.ENCODER), dict(video_io.ENCODER_OPTIONS)
    except (ImportError, AttributeError):
        pass
    return {"codec": codec, "options": options, "pix_fmt": "yuv420p"}


AUDIO_RATE = 48_000
CHILD_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class ClipSpec:
    name: str
    width: int
    height: int
    fps: int
    seconds: float

    @property
    def frames(self) -> int:
        return round(self.fps * self.seconds)


def clip_specs(quick: bool) -> list[ClipSpec]:
    if quick:
        return [ClipSpec("640x480", 640, 480, 25, 2.0), ClipSpec("1920x1080", 1920, 1080, 25, 1.0)]
    return [ClipSpec("640x480", 640, 480, 25, 10.0), ClipSpec("1920x1080", 1920, 1080, 25, 3.0)]


# ------------------------------------------------------------------------------------------ synthetic clip


def synthetic_luma(index: int, width: int, height: int) -> np.ndarray:
    """One grey frame (limited-range luma) with motion everywhere: a drifting diagonal gradient, a
    moving disc, a sliding bar and fine texture, so the encoder and the model see real work."""
    t = index / 25.0
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 0.5 + 0.35 * np.sin((xx + yy) / (0.15 * width) + 2.0 * t)
    cx = width * (0.5 + 0.35 * math.cos(0.9 * t))
    cy = height * (0.5 + 0.3 * math.sin(1.3 * t))
    r = 0.12 * min(width, height)
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
    base[disc] = 0.9
    bar_x = int((t * 0.2 * width) % width)
    base[:, bar_x : bar_x + width // 20] = 0.15
    texture = 0.04 * np.sin(xx * 0.9) * np.cos(yy * 0.7)
    y: np.ndarray = (16.0 + 219.0 * np.clip(base + texture, 0.0, 1.0)).astype(np.uint8)
    return y


def make_clip(path: Path, spec: ClipSpec, audio: bool = True) -> Path:
    """Write a grey H.264 MP4 (yuv420p, U = V = 128) with an optional AAC 440 Hz tone."""
    import av

    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=spec.fps)
        video.width, video.height = spec.width, spec.height
        video.pix_fmt = "yuv420p"
        video.options = {"preset": "veryfast", "crf": "20"}
        astream = out.add_stream("aac", rate=AUDIO_RATE, layout="mono") if audio else None
        chroma = np.full((spec.height // 2, spec.width), 128, dtype=np.uint8)  # U and V planes stacked
        samples_per_frame = AUDIO_RATE // spec.fps
        for i in range(spec.frames):
            y = synthetic_luma(i, spec.width, spec.height)
            frame = av.VideoFrame.from_ndarray(np.concatenate([y, chroma]), format="yuv420p")
            frame.pts = i
            frame.time_base = Fraction(1, spec.fps)
            out.mux(video.encode(frame))
            if astream is not None:
                n0 = i * samples_per_frame
                tone = 0.2 * np.sin(2 * np.pi * 440.0 * (n0 + np.arange(samples_per_frame)) / AUDIO_RATE)
                aframe = av.AudioFrame.from_ndarray(
                    tone.astype(np.float32)[None], format="fltp", layout="mono"
                )
                aframe.sample_rate = AUDIO_RATE
                aframe.pts = n0
                aframe.time_base = Fraction(1, AUDIO_RATE)
                out.mux(astream.encode(aframe))
        out.mux(video.encode(None))
        if astream is not None:
            out.mux(astream.encode(None))
    return path


def probe(path: Path) -> dict[str, Any]:
    """Frame count, size and whether an audio track is present (demuxed, not trusted from headers)."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            return {"frames": 0, "width": None, "height": None, "audio": bool(container.streams.audio)}
        vs = container.streams.video[0]
        width, height = vs.codec_context.width, vs.codec_context.height
        frames = sum(1 for _ in container.decode(vs))
        has_audio = bool(container.streams.audio)
    return {"frames": frames, "width": width, "height": height, "audio": has_audio}


# ------------------------------------------------------------------------------------------ the limit


def transcode(src: Path, dst: Path) -> int:
    """Decode + encode with no model (the limit): video re-encoded with :func:`encoder_settings`, audio
    packets passed through, as the colorize command does. Returns the number of video frames."""
    import av

    count = 0
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        rate = vin.average_rate or Fraction(25)
        settings = encoder_settings()
        vout: Any = out.add_stream(settings["codec"], rate=rate, options=dict(settings["options"]))
        vout.width, vout.height = vin.codec_context.width, vin.codec_context.height
        vout.pix_fmt = settings["pix_fmt"]
        ain = inp.streams.audio[0] if inp.streams.audio else None
        aout = out.add_stream_from_template(ain) if ain is not None else None
        streams = [vin] + ([ain] if ain is not None else [])
        for packet in inp.demux(*streams):
            if packet.stream is ain and aout is not None:
                if packet.dts is None:
                    continue
                packet.stream = aout
                out.mux(packet)
                continue
            frame: Any
            for frame in packet.decode():
                frame.pict_type = av.video.frame.PictureType.NONE
                out.mux(vout.encode(frame))
                count += 1
        out.mux(vout.encode(None))
    return count


# ------------------------------------------------------------------------------------------ child runs


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _tree_rss_kb(pid: int) -> int:
    """Resident set of a process and all its descendants, in KiB (0 once it is gone)."""
    total = 0
    stack = [pid]
    seen = set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _rss_kb(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children", encoding="ascii") as fh:
                    stack.extend(int(c) for c in fh.read().split())
        except (OSError, ValueError):
            continue
    return total


_LAUNCHER = """
import json, os, sys, time
t0 = time.perf_counter()
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(sys.argv[1], "w") as fh:
    json.dump({"rc": os.waitstatus_to_exitcode(status), "wall_s": wall, "maxrss_kb": usage.ru_maxrss}, fh)
"""
"""Starts the measured command from a small, fresh interpreter. Linux carries the parent's memory
high-water mark into a forked child across ``exec``, so a child forked straight from this (large)
benchmark process would report this process's peak, not its own; forked from the launcher, the floor
is the launcher's few MB."""


def run_child(cmd: list[str], env: dict[str, str], timeout: float = CHILD_TIMEOUT_S) -> dict[str, Any]:
    """Run a command, timing it and recording its peak memory; its output is kept for the report
    only when it fails."""
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile() as log:
        report = Path(tmp) / "child.json"
        launcher = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(report), *cmd],
            env=env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        start = time.perf_counter()
        polled_kb = 0
        timed_out = False
        while launcher.poll() is None:
            polled_kb = max(polled_kb, _tree_rss_kb(launcher.pid) - _rss_kb(launcher.pid))
            if time.perf_counter() - start > timeout:
                timed_out = True
                os.killpg(launcher.pid, signal.SIGKILL)
                launcher.wait()
                break
            time.sleep(0.02)
        try:
            child = json.loads(report.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            child = {"rc": None, "wall_s": time.perf_counter() - start, "maxrss_kb": 0}
        log.seek(0)
        tail = log.read()[-4000:].decode("utf-8", errors="replace")
    maxrss_kb = int(child["maxrss_kb"])
    rc = child["rc"] if not timed_out else None
    return {
        "rc": rc,
        "wall_s": float(child["wall_s"]),
        "peak_rss_mb": max(maxrss_kb, polled_kb) / 1024.0,
        "ru_maxrss_mb": maxrss_kb / 1024.0,
        "polled_tree_rss_mb": polled_kb / 1024.0,
        "timed_out": timed_out,
        "log_tail": tail if rc != 0 else "",
    }


def colorize_command() -> list[str]:
    """The console script beside this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "chromastream"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("chromastream")
    if found:
        return [found]
    raise BenchmarkError(
        f"the chromastream command was not found beside {sys.executable} or on PATH: pip install -e ."
    )


def _finish(run: dict[str, Any], out: Path, expected: int) -> dict[str, Any]:
    ok = run["rc"] == 0 and out.is_file()
    run["output"] = probe(out) if ok else None
    if ok and run["output"]["frames"] != expected:
        ok = False
        run["error"] = f"output has {run['output']['frames']} frames, the input {expected}"
    elif not ok:
        status = "timed out" if run["timed_out"] else f"exit status {run['rc']}"
        run["error"] = status + ("" if out.is_file() else ", no output file")
    run["ok"] = ok
    run["fps"] = expected / run["wall_s"] if ok and run["wall_s"] > 0 else None
    return run


def bench_clip(
    spec: ClipSpec, tmp: Path, command: list[str], model: Path, skip_colorize: bool
) -> dict[str, Any]:
    src = make_clip(tmp / f"in_{spec.name}.mp4", spec)
    env = dict(os.environ, CHROMASTREAM_MODEL=str(model))
    limit_out = tmp / f"limit_{spec.name}.mp4"
    limit = run_child(
        [sys.executable, "-m", "benchmarks.video_speed", "--transcode-only", str(src), str(limit_out)], env
    )
    entry: dict[str, Any] = {
        "name": spec.name,
        "width": spec.width,
        "height": spec.height,
        "fps": spec.fps,
        "frames": spec.frames,
        "seconds": spec.seconds,
        "audio": True,
        "limit": _finish(limit, limit_out, spec.frames),
    }
    if not skip_colorize:
        out = tmp / f"out_{spec.name}.mp4"
        run = _finish(run_child([*command, "colorize", str(src), str(out), "--quiet"], env), out, spec.frames)
        # Start-up (interpreter, imports, model load, first frame) from a one-frame clip of the same
        # size, so the steady per-frame rate can be told apart from the fixed cost of a short clip.
        one = make_clip(
            tmp / f"one_{spec.name}.mp4", ClipSpec(spec.name, spec.width, spec.height, spec.fps, 1 / spec.fps)
        )
        one_out = tmp / f"one_out_{spec.name}.mp4"
        startup = _finish(
            run_child([*command, "colorize", str(one), str(one_out), "--quiet"], env), one_out, 1
        )
        run["startup_s"] = startup["wall_s"] if startup["ok"] else None
        steady = run["wall_s"] - startup["wall_s"]
        run["fps_steady"] = (spec.frames - 1) / steady if run["ok"] and startup["ok"] and steady > 0 else None
        entry["colorize"] = run
    return entry


def run(args: argparse.Namespace) -> dict[str, Any]:
    from chromastream.models.runtime.registry import create_backend

    require_model_file(args.model)
    if args.skip_colorize:
        command = []
    elif args.command:
        command = shlex.split(args.command)
    else:
        command = colorize_command()
    backend = create_backend("auto", args.model)
    result: dict[str, Any] = {
        "benchmark": "video_speed",
        "date": now_iso(),
        "model": model_tags(args.model, backend.info.version, backend.name),
        "quick": args.quick,
        "machine": machine_tags(),
        "command": " ".join(
            [Path(c).name if i == 0 and len(command) == 1 else c for i, c in enumerate(command)]
            + ["colorize", "IN", "OUT", "--quiet"]
        ),
        "limit_definition": LIMIT_DEFINITION,
        "encoder": encoder_settings(),
        "targets": {"fps": TARGET_FPS, "fps_clip": TARGET_FPS_CLIP, "peak_rss_mb": TARGET_PEAK_RSS_MB},
        "clips": [],
    }
    del backend
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="chromastream-bench-") as tmpdir:
        for spec in clip_specs(args.quick):
            entry = bench_clip(spec, Path(tmpdir), command, args.model, args.skip_colorize)
            result["clips"].append(entry)
            print(f"{spec.name}: {_line(entry)}", flush=True)
    result["pass"] = _verdict(result)
    result["seconds"] = time.perf_counter() - started
    return result


def _verdict(result: dict[str, Any]) -> dict[str, bool | None]:
    runs = [c.get("colorize") for c in result["clips"]]
    if any(r is None for r in runs):
        return {"fps": None, "memory": None}
    ok = all(r["ok"] for r in runs)
    target_clip = next(c for c in result["clips"] if c["name"] == TARGET_FPS_CLIP)
    fps = target_clip["colorize"]["fps"]
    return {
        "fps": ok and fps is not None and fps >= TARGET_FPS,
        "memory": ok and max(r["peak_rss_mb"] for r in runs) <= TARGET_PEAK_RSS_MB,
    }


def _line(entry: dict[str, Any]) -> str:
    def one(run: dict[str, Any] | None) -> str:
        if run is None:
            return "skipped"
        if not run["ok"]:
            return f"FAILED ({run.get('error')})"
        steady = f" ({run['fps_steady']:.1f} steady)" if run.get("fps_steady") else ""
        return f"{run['fps']:.1f} fps{steady}, peak {run['peak_rss_mb']:.0f} MB"

    return f"colorize {one(entry.get('colorize'))}; limit {one(entry['limit'])}"


def print_summary(result: dict[str, Any]) -> None:
    print(f"\nvideo speed  model {result['model']['version']}  (wall clock incl. start-up)")
    for entry in result["clips"]:
        print(f"  {entry['name']} {entry['frames']} frames: {_line(entry)}")
        run = entry.get("colorize")
        if run is not None and not run["ok"] and run["log_tail"]:
            print("    " + "\n    ".join(run["log_tail"].strip().splitlines()[-8:]))
    verdict = result["pass"]

    def mark(v: bool | None) -> str:
        return "n/a" if v is None else ("PASS" if v else "FAIL")

    print(f"target >= {TARGET_FPS:.0f} fps at {TARGET_FPS_CLIP}: {mark(verdict['fps'])}")
    print(f"target peak RSS <= {TARGET_PEAK_RSS_MB:.0f} MB: {mark(verdict['memory'])}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.video_speed",
        description=(
            "End-to-end `chromastream colorize` speed (fps, wall clock) and peak memory on synthetic "
            "640x480 and 1080p clips, beside the decode+encode limit measured on the same clips in the "
            "same run. Writes video_speed.json."
        ),
    )
    add_model_arg(parser)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s at 640x480, 1 s at 1080p")
    parser.add_argument(
        "--command",
        default=None,
        help="the program to run as `<command> colorize IN OUT --quiet` (default: the chromastream script "
        "of this environment)",
    )
    parser.add_argument("--skip-colorize", action="store_true", help="measure only the decode+encode limit")
    add_output_args(parser, "video_speed.json", shared=False)
    parser.add_argument("--transcode-only", nargs=2, type=Path, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.transcode_only:
        src, dst = args.transcode_only
        print(f"{transcode(src, dst)} frames")
        return 0
    return run_and_write(
        "video_speed", args.out_dir, lambda: run(args), print_summary, exit_status=_failed_clips_status
    )


def _failed_clips_status(result: dict[str, Any]) -> int:
    """1 when a clip's run (colorize or the limit) failed: the file is written, but the run is not whole."""
    failed = [
        c["name"]
        for c in result["clips"]
        if not c["limit"]["ok"] or not c.get("colorize", {"ok": True})["ok"]
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
