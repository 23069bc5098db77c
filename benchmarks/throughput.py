"""Throughput of every backend that runs here, model only and end to end, beside this machine's limits.

Model only: frames per second and p50/p95 latency of ``backend.run`` (numpy in, numpy out: what the
batcher calls) over batch sizes (1, 4 on a CPU; 1, 8, 32 on a GPU) and two working shapes: 256x256 and
the working shape of a 1080p stream (256x448). Inputs rotate, the state is carried, warm-up comes first.
The fastest backend (geometric mean of fps over the configurations) is recorded beside the one ``auto``
picks, so a ranking that no longer matches the machine shows up in the results.

End to end: N synthetic 1080p H.264 streams (made with PyAV in a temporary folder) decoded, colorized in
one batched call per frame time through the fastest backend, and re-encoded with the colorize command's
encoder settings, decode and encode of the N streams running in parallel threads. The frame work around
the network is done as the pipeline does it (:func:`chromastream.kernels.frame_ops.frame_ops_for`: on the GPU
with a GPU backend); with a GPU backend the same loop also runs with the frame work on the CPU, for
comparison. The first ticks of each loop are untimed (CUDA graphs are captured per new batch size). A stream
holds real time when its own rate reaches 30 fps. The limit in the same run: the same loop without the model.

Device memory: ``torch.cuda.max_memory_allocated`` per backend on a GPU; on a CPU the process's peak
resident set after each backend (a running maximum, so it only ever grows from one backend to the next).
References measured in the same run: GPU device-to-device copy bandwidth and FP16 matmul TFLOP/s; CPU
float32 matmul GFLOP/s and the decode + encode limit above. The load average at start and end is recorded:
the development machines share two cores with other jobs.

Writes ``throughput_<device>.json`` (``cpu`` or ``cuda``).

    python -m benchmarks.throughput                     # a few minutes on 2 cores (torch.compile ~2 min)
    python -m benchmarks.throughput --smoke --out-dir /tmp/tp   # seconds
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    BenchmarkError,
    add_model_arg,
    add_output_args,
    load_average,
    machine_tags,
    measure_matmul_gflops,
    model_tags,
    now_iso,
    num,
    percentiles_ms,
    rate_summary,
    require_model_file,
    run_and_write,
    time_backend_run,
)
from chromastream.kernels.frame_ops import CpuFrameOps, FrameOps, frame_ops_for

TARGET_FPS = 30.0
E2E_WARMUP = 8
"""End-to-end ticks run before timing starts: a new batch size captures a CUDA graph on its first call."""
WORKING_SIZE = 256
CPU_BACKENDS = ("onnxruntime", "torch", "torch-compile")
GPU_BACKENDS = ("tensorrt", "torch-cuda", "onnxruntime")


@dataclass(frozen=True)
class Plan:
    device: str
    backends: tuple[str, ...]
    batches: tuple[int, ...]
    shapes: tuple[tuple[int, int], ...]
    seconds: float
    warmup: int
    iterations: int | None
    streams: tuple[int, ...]
    clip: tuple[int, int, int]
    """End-to-end clip: width, height, frames."""


def detect_device() -> str:
    from chromastream.models.runtime.torch_backend import cuda_available

    return "cuda" if cuda_available() else "cpu"


def make_plan(args: argparse.Namespace) -> Plan:
    from chromastream.models.runtime.session import working_shape

    device = args.device or detect_device()
    hd = working_shape(1080, 1920, WORKING_SIZE, 32)
    if args.smoke:
        names = args.backends or ("onnxruntime", "torch")
        return Plan(device, tuple(names), (1, 2), ((64, 64), (64, 96)), 0.0, 1, 3, (1, 2), (320, 180, 4))
    gpu = device == "cuda"
    return Plan(
        device=device,
        backends=tuple(args.backends or (GPU_BACKENDS if gpu else CPU_BACKENDS)),
        batches=(1, 8, 32) if gpu else (1, 4),
        shapes=((WORKING_SIZE, WORKING_SIZE), hd),
        seconds=args.seconds,
        warmup=5,
        iterations=None,
        streams=tuple(args.streams or ((1, 2, 4, 8, 16, 32) if gpu else (1, 2))),
        clip=(1920, 1080, args.clip_frames or (90 if gpu else 30)),
    )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------------------------- model only


def bench_config(backend: Any, batch: int, shape: tuple[int, int], plan: Plan) -> dict[str, Any]:
    hints = np.zeros((batch, 3, *shape), dtype=np.float32)
    samples = time_backend_run(
        backend,
        batch,
        shape,
        hints,
        inputs=4,
        warmup=plan.warmup,
        iterations=plan.iterations,
        seconds=plan.seconds,
    )
    return rate_summary(batch, shape, samples)


def bench_backend(name: str, model: Path, plan: Plan) -> dict[str, Any]:
    from chromastream.models.runtime.base import BackendError
    from chromastream.models.runtime.registry import create_backend

    torch_cuda = None
    if plan.device == "cuda":
        import torch

        torch_cuda = torch.cuda
        torch_cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        backend = create_backend(name, model)
    except BackendError as exc:
        return {"name": name, "available": False, "reason": str(exc)}
    except Exception as exc:  # a backend that breaks while loading must not hide the others' figures
        return {"name": name, "available": False, "reason": f"failed to load: {type(exc).__name__}: {exc}"}
    load_s = time.perf_counter() - started
    runs = []
    first_call: dict[str, float] = {}
    errors: list[str] = []
    for shape in plan.shapes:
        for batch in plan.batches:
            t0 = time.perf_counter()
            try:
                runs.append(bench_config(backend, batch, shape, plan))
            except Exception as exc:  # a failing configuration is a result too; the others still run
                errors.append(f"b{batch} {shape[0]}x{shape[1]}: {type(exc).__name__}: {exc}")
                print(f"  {name} b{batch} {shape[0]}x{shape[1]}: FAILED {errors[-1]}", flush=True)
                continue
            # torch.compile compiles on the first call of each shape: show what that costs.
            first_call[f"b{batch} {shape[0]}x{shape[1]}"] = time.perf_counter() - t0
            print(f"  {name} b{batch} {shape[0]}x{shape[1]}: {runs[-1]['fps']:.1f} fps", flush=True)
    if not runs:
        reason = "every configuration failed: " + "; ".join(errors)
        return {"name": name, "available": False, "reason": reason}
    memory: dict[str, Any]
    if torch_cuda is not None:
        memory = {"kind": "torch.cuda.max_memory_allocated", "mb": torch_cuda.max_memory_allocated() / 2**20}
    else:
        memory = {"kind": "process peak RSS so far (running maximum)", "mb": peak_rss_mb()}
    threads = None
    if name.startswith("torch"):
        import torch

        threads = torch.get_num_threads()
    return {
        "name": backend.name,
        "requested": name,
        "available": True,
        "load_s": load_s,
        "config_seconds": first_call,
        "threads": threads,
        "runs": runs,
        "errors": errors,
        "memory": memory,
    }


def geometric_mean_fps(entry: dict[str, Any]) -> float:
    fps = [r["fps"] for r in entry["runs"] if r["fps"] > 0]
    return math.exp(sum(math.log(f) for f in fps) / len(fps)) if fps else 0.0


# ------------------------------------------------------------------------------------------- end to end


def make_clip(path: Path, width: int, height: int, frames: int) -> Path:
    from benchmarks.video_speed import ClipSpec
    from benchmarks.video_speed import make_clip as write_clip

    return write_clip(path, ClipSpec(f"{width}x{height}", width, height, 30, frames / 30), audio=False)


class _Stream:
    """One synthetic stream: its decoder and its encoder (to a file in the temp folder)."""

    def __init__(self, src: Path, dst: Path):
        import av

        from benchmarks.video_speed import encoder_settings

        self.input = av.open(str(src))
        self.frames = self.input.decode(video=0)
        settings = encoder_settings()
        self.output = av.open(str(dst), "w")
        self.video: Any = self.output.add_stream(
            settings["codec"], rate=30, options=dict(settings["options"])
        )
        vin = self.input.streams.video[0]
        self.video.width, self.video.height = vin.codec_context.width, vin.codec_context.height
        self.video.pix_fmt = "yuv420p"
        self.index = 0

    def decode(self) -> np.ndarray:
        """The next frame's Y plane (uint8 ``[H, W]``)."""
        frame = next(self.frames)
        planes = frame.to_ndarray()  # yuv420p: Y on top of U and V
        return np.ascontiguousarray(planes[: frame.height], dtype=np.uint8)

    def encode(self, y: np.ndarray, u: np.ndarray | None, v: np.ndarray | None) -> None:
        import av

        h, w = y.shape
        if u is None or v is None:
            u = v = np.full((h // 2, w // 2), 128, dtype=np.uint8)
        data = np.concatenate([y, u.reshape(-1, w), v.reshape(-1, w)])
        frame = av.VideoFrame.from_ndarray(data, format="yuv420p")
        frame.pts = self.index
        frame.time_base = Fraction(1, 30)
        self.index += 1
        for packet in self.video.encode(frame):
            self.output.mux(packet)

    def close(self) -> None:
        for packet in self.video.encode(None):
            self.output.mux(packet)
        self.output.close()
        self.input.close()


def run_streams(
    clip: Path, n: int, frames: int, backend: Any | None, ops: FrameOps | None, tmp: Path
) -> dict[str, Any]:
    """Decode -> (pre, batched model, post) -> encode of ``n`` streams in lock step, the frame work done
    by ``ops`` (what the pipeline uses for that backend); ``backend=None`` is the limit."""
    from chromastream.models.runtime.session import working_shape

    h, w = clip_size(clip)
    streams = [_Stream(clip, tmp / f"out-{n}-{i}-{id(backend)}-{id(ops)}.mp4") for i in range(n)]
    ticks: list[float] = []
    with ThreadPoolExecutor(max_workers=n) as pool:
        if backend is not None and ops is not None:
            info = backend.info
            shape = working_shape(h, w, WORKING_SIZE, info.size_multiple)
            states = np.zeros(info.state_shape(n, *shape), dtype=np.float32)
            hints = np.zeros((n, 3, *shape), dtype=np.float32)
        started = time.perf_counter()
        for tick in range(E2E_WARMUP + frames):
            if tick == E2E_WARMUP:  # graph capture, kernel compilation and encoder start-up stay untimed
                ticks.clear()
                started = time.perf_counter()
            t0 = time.perf_counter()
            lumas = list(pool.map(_Stream.decode, streams))
            chroma: list[tuple[np.ndarray | None, np.ndarray | None]] = [(None, None)] * n
            if backend is not None and ops is not None:
                L = np.concatenate(
                    list(pool.map(ops.network_l, lumas, *_repeat(n, shape, False, info.l_scale)))
                )
                ab, states = backend.run(L, hints, states)
                abs_ = [ab[i] * info.ab_scale for i in range(n)]
                chroma = [(u, v) for _, u, v in pool.map(ops.to_yuv420, lumas, abs_, [False] * n)]
            list(pool.map(_Stream.encode, streams, lumas, *zip(*chroma, strict=True)))
            ticks.append(time.perf_counter() - t0)
        wall = time.perf_counter() - started
        list(pool.map(lambda s: s.close(), streams))
    per_stream_fps = frames / wall
    return {
        "streams": n,
        "frames_per_stream": frames,
        "seconds": wall,
        "fps_per_stream": per_stream_fps,
        "fps_total": per_stream_fps * n,
        "holds_realtime": per_stream_fps >= TARGET_FPS,
        "latency_ms": percentiles_ms(ticks),
        "warmup_ticks": E2E_WARMUP,
    }


def _repeat(n: int, *values: Any) -> list[list[Any]]:
    """Each value repeated ``n`` times: the constant arguments of an ``Executor.map`` over ``n`` streams."""
    return [[v] * n for v in values]


def clip_size(path: Path) -> tuple[int, int]:
    import av

    with av.open(str(path)) as container:
        ctx = container.streams.video[0].codec_context
        return int(ctx.height), int(ctx.width)


def end_to_end(backend: Any, plan: Plan) -> dict[str, Any]:
    width, height, frames = plan.clip
    rows: list[dict[str, Any]] = []
    ops, cpu_ops = frame_ops_for(backend), CpuFrameOps()
    with tempfile.TemporaryDirectory(prefix="chromastream-throughput-") as folder:
        tmp = Path(folder)
        clip = make_clip(tmp / "clip.mp4", width, height, E2E_WARMUP + frames)
        for n in plan.streams:
            row: dict[str, Any] = {"streams": n, "model": run_streams(clip, n, frames, backend, ops, tmp)}
            if ops.name != cpu_ops.name:  # the same model with the frame work on the CPU, for comparison
                row["model_cpu_frames"] = run_streams(clip, n, frames, backend, cpu_ops, tmp)
            row["limit"] = run_streams(clip, n, frames, None, None, tmp)
            rows.append(row)
            cpu_note = (
                f", frame work on the CPU {row['model_cpu_frames']['fps_per_stream']:.1f}"
                if "model_cpu_frames" in row
                else ""
            )
            print(
                f"  {n} x {width}x{height}: {row['model']['fps_per_stream']:.1f} fps/stream "
                f"(limit {row['limit']['fps_per_stream']:.1f}{cpu_note})",
                flush=True,
            )
    held = [r["streams"] for r in rows if r["model"]["holds_realtime"]]
    held_limit = [r["streams"] for r in rows if r["limit"]["holds_realtime"]]
    return {
        "clip": {"width": width, "height": height, "frames": frames, "fps": 30, "codec": "H.264"},
        "backend": backend.name,
        "frame_ops": ops.name,
        "target_fps_per_stream": TARGET_FPS,
        "rows": rows,
        "streams_held": max(held, default=0),
        "streams_held_limit": max(held_limit, default=0),
        "limit_definition": "same loop without the model: decode + encode (colorize command's settings)",
    }


# ------------------------------------------------------------------------------------------- references


def gpu_references() -> dict[str, Any]:
    import torch

    n = 1 << 28  # 512 MiB of fp16
    src = torch.empty(n, dtype=torch.float16, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    torch.cuda.synchronize()
    copy_gbs = 2 * src.nbytes * 10 / (time.perf_counter() - t0) / 1e9  # read + write
    del src, dst
    a = torch.randn(8192, 8192, dtype=torch.float16, device="cuda")
    b = torch.randn_like(a)
    a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    tflops = 2 * 8192**3 * 20 / (time.perf_counter() - t0) / 1e12
    return {
        "gpu": torch.cuda.get_device_name(),
        "d2d_copy_gb_s": copy_gbs,
        "fp16_matmul_tflops": tflops,
        "what": "device-to-device copy of 512 MiB (read + write bytes); fp16 matmul 8192^3",
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from chromastream.models.runtime.registry import auto_ranking

    require_model_file(args.model)
    plan = make_plan(args)
    model: Path = args.model
    started = time.perf_counter()
    load_start = load_average()
    result: dict[str, Any] = {
        "benchmark": "throughput",
        "date": now_iso(),
        "device": plan.device,
        "smoke": bool(args.smoke),
        "machine": machine_tags(),
        "model": model_tags(model, "?", "several"),
        "plan": {
            "backends": list(plan.backends),
            "batches": list(plan.batches),
            "shapes": [list(s) for s in plan.shapes],
            "seconds_per_config": plan.seconds,
            "streams": list(plan.streams),
        },
    }
    if plan.device == "cuda":
        result["reference"] = gpu_references()
    else:
        result["reference"] = measure_matmul_gflops(bool(args.smoke))
    entries = []
    for name in plan.backends:
        print(f"{name}:", flush=True)
        entries.append(bench_backend(name, model, plan))
        if not entries[-1]["available"]:
            print(f"  unavailable: {entries[-1]['reason']}", flush=True)
    result["backends"] = entries
    ran = [e for e in entries if e["available"]]
    if not ran:
        raise BenchmarkError("no backend could run: " + "; ".join(e["reason"] for e in entries))
    for e in ran:
        e["fps_geomean"] = geometric_mean_fps(e)
    fastest = max(ran, key=lambda e: e["fps_geomean"])
    ranking = auto_ranking()
    auto = next((n for n in ranking if any(e["requested"] == n for e in ran)), None)
    result["choice"] = {
        "fastest": fastest["requested"],
        "auto_ranking": list(ranking),
        "auto_picks": auto,
        "agrees": auto == fastest["requested"],
        "rule": "highest geometric mean of fps over the batch x shape configurations",
    }
    result["model"]["version"] = _model_version(model)
    from chromastream.models.runtime.registry import create_backend

    print(f"end to end with {fastest['requested']}:", flush=True)
    try:
        result["end_to_end"] = end_to_end(create_backend(fastest["requested"], model), plan)
    except Exception as exc:  # keep the model-only figures when the stream loop breaks
        result["end_to_end"] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"  end to end FAILED: {result['end_to_end']['error']}", flush=True)
    result["loadavg_end"] = load_average()
    result["loadavg_start"] = load_start
    result["peak_rss_mb"] = peak_rss_mb()
    result["seconds"] = time.perf_counter() - started
    return result


def _model_version(path: Path) -> str:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return str(session.get_modelmeta().custom_metadata_map.get("chromastream.version", "unknown"))


def print_summary(result: dict[str, Any]) -> None:
    print(f"\nthroughput on {result['device']}  model {result['model']['version']}")
    print(f"{'backend':<15}{'batch':>6}{'shape':>10}{'fps':>9}{'p50 ms':>9}{'p95 ms':>9}")
    for e in result["backends"]:
        if not e["available"]:
            print(f"{e['name']:<15} unavailable: {e['reason']}")
            continue
        for r in e["runs"]:
            lat = r["latency_ms"]
            shape = f"{r['height']}x{r['width']}"
            print(
                f"{e['name']:<15}{r['batch']:>6}{shape:>10}{r['fps']:>9.1f}{lat['p50']:>9.2f}{lat['p95']:>9.2f}"
            )
    c = result["choice"]
    print(f"fastest: {c['fastest']}; auto picks {c['auto_picks']} ({'agrees' if c['agrees'] else 'DIFFERS'})")
    e2e = result["end_to_end"]
    if "error" in e2e:
        print(f"end to end failed: {e2e['error']}")
    else:
        print(
            f"streams holding {e2e['target_fps_per_stream']:.0f} fps at {e2e['clip']['width']}x"
            f"{e2e['clip']['height']}: {e2e['streams_held']} "
            f"(limit without model: {e2e['streams_held_limit']})"
        )
    print(f"load average {result['loadavg_start']} -> {result['loadavg_end']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description=(
            "Model-only fps and p50/p95 of every available backend over batch x working shape, the fastest "
            "recorded beside auto's pick; end-to-end N synthetic 1080p H.264 streams beside the decode + "
            "encode limit; device memory. Writes throughput_<device>.json."
        ),
    )
    add_model_arg(parser)
    parser.add_argument("--backends", nargs="+", default=None, help="backends to measure (default: all)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if present")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per configuration")
    parser.add_argument("--clip-frames", type=int, default=None, help="timed frames per end-to-end stream")
    parser.add_argument(
        "--streams",
        type=int,
        nargs="+",
        default=None,
        help="end-to-end stream counts (default: 1..32 on a GPU)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and clip, a few calls: seconds")
    add_output_args(parser, "throughput_<device>.json", shared=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_and_write(
        lambda result: f"throughput_{result['device']}", args.out_dir, lambda: run(args), print_summary
    )


if __name__ == "__main__":
    sys.exit(main())


# ------------------------------------------------------------------------------------------- report


def report_section(data: dict[str, Any]) -> list[str]:
    """The RESULTS.md section for one ``throughput_<device>.json`` (called by ``benchmarks.report``)."""
    device = data.get("device", "?")
    machine = data.get("machine") or {}
    model = data.get("model") or {}
    backends = ", ".join((data.get("plan") or {}).get("backends") or [])
    lines = [f"## Throughput ({device}: {backends})", ""]
    if data.get("smoke"):
        lines += ["> Smoke run (`--smoke`): tiny shapes, not a final figure.", ""]
    lines += [
        f"Model `{model.get('version', '?')}` (sha256 `{model.get('sha256', '?')}`), run {data.get('date')}; "
        f"load average {data.get('loadavg_start')} at start, {data.get('loadavg_end')} at the end "
        f"({machine.get('cores_usable', '?')} usable cores, shared with other jobs). Model only: "
        "`backend.run` on numpy arrays, state carried, after warm-up; fps counts frames.",
        "",
        "| backend | batch | working shape | fps | p50 ms | p95 ms | memory MB |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    skipped = []
    for e in data.get("backends") or []:
        if not e.get("available"):
            skipped.append(f"- {e.get('name')}: unavailable ({e.get('reason')})")
            continue
        for r in e.get("runs") or []:
            lat = r.get("latency_ms") or {}
            lines.append(
                f"| {e.get('name')} | {r.get('batch')} | {r.get('height')}x{r.get('width')} | "
                f"{num(r.get('fps'), 1)} | {num(lat.get('p50'), 2)} | {num(lat.get('p95'), 2)} | "
                f"{num((e.get('memory') or {}).get('mb'), 0)} |"
            )
    choice = data.get("choice") or {}
    lines += ["", *skipped, ""] if skipped else [""]
    lines += [
        f"Fastest ({choice.get('rule', '?')}): **{choice.get('fastest')}**; `auto` picks "
        f"{choice.get('auto_picks')} ({'agrees' if choice.get('agrees') else '**differs**'}).",
        "",
    ]
    ref = data.get("reference") or {}
    if "fp16_matmul_tflops" in ref:
        lines += [
            f"Limits in the same run: device-to-device copy {num(ref.get('d2d_copy_gb_s'), 1)} GB/s, "
            f"FP16 matmul {num(ref.get('fp16_matmul_tflops'), 1)} TFLOP/s ({ref.get('gpu')}).",
            "",
        ]
    else:
        lines += [
            f"CPU reference in the same run: {ref.get('what')} {num(ref.get('gflops_median'), 1)} GFLOP/s.",
            "",
        ]
    e2e = data.get("end_to_end") or {}
    clip = e2e.get("clip") or {}
    lines += [
        f"End to end with {e2e.get('backend')}: N synthetic {clip.get('width')}x{clip.get('height')} H.264 "
        f"streams, {clip.get('frames')} frames each, decode -> colorize (one batched call per frame time) "
        f"-> encode, the frame work (luma -> network input, ab -> U, V) on {e2e.get('frame_ops', 'cpu')}; "
        f"the limit is {e2e.get('limit_definition')}.",
        "",
        "| streams | fps per stream | p50 ms | p95 ms | frame work on the CPU: fps | limit fps per stream "
        "| limit p50 ms | holds 30 fps |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in e2e.get("rows") or []:
        m, lim = row.get("model") or {}, row.get("limit") or {}
        ml, ll = m.get("latency_ms") or {}, lim.get("latency_ms") or {}
        cpu_frames = (row.get("model_cpu_frames") or {}).get("fps_per_stream")
        lines.append(
            f"| {row.get('streams')} | {num(m.get('fps_per_stream'), 1)} | {num(ml.get('p50'), 1)} | "
            f"{num(ml.get('p95'), 1)} | {num(cpu_frames, 1) if cpu_frames is not None else 'same'} | "
            f"{num(lim.get('fps_per_stream'), 1)} | {num(ll.get('p50'), 1)} | "
            f"{'yes' if m.get('holds_realtime') else 'no'} |"
        )
    first = (e2e.get("rows") or [{}])[0].get("model") or {}
    if e2e.get("rows") and "warmup_ticks" not in first:
        lines += [
            "",
            "This run timed the end-to-end loop from its first frame: CUDA graph capture for each new batch "
            "size and kernel compilation are inside these figures (their p50 shows the steady state).",
        ]
    lines += [
        "",
        f"Streams holding {num(e2e.get('target_fps_per_stream'), 0)} fps: {e2e.get('streams_held')} "
        f"(limit without the model: {e2e.get('streams_held_limit')}); "
        f"peak RSS {num(data.get('peak_rss_mb'), 0)} MB.",
        "",
    ]
    return lines
