"""Where the colorizer's time goes on a GPU: a ``torch.profiler`` look at what ``serve`` runs, and the same
network's frames/s with and without CUDA graphs, channels-last and ``torch.compile``.

On a CUDA machine (batch 32 at 256x256 in FP16 unless told otherwise):

- **served profile**: ``backend.run`` of the ``torch-cuda`` backend, created through the registry exactly
  as ``serve`` creates it (FP16 weights, channels-last, one CUDA graph per batch bucket), numpy in and numpy
  out, so the upload, the FP16 conversion, the copies into the graph's static buffers and the download are
  in it. Replayed graphs show their kernels but not the operators that launched them, so here kernels are
  sorted into categories by name.
- **eager profile**: the same network built the same way (same weights, dtype, layout) without CUDA
  graphs, on device tensors, with a profiler range around each top-level module of
  :class:`~chromastream.models.colorizer.network.Colorizer`. Every kernel is then known by its operator,
  its input shapes and its module, which gives the time of the ConvGRU memory (``recurrent``) and of each
  module.
- **variants**: frames/s of the network on device tensors with CUDA graphs on/off x channels-last on/off,
  and through ``torch.compile`` (modes ``reduce-overhead`` and ``max-autotune-no-cudagraphs`` by default),
  beside ``backend.run`` and ``backend.forward`` of the served backend.

Per profile: GPU time per batch (the union of its kernels and copies, so overlaps count once), the span
from the batch's first to its last GPU activity and the share of that span the GPU sat idle, the host's
wall time per batch with the time spent in CUDA API calls (launches, synchronization) and the number of
launches, time by category (:data:`CATEGORIES`), the top kernels with their share, and the bytes copied
host<->device per batch and whether the host side was pageable memory. Findings are derived from those
numbers by :func:`findings` (thresholds in :data:`THRESHOLDS`), never written by hand.

On a CPU (``--device cpu``, a tiny batch and size by default) the same code runs on the CPU's profile: the
"kernels" are then the ATen operators' self time, the "GPU" is the profiled thread, and graphs are skipped.
That run exists so the trace parsing is tested on a real profile; it is never a GPU figure and it is
written to ``gpu_profile_cpu.json``, not ``gpu_profile.json``.

    python -m benchmarks.gpu_profile                 # CUDA: a few minutes (torch.compile takes most of it)
    python -m benchmarks.gpu_profile --no-compile    # CUDA, without the torch.compile rows: under a minute
    python -m benchmarks.gpu_profile --device cpu --out-dir /tmp/gp     # CPU smoke run: seconds

The JSON is written again after each stage (``"complete": false`` until the end), so a run stopped by a
time limit keeps what it measured. ``--trace-dir`` keeps the Chrome traces (open them in Perfetto).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    BenchmarkError,
    add_model_arg,
    add_output_args,
    load_average,
    machine_line,
    machine_tags,
    model_tags,
    now_iso,
    num,
    require_model_file,
    run_and_write,
    write_json,
)

NAME = {"cuda": "gpu_profile", "cpu": "gpu_profile_cpu"}
BATCH_LABEL = "chromastream.batch"
"""The profiler range around each profiled batch: a kernel counts to the range its launch sat in."""
MODULE_PREFIX = "chromastream.module."
RECURRENT_MODULES = ("gru",)
BETWEEN_MODULES = "(between modules)"
"""Top-level modules of the colorizer whose kernels count as ``recurrent`` (the ConvGRU memory)."""
COMPILE_MODES = ("reduce-overhead", "max-autotune-no-cudagraphs")
TOP_KERNELS = 15

CONV = "convolution/GEMM"
ELEMENTWISE = "elementwise/activation"
NORM = "normalization"
H2D = "memcpy H2D"
D2H = "memcpy D2H"
COPY = "copies (layout, dtype, cat)"
RECURRENT = "recurrent (ConvGRU)"
OTHER = "other (pooling, resampling, allocation)"
CATEGORIES = (CONV, ELEMENTWISE, NORM, H2D, D2H, COPY, RECURRENT, OTHER)

THRESHOLDS = {
    "memcpy_share": 0.10,
    "copy_share": 0.10,
    "idle_fraction": 0.20,
    "top_kernel_share": 0.20,
    "conv_share": 0.50,
    "recurrent_share": 0.10,
    "round_trip_cost": 0.10,
    "speedup": 1.10,
}
"""Where a number becomes a finding (shares of kernel time, fractions of a span, ratios of frames/s)."""

# First match wins; names (kernel names on a GPU, ATen operator names on a CPU) are tried before the
# operators that launched them, so a layout kernel inside a convolution counts as a copy.
_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        COPY,
        re.compile(
            r"nchwtonhwc|nhwctonchw|nchw_?to_?nhwc|nhwc_?to_?nchw|transpose|permute|copy|contiguous|"
            r"catarray|aten::cat$|clone|aten::_?to(_copy)?$|reorder",
            re.IGNORECASE,
        ),
    ),
    (NORM, re.compile(r"batch_?norm|\bbn_|layer_?norm|group_?norm|instance_?norm|rms_?norm", re.IGNORECASE)),
    (
        CONV,
        re.compile(
            r"conv(?!ert)|gemm|xmma|cutlass|implicit|winograd|fprop|cublas|matmul|\bmma|[sh]16816|[sh]1688|"
            r"[sh]884|triton_tem_|addmm|aten::b?mm$|aten::linear",
            re.IGNORECASE,
        ),
    ),
    (
        ELEMENTWISE,
        re.compile(
            r"elementwise|pointwise|vectorized|triton_poi_|relu|sigmoid|tanh|gelu|silu|hardtanh|clamp|"
            r"aten::(add|mul|sub|div|rsub|neg|exp|pow|where|fill|zero|sqrt|abs|maximum|minimum|gt|lt|le|ge|eq)_?$",
            re.IGNORECASE,
        ),
    ),
)

HOST_CATS = ("cpu_op", "user_annotation", "cuda_runtime", "cuda_driver")
DEVICE_CATS = {"kernel": "kernel", "gpu_memcpy": "memcpy", "gpu_memset": "memset"}


def categorize(
    name: str, ops: Sequence[str] = (), scopes: Sequence[str] = (), kind: str = "kernel", copy_kind: str = ""
) -> str:
    """The category of one piece of device work: a kernel, copy or set on a GPU (``kind`` ``kernel``,
    ``memcpy``, ``memset``), an operator's self time on a CPU (``cpu_op``). ``ops`` are the operators it
    ran under, innermost first, and ``scopes`` the profiler ranges (modules) around it."""
    if kind == "memcpy":
        text = f"{name} {copy_kind}"
        return H2D if "HtoD" in text else D2H if "DtoH" in text else COPY
    if any(scope == MODULE_PREFIX + module for scope in scopes for module in RECURRENT_MODULES):
        return RECURRENT
    if kind == "memset":
        return OTHER
    for text in (name, *ops):
        for category, pattern in _RULES:
            if pattern.search(text):
                return category
    return OTHER


# ------------------------------------------------------------------------------------------ the trace


@dataclass(frozen=True)
class Work:
    """One piece of device work in a profile, with what it is counted to."""

    name: str
    kind: str
    start: float
    end: float
    time_us: float
    """The time it counts for: its duration on a GPU, the operator's self time on a CPU."""
    batch: int | None
    ops: tuple[str, ...]
    scopes: tuple[str, ...]
    shapes: str | None
    category: str
    bytes: int = 0
    pageable: bool = False


def _end(event: dict[str, Any]) -> float:
    return float(event["ts"]) + float(event.get("dur", 0.0))


def _ancestors(events: list[dict[str, Any]]) -> dict[int, list[int]]:
    """For every host event (by index): the host events it nests in on its thread, outermost first."""
    by_thread: dict[tuple[Any, Any], list[int]] = defaultdict(list)
    for i, event in enumerate(events):
        if event.get("cat") in HOST_CATS:
            by_thread[(event.get("pid"), event.get("tid"))].append(i)
    found: dict[int, list[int]] = {}
    for indices in by_thread.values():
        indices.sort(key=lambda i: (float(events[i]["ts"]), -float(events[i].get("dur", 0.0))))
        stack: list[int] = []
        for i in indices:
            ts = float(events[i]["ts"])
            while stack and _end(events[stack[-1]]) <= ts:
                stack.pop()
            found[i] = list(stack)
            stack.append(i)
    return found


def _dims(dim: Any) -> str:
    """One input's shape as ``2x64x4x4`` (a list of tensors, as ``cat`` takes, in parentheses)."""
    if not isinstance(dim, list) or not dim:
        return "-"
    if all(isinstance(d, list) for d in dim):
        return "(" + ", ".join(_dims(d) for d in dim) + ")"
    return "x".join(str(d) for d in dim)


def _shapes(event: dict[str, Any] | None) -> str | None:
    dims = ((event or {}).get("args") or {}).get("Input Dims")
    return " ".join(_dims(dim) for dim in dims) if dims else None


@dataclass
class _Context:
    """What a host event sits in: its operators (innermost first), module ranges and batch."""

    ops: tuple[str, ...]
    scopes: tuple[str, ...]
    batch: int | None
    op_event: dict[str, Any] | None


def parse_trace(events: list[dict[str, Any]], device: str) -> tuple[list[Work], dict[str, Any]]:
    """The device work of a Chrome trace written by ``torch.profiler`` and the host-side figures per batch.

    On a GPU the work is every kernel, memcpy and memset, tied to the CUDA API call that launched it (by
    correlation id) and through it to the operators, module ranges and batch around that call. On a CPU
    it is every operator's self time inside a batch."""
    events = [e for e in events if isinstance(e, dict) and e.get("ph") == "X" and "ts" in e]
    ancestors = _ancestors(events)
    batches = sorted(
        (
            i
            for i, e in enumerate(events)
            if e.get("cat") == "user_annotation" and e.get("name") == BATCH_LABEL
        ),
        key=lambda i: float(events[i]["ts"]),
    )
    batch_of = {index: n for n, index in enumerate(batches)}

    def context(i: int, include_self: bool = False) -> _Context:
        chain = [*ancestors.get(i, []), *([i] if include_self else [])]
        ops = [events[j] for j in chain if events[j].get("cat") == "cpu_op"]
        scopes = tuple(
            str(events[j]["name"])
            for j in chain
            if events[j].get("cat") == "user_annotation" and str(events[j]["name"]).startswith(MODULE_PREFIX)
        )
        batch = next((batch_of[j] for j in chain if j in batch_of), None)
        return _Context(tuple(str(e["name"]) for e in reversed(ops)), scopes, batch, ops[-1] if ops else None)

    work: list[Work] = []
    if device == "cuda":
        launches = {
            (e.get("args") or {}).get("correlation"): i
            for i, e in enumerate(events)
            if e.get("cat") in ("cuda_runtime", "cuda_driver")
        }
        by_external = {
            (e.get("args") or {}).get("External id"): i
            for i, e in enumerate(events)
            if e.get("cat") in ("cpu_op", "user_annotation")
        }
        for event in events:
            kind = DEVICE_CATS.get(str(event.get("cat")))
            if kind is None:
                continue
            args = event.get("args") or {}
            launch = launches.get(args.get("correlation"))
            if launch is not None:
                ctx = context(launch)
            elif args.get("External id") in by_external:
                ctx = context(by_external[args["External id"]], include_self=True)
            else:
                ctx = _Context((), (), None, None)
            name = str(event["name"])
            copy_kind = str(args.get("copy kind", ""))
            work.append(
                Work(
                    name=name,
                    kind=kind,
                    start=float(event["ts"]),
                    end=_end(event),
                    time_us=float(event.get("dur", 0.0)),
                    batch=ctx.batch,
                    ops=ctx.ops,
                    scopes=ctx.scopes,
                    shapes=_shapes(ctx.op_event),
                    category=categorize(name, ctx.ops, ctx.scopes, kind, copy_kind),
                    bytes=int(args.get("bytes", 0) or 0),
                    pageable=kind == "memcpy" and "pageable" in f"{name} {args}".lower(),
                )
            )
    else:
        children_time: dict[int, float] = defaultdict(float)
        for i, event in enumerate(events):
            if event.get("cat") != "cpu_op":
                continue
            parent = next(
                (j for j in reversed(ancestors.get(i, [])) if events[j].get("cat") == "cpu_op"), None
            )
            if parent is not None:
                children_time[parent] += float(event.get("dur", 0.0))
        for i, event in enumerate(events):
            if event.get("cat") != "cpu_op":
                continue
            ctx = context(i)
            if batches and ctx.batch is None:
                continue  # outside the profiled batches (warm-up, synchronization)
            name = str(event["name"])
            work.append(
                Work(
                    name=name,
                    kind="cpu_op",
                    start=float(event["ts"]),
                    end=_end(event),
                    time_us=max(float(event.get("dur", 0.0)) - children_time[i], 0.0),
                    batch=ctx.batch,
                    ops=ctx.ops,
                    scopes=ctx.scopes,
                    shapes=_shapes(event),
                    category=categorize(name, ctx.ops, ctx.scopes, "cpu_op"),
                )
            )
    host = []
    for n, index in enumerate(batches):
        inside = [
            events[i]
            for i, chain in ancestors.items()
            if index in chain and events[i].get("cat") in ("cuda_runtime", "cuda_driver")
        ]
        host.append(
            {
                "batch": n,
                "wall_us": float(events[index].get("dur", 0.0)),
                "start": float(events[index]["ts"]),
                "end": _end(events[index]),
                "api_us": sum(float(e.get("dur", 0.0)) for e in inside),
                # Waiting for the GPU: synchronization, and copies (a copy to or from pageable memory
                # returns only when the GPU has done it).
                "sync_us": sum(float(e.get("dur", 0.0)) for e in inside if _waits(str(e["name"]))),
                "launches": sum(1 for e in inside if "aunch" in str(e["name"])),
            }
        )
    return work, {"batches": host}


def _waits(api_call: str) -> bool:
    return "ynchronize" in api_call or "Memcpy" in api_call


def _union_us(intervals: Iterable[tuple[float, float]]) -> float:
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def summarize(work: list[Work], host: dict[str, Any], device: str, what: str) -> dict[str, Any]:
    """The figures of one profile (per batch: means over the profiled batches)."""
    batches = host["batches"]
    n = max(len(batches), 1)
    total_us = sum(w.time_us for w in work) or 1e-9
    by_category: dict[str, float] = defaultdict(float)
    for w in work:
        by_category[w.category] += w.time_us
    categories = [
        {"category": c, "ms_per_batch": by_category[c] / n / 1000.0, "share": by_category[c] / total_us}
        for c in CATEGORIES
    ]
    groups: dict[str, list[Work]] = defaultdict(list)
    for w in work:
        groups[w.name].append(w)
    ranked = sorted(groups.items(), key=lambda kv: -sum(w.time_us for w in kv[1]))
    top = []
    for name, items in ranked[:TOP_KERNELS]:
        time_us = sum(w.time_us for w in items)
        op_time: dict[str, float] = defaultdict(float)
        for w in items:
            if w.ops:
                op_time[w.ops[0]] += w.time_us
        top.append(
            {
                "name": name,
                "category": Counter(w.category for w in items).most_common(1)[0][0],
                "calls_per_batch": len(items) / n,
                "ms_per_batch": time_us / n / 1000.0,
                "share": time_us / total_us,
                "ops": [op for op, _ in sorted(op_time.items(), key=lambda kv: -kv[1])[:2]],
                "shapes": Counter(w.shapes for w in items if w.shapes).most_common(1)[0][0]
                if any(w.shapes for w in items)
                else None,
                "modules": sorted({s.removeprefix(MODULE_PREFIX) for w in items for s in w.scopes[-1:]}),
            }
        )
    modules: dict[str, float] = defaultdict(float)
    if any(w.scopes for w in work):
        for w in work:
            modules[w.scopes[-1].removeprefix(MODULE_PREFIX) if w.scopes else BETWEEN_MODULES] += w.time_us
    memcpy = {}
    for key, category in (("h2d", H2D), ("d2h", D2H)):
        copies = [w for w in work if w.category == category]
        memcpy[key] = {
            "count_per_batch": len(copies) / n,
            "bytes_per_batch": sum(w.bytes for w in copies) / n,
            "ms_per_batch": sum(w.time_us for w in copies) / n / 1000.0,
            "pageable": any(w.pageable for w in copies) if copies else None,
        }
    per_batch = []
    for b in batches:
        mine = [w for w in work if w.batch == b["batch"]]
        if device == "cuda":
            span = (max(w.end for w in mine) - min(w.start for w in mine)) if mine else 0.0
        else:
            span = b["wall_us"]
        busy = _union_us((w.start, w.end) for w in mine)
        per_batch.append(
            {
                "busy_ms": busy / 1000.0,
                "span_ms": span / 1000.0,
                "idle_fraction": max(0.0, 1.0 - busy / span) if span > 0 else None,
                "host_wall_ms": b["wall_us"] / 1000.0,
                "host_api_ms": b["api_us"] / 1000.0,
                "host_sync_ms": b["sync_us"] / 1000.0,
                "launches": b["launches"],
            }
        )

    def mean(key: str) -> float | None:
        values = [p[key] for p in per_batch if isinstance(p[key], int | float)]
        return float(np.mean(values)) if values else None

    busy_total = sum(p["busy_ms"] for p in per_batch)
    span_total = sum(p["span_ms"] for p in per_batch)
    unattributed = sum(w.time_us for w in work if w.batch is None)
    return {
        "what": what,
        "batches": len(batches),
        "timeline": {
            "busy_ms": mean("busy_ms"),
            "span_ms": mean("span_ms"),
            "idle_fraction": max(0.0, 1.0 - busy_total / span_total) if span_total > 0 else None,
            "host_wall_ms": mean("host_wall_ms"),
            "host_api_ms": mean("host_api_ms"),
            "host_sync_ms": mean("host_sync_ms"),
            "host_active_ms": (mean("host_wall_ms") or 0.0) - (mean("host_sync_ms") or 0.0),
            "launches": mean("launches"),
            "per_batch": per_batch,
        },
        "kernel_ms_per_batch": total_us / n / 1000.0,
        "unattributed_share": unattributed / total_us,
        "categories": categories,
        "top_kernels": top,
        "modules": [
            {"module": m, "ms_per_batch": t / n / 1000.0, "share": t / total_us}
            for m, t in sorted(modules.items(), key=lambda kv: -kv[1])
        ],
        "memcpy": memcpy,
    }


# ------------------------------------------------------------------------------------------ running


@dataclass(frozen=True)
class Plan:
    device: str
    batch: int
    size: int
    dtype: str
    warmup: int
    iterations: int
    profile_batches: int
    compile_modes: tuple[str, ...]


def make_plan(args: argparse.Namespace) -> Plan:
    cuda = args.device == "cuda"
    if args.no_compile:
        modes: tuple[str, ...] = ()
    elif args.compile_modes is not None:
        modes = tuple(args.compile_modes)
    else:
        modes = COMPILE_MODES if cuda else ()
    plan = Plan(
        device=args.device,
        batch=args.batch or (32 if cuda else 2),
        size=args.size or (256 if cuda else 64),
        dtype=args.dtype or ("fp16" if cuda else "fp32"),
        warmup=args.warmup if args.warmup is not None else (10 if cuda else 1),
        iterations=args.iterations or (50 if cuda else 3),
        profile_batches=args.profile_batches or (5 if cuda else 2),
        compile_modes=modes,
    )
    if plan.size % 32:
        raise BenchmarkError(f"--size {plan.size}: the network needs a multiple of 32")
    return plan


def _torch_for(device: str) -> Any:
    try:
        import torch
    except ImportError as exc:
        raise BenchmarkError("the GPU profile needs torch: pip install 'chromastream[gpu]'") from exc
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError(
            "torch sees no CUDA device here: run it on a CUDA machine (make gpu-check), or with "
            "--device cpu for a smoke run of the same code on the CPU (not a GPU figure)"
        )
    return torch


def gpu_tags(torch: Any) -> dict[str, Any]:
    """The card and its software: what a reader needs to compare two GPU profiles."""
    props = torch.cuda.get_device_properties(0)
    driver = None
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=driver_version", "--format=csv,noheader", "-i", "0"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            driver = out.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            driver = None
    return {
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "memory_gb": props.total_memory / 2**30,
        "multiprocessors": props.multi_processor_count,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "driver": driver,
    }


class _ModuleRanges:
    """A profiler range (``chromastream.module.<name>``) around every top-level module of a network, so
    each kernel of an eager profile is known by the module it ran in.

    Module hooks see calls of the module itself; the colorizer calls its encoder through
    ``encoder.features(...)``, so a module's ``features`` method, where it has one, gets the range too."""

    def __init__(self, model: Any, torch: Any):
        self._open: dict[int, list[Any]] = defaultdict(list)
        self._record_function = torch.profiler.record_function
        for name, child in model.named_children():
            label = MODULE_PREFIX + name
            child.register_forward_pre_hook(self._enter(label))
            child.register_forward_hook(self._exit())
            features = getattr(child, "features", None)
            if callable(features):
                child.features = self._ranged(features, label)

    def _ranged(self, method: Callable[..., Any], label: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            with self._record_function(label):
                return method(*args, **kwargs)

        return call

    def _enter(self, label: str) -> Callable[..., None]:
        def hook(module: Any, inputs: Any) -> None:
            scope = self._record_function(label)
            scope.__enter__()
            self._open[id(module)].append(scope)

        return hook

    def _exit(self) -> Callable[..., None]:
        def hook(module: Any, inputs: Any, output: Any) -> None:
            self._open[id(module)].pop().__exit__(None, None, None)

        return hook


@dataclass
class Setup:
    """The network, its inputs and the backend ``serve`` would create, on the plan's device."""

    torch: Any
    plan: Plan
    model: Any
    """float32 on the CPU; each variant copies it to its device, dtype and layout."""
    info: Any
    backend: Any
    dtype: Any

    def sync(self) -> None:
        if self.plan.device == "cuda":
            self.torch.cuda.synchronize()

    def network(self, channels_last: bool) -> Any:
        torch = self.torch
        model = copy.deepcopy(self.model).to(device=self.plan.device, dtype=self.dtype)
        return model.to(memory_format=torch.channels_last) if channels_last else model

    def inputs(self, channels_last: bool, dtype: Any = None) -> tuple[Any, Any, Any]:
        torch = self.torch
        b, s = self.plan.batch, self.plan.size
        gen = torch.Generator().manual_seed(0)
        tensors = (
            torch.rand(b, 1, s, s, generator=gen),
            torch.zeros(b, 3, s, s),
            torch.rand(*self.info.state_shape(b, s, s), generator=gen) * 2 - 1,
        )
        out = [t.to(device=self.plan.device, dtype=dtype or self.dtype) for t in tensors]
        if channels_last:
            out = [t.contiguous(memory_format=torch.channels_last) for t in out]
        return out[0], out[1], out[2]

    def numpy_inputs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        L, hints, state = self.inputs(False, self.torch.float32)
        return L.cpu().numpy(), hints.cpu().numpy(), state.cpu().numpy()


def setup(plan: Plan, model_path: Path) -> Setup:
    torch = _torch_for(plan.device)
    from chromastream.models.runtime.onnx_to_torch import load_colorizer
    from chromastream.models.runtime.registry import create_backend

    model, info = load_colorizer(model_path)
    # The backend serve runs for this device, created the way serve creates it: torch-cuda (FP16,
    # channels-last, CUDA graphs per bucket) on a GPU; torch (float32, eager) on a CPU.
    backend = create_backend("torch-cuda" if plan.device == "cuda" else "torch", model_path)
    dtype = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[plan.dtype]
    return Setup(torch, plan, model, info, backend, dtype)


def profile_steps(
    s: Setup, step: Callable[[], Any], what: str, trace_dir: Path | None, name: str
) -> dict[str, Any]:
    """Warm up, profile ``plan.profile_batches`` calls of ``step`` (each in a :data:`BATCH_LABEL` range)
    and summarize the trace."""
    torch = s.torch
    from torch.profiler import ProfilerActivity, profile, record_function

    for _ in range(max(s.plan.warmup, 1)):
        step()
    s.sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if s.plan.device == "cuda" else [])
    with torch.inference_mode(), profile(activities=activities, record_shapes=True) as prof:
        for _ in range(s.plan.profile_batches):
            with record_function(BATCH_LABEL):
                step()
        s.sync()
    with tempfile.TemporaryDirectory(prefix="gpu-profile-") as tmp:
        path = (trace_dir or Path(tmp)) / f"{name}.trace.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text(encoding="utf-8")).get("traceEvents") or []
    work, host = parse_trace(events, s.plan.device)
    if not work:
        raise BenchmarkError(f"the {name} profile recorded no device work (profiler without CUPTI?)")
    summary = summarize(work, host, s.plan.device, what)
    if trace_dir is not None:
        summary["trace"] = str(path)
    return summary


def rate(s: Setup, step: Callable[[], Any]) -> dict[str, Any]:
    """Frames/s of ``step`` (one batch per call), calls back to back and synchronized at the end: the rate
    a full pipeline could reach, host and device overlapping as they do when serving."""
    for _ in range(max(s.plan.warmup, 1)):
        step()
    s.sync()
    t0 = time.perf_counter()
    for _ in range(s.plan.iterations):
        step()
    s.sync()
    elapsed = time.perf_counter() - t0
    return {
        "fps": s.plan.batch * s.plan.iterations / elapsed,
        "ms_per_batch": elapsed / s.plan.iterations * 1000.0,
        "iterations": s.plan.iterations,
    }


def captured(s: Setup, fn: Callable[..., Any], inputs: Sequence[Any]) -> Callable[[], None]:
    """``fn(*inputs)`` as a replayed CUDA graph (torch's documented recipe: warm-up on a side stream, then
    capture), as the served backend does per bucket."""
    torch = s.torch
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn(*inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(*inputs)
    replay: Callable[[], None] = graph.replay
    return replay


def variant_rows(s: Setup, checkpoint: Callable[[list[dict[str, Any]]], None]) -> list[dict[str, Any]]:
    """Frames/s of the served calls and of the network with graphs x layout x compile."""
    torch, plan = s.torch, s.plan
    cuda = plan.device == "cuda"
    rows: list[dict[str, Any]] = []
    served_dtype = "fp16" if cuda else "fp32"

    def add(row: dict[str, Any], measure: Callable[[], dict[str, Any]] | None) -> None:
        t0 = time.perf_counter()
        if measure is not None:
            try:
                row.update(measure())
            except Exception as exc:  # one failing variant is a result; the others still run
                row["error"] = f"{type(exc).__name__}: {exc}"
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        fps = num(row.get("fps"), 1) if "fps" in row else row.get("error") or row.get("skipped")
        print(f"  {row['name']}: {fps}", flush=True)
        checkpoint(rows)

    L_np, hints_np, state_np = s.numpy_inputs()
    add(
        {
            "name": "served: backend.run (numpy in and out)",
            "api": "run",
            "cuda_graphs": cuda,
            "channels_last": cuda,
            "compile": None,
            "dtype": served_dtype,
        },
        lambda: rate(s, lambda: s.backend.run(L_np, hints_np, state_np)),
    )
    if cuda:
        dev = s.inputs(False, torch.float16)
        add(
            {
                "name": "served: backend.forward (device tensors)",
                "api": "forward",
                "cuda_graphs": True,
                "channels_last": True,
                "compile": None,
                "dtype": "fp16",
            },
            lambda: rate(s, lambda: s.backend.forward(*dev)),
        )
    for graphs in (False, True):
        for channels_last in (False, True):
            row = {
                "name": f"{'CUDA graph' if graphs else 'eager'}, "
                + ("channels-last" if channels_last else "NCHW"),
                "api": "network",
                "cuda_graphs": graphs,
                "channels_last": channels_last,
                "compile": None,
                "dtype": plan.dtype,
            }
            if graphs and not cuda:
                add({**row, "skipped": "CUDA graphs need CUDA"}, None)
                continue

            def measure(graphs: bool = graphs, channels_last: bool = channels_last) -> dict[str, Any]:
                net, inputs = s.network(channels_last), s.inputs(channels_last)
                with torch.inference_mode():
                    step = captured(s, net, inputs) if graphs else (lambda: net(*inputs))
                    return rate(s, step)

            add(row, measure)
    for mode in plan.compile_modes:
        row = {
            "name": f"torch.compile {mode}, channels-last",
            "api": "network",
            "cuda_graphs": "reduce-overhead" in mode and cuda,
            "channels_last": True,
            "compile": mode,
            "dtype": plan.dtype,
        }

        def measure_compiled(mode: str = mode) -> dict[str, Any]:
            net, inputs = s.network(True), s.inputs(True)
            compiled = torch.compile(net, mode=mode, dynamic=False)
            mark = getattr(torch.compiler, "cudagraph_mark_step_begin", None)

            def step() -> Any:
                if mark is not None and "reduce-overhead" in mode:
                    mark()  # cudagraph trees: each call is a new step whose outputs may be overwritten
                return compiled(*inputs)

            with torch.inference_mode():
                t0 = time.perf_counter()
                step()
                s.sync()
                compile_s = time.perf_counter() - t0
                return {**rate(s, step), "compile_s": compile_s}

        add(row, measure_compiled)
    return rows


def eager_profile(s: Setup, trace_dir: Path | None) -> dict[str, Any]:
    """The network without graphs, built as the served backend builds it (channels-last on a GPU), with a
    profiler range per top-level module."""
    channels_last = s.plan.device == "cuda"
    net = s.network(channels_last)
    _ModuleRanges(net, s.torch)
    inputs = s.inputs(channels_last)
    layout = "channels-last" if channels_last else "NCHW"
    with s.torch.inference_mode():
        return profile_steps(
            s,
            lambda: net(*inputs),
            f"the network eager ({s.plan.dtype}, {layout}) on device tensors, a range per top-level module",
            trace_dir,
            "eager",
        )


def run(args: argparse.Namespace) -> dict[str, Any]:
    require_model_file(args.model)
    plan = make_plan(args)
    started = time.perf_counter()
    s = setup(plan, args.model)
    torch = s.torch
    result: dict[str, Any] = {
        "benchmark": "gpu_profile",
        "date": now_iso(),
        "device": plan.device,
        "smoke": plan.device != "cuda",
        "complete": False,
        "machine": machine_tags(),
        "gpu": gpu_tags(torch) if plan.device == "cuda" else None,
        "model": model_tags(args.model, s.info.version, s.backend.name),
        "config": {
            "batch": plan.batch,
            "height": plan.size,
            "width": plan.size,
            "dtype": plan.dtype,
            "served_dtype": "fp16" if plan.device == "cuda" else "fp32",
            "warmup": plan.warmup,
            "iterations": plan.iterations,
            "profiled_batches": plan.profile_batches,
            "compile_modes": list(plan.compile_modes),
        },
        "categories": list(CATEGORIES),
        "thresholds": THRESHOLDS,
        "profiles": {},
        "variants": [],
    }
    name = NAME[plan.device]

    def checkpoint() -> None:
        result["seconds"] = time.perf_counter() - started
        write_json(args.out_dir, name, result)

    L_np, hints_np, state_np = s.numpy_inputs()
    print(
        f"profile of backend.run ({s.backend.name}), batch {plan.batch} at {plan.size}x{plan.size}:",
        flush=True,
    )
    result["profiles"]["served"] = profile_steps(
        s,
        lambda: s.backend.run(L_np, hints_np, state_np),
        f"backend.run of {s.backend.name} as serve creates it, numpy in and out",
        args.trace_dir,
        "served",
    )
    checkpoint()
    print("profile of the eager network with module ranges:", flush=True)
    result["profiles"]["eager"] = eager_profile(s, args.trace_dir)
    checkpoint()
    print("frames/s per variant:", flush=True)

    def keep(rows: list[dict[str, Any]]) -> None:
        result["variants"] = rows
        checkpoint()

    result["variants"] = variant_rows(s, keep)
    result["findings"] = findings(result)
    result["loadavg_end"] = load_average()
    result["complete"] = True
    result["seconds"] = time.perf_counter() - started
    return result


# ------------------------------------------------------------------------------------------ findings


def _pct(x: float) -> str:
    return f"{100.0 * x:.0f} %"


def _variant(data: dict[str, Any], **match: Any) -> dict[str, Any] | None:
    for row in data.get("variants") or []:
        if all(row.get(k) == v for k, v in match.items()) and isinstance(row.get("fps"), int | float):
            return dict(row)
    return None


def findings(data: dict[str, Any]) -> list[str]:
    """What the numbers say, one sentence each, from the profiles and variants of a result (the
    thresholds are :data:`THRESHOLDS`): written by this function, so they change when the numbers do."""
    out: list[str] = []
    unit = "GPU" if data.get("device") == "cuda" else "CPU"
    t = {**THRESHOLDS, **(data.get("thresholds") or {})}
    profiles = data.get("profiles") or {}
    served, eager = profiles.get("served"), profiles.get("eager")
    if served:
        share = {c["category"]: c["share"] for c in served.get("categories") or []}
        memcpy = share.get(H2D, 0.0) + share.get(D2H, 0.0)
        if memcpy >= t["memcpy_share"]:
            pageable = (served.get("memcpy") or {}).get("h2d", {}).get("pageable")
            text = (
                f"memcpy is {_pct(memcpy)} of the {unit} time of a served batch "
                f"(H2D {_pct(share.get(H2D, 0.0))}, D2H {_pct(share.get(D2H, 0.0))})"
            )
            if pageable:
                text += (
                    "; the uploads come from pageable memory: pinned host buffers with non_blocking copies "
                    "would let them overlap the kernels"
                )
            out.append(text + ".")
        if share.get(COPY, 0.0) >= t["copy_share"]:
            out.append(
                f"copies (layout, dtype, concatenation) are {_pct(share[COPY])} of the {unit} time of a "
                "served batch: converting the input to FP16 channels-last once, where it is made, would "
                "remove most."
            )
        top = (served.get("top_kernels") or [None])[0]
        if top and top["share"] >= t["top_kernel_share"]:
            out.append(
                f"one kernel takes {_pct(top['share'])} of the served batch: `{top['name'][:90]}` "
                f"({top['category']}, {num(top['calls_per_batch'], 0)} calls per batch)."
            )
        if share.get(CONV, 0.0) >= t["conv_share"]:
            out.append(
                f"convolutions are {_pct(share[CONV])} of the {unit} time: the network's own arithmetic "
                "dominates, so fused or lower-precision kernels (TensorRT) are where more speed is."
            )
        line = served.get("timeline") or {}
        idle = line.get("idle_fraction")
        if unit == "GPU" and isinstance(idle, int | float) and idle >= t["idle_fraction"]:
            out.append(
                f"the GPU is idle {_pct(idle)} of the span of a served batch ({num(line.get('busy_ms'))} ms "
                f"busy of {num(line.get('span_ms'))} ms): it waits on the host (copies, launches, "
                "synchronization)."
            )
        active, busy = line.get("host_active_ms"), line.get("busy_ms")
        if unit == "GPU" and isinstance(active, int | float) and isinstance(busy, int | float) and busy > 0:
            if active > busy:
                out.append(
                    f"host-bound: the host works {num(active)} ms per served batch "
                    f"({num(line.get('host_api_ms'))} ms in CUDA calls, {num(line.get('launches'), 0)} "
                    f"launches) against {num(busy)} ms of GPU work; more streams per batch or less Python "
                    "per call would raise the rate."
                )
            else:
                out.append(
                    f"device-bound: {num(busy)} ms of GPU work per served batch against {num(active)} ms "
                    "of host work outside the calls that wait for the GPU."
                )
    if eager:
        share = {c["category"]: c["share"] for c in eager.get("categories") or []}
        rec = share.get(RECURRENT, 0.0)
        verdict = "a real share" if rec >= t["recurrent_share"] else "not where the time goes"
        out.append(
            f"the ConvGRU memory takes {_pct(rec)} of the {unit} time of the eager network: {verdict}."
        )
        modules = [m for m in eager.get("modules") or [] if m["module"] != BETWEEN_MODULES]
        if modules:
            m = modules[0]
            out.append(
                f"the costliest module is `{m['module']}` at {_pct(m['share'])} of the eager network's time."
            )
    run_row = _variant(data, api="run")
    forward_row = _variant(data, api="forward")
    if run_row and forward_row and forward_row["fps"] > 0:
        cost = 1.0 - run_row["fps"] / forward_row["fps"]
        if cost >= t["round_trip_cost"]:
            out.append(
                f"the numpy round trip (upload, FP16 conversion, download) costs {_pct(cost)} of the "
                f"served rate: {num(run_row['fps'], 0)} fps through backend.run against "
                f"{num(forward_row['fps'], 0)} on device tensors; frames that stay on the GPU (the Triton "
                "frame path, NVDEC) keep the difference."
            )
    for label, a, b in (
        (
            "CUDA graphs",
            {"api": "network", "cuda_graphs": True, "channels_last": True, "compile": None},
            {"api": "network", "cuda_graphs": False, "channels_last": True, "compile": None},
        ),
        (
            "channels-last",
            {"api": "network", "cuda_graphs": False, "channels_last": True, "compile": None},
            {"api": "network", "cuda_graphs": False, "channels_last": False, "compile": None},
        ),
    ):
        with_row, without_row = _variant(data, **a), _variant(data, **b)
        if with_row and without_row and without_row["fps"] > 0:
            ratio = with_row["fps"] / without_row["fps"]
            out.append(
                f"{label}: x{ratio:.2f} ({num(with_row['fps'], 0)} against {num(without_row['fps'], 0)} fps, "
                f"{with_row['name']} against {without_row['name']})."
            )
    compiled = [
        r for r in data.get("variants") or [] if r.get("compile") and isinstance(r.get("fps"), int | float)
    ]
    reference = forward_row or _variant(
        data, api="network", cuda_graphs=True, channels_last=True, compile=None
    )
    if compiled and reference and reference["fps"] > 0:
        best = max(compiled, key=lambda r: r["fps"])
        ratio = best["fps"] / reference["fps"]
        if ratio >= t["speedup"]:
            verdict = "worth adopting in the backend"
        elif ratio <= 1.0 / t["speedup"]:
            verdict = "slower: keep the served path"
        else:
            verdict = "no clear gain"
        out.append(
            f"torch.compile ({best['compile']}): x{ratio:.2f} the served network ({num(best['fps'], 0)} "
            f"against {num(reference['fps'], 0)} fps, compiled in {num(best.get('compile_s'), 0)} s): "
            f"{verdict}."
        )
    failed = [r["name"] for r in data.get("variants") or [] if r.get("error")]
    if failed:
        out.append(f"variants that failed (see the JSON): {', '.join(failed)}.")
    return out


# ------------------------------------------------------------------------------------------ output


def print_summary(result: dict[str, Any]) -> None:
    cfg = result["config"]
    where = (result.get("gpu") or {}).get("name") or "the CPU (smoke run, not a GPU figure)"
    print(f"\nGPU profile on {where}: batch {cfg['batch']} at {cfg['height']}x{cfg['width']}")
    for key, profile in (result.get("profiles") or {}).items():
        line = profile["timeline"]
        print(
            f"  {key}: busy {num(line['busy_ms'])} ms of {num(line['span_ms'])} ms per batch (idle "
            f"{num(100 * (line['idle_fraction'] or 0), 0)} %), host {num(line['host_wall_ms'])} ms"
        )
        for c in profile["categories"]:
            if c["share"] > 0:
                print(
                    f"    {c['category']:<42} {num(c['ms_per_batch'], 3):>8} ms  "
                    f"{num(100 * c['share'], 1):>5} %"
                )
    for row in result.get("variants") or []:
        print(
            f"  {row['name']:<48} "
            + (num(row.get("fps"), 1) if "fps" in row else str(row.get("error") or row.get("skipped")))
        )
    print("findings:")
    for f in result.get("findings") or findings(result):
        print(f"  - {f}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_profile",
        description=(
            "torch.profiler view of the torch-cuda backend as serve runs it (time per batch, by category, "
            "top kernels, GPU idle within a batch, launch overhead) and frames/s with and without CUDA "
            "graphs, channels-last and torch.compile. Writes gpu_profile.json (gpu_profile_cpu.json with "
            "--device cpu)."
        ),
    )
    add_model_arg(parser)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="default: cuda")
    parser.add_argument("--batch", type=int, default=None, help="frames per batch (default 32; 2 on the CPU)")
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="square working size, a multiple of 32 (default 256; 64 on the CPU)",
    )
    parser.add_argument(
        "--dtype",
        choices=("fp16", "fp32", "bf16"),
        default=None,
        help="dtype of the network variants (default fp16; fp32 on the CPU); served rows keep the backend's",
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="calls before timing (default 10; 1 on the CPU)"
    )
    parser.add_argument(
        "--iterations", type=int, default=None, help="timed calls per variant (default 50; 3)"
    )
    parser.add_argument(
        "--profile-batches", type=int, default=None, help="profiled calls per profile (default 5; 2)"
    )
    parser.add_argument(
        "--compile-modes",
        nargs="+",
        default=None,
        help=f"torch.compile modes to time (default on CUDA: {' '.join(COMPILE_MODES)}; none on the CPU)",
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--trace-dir", type=Path, default=None, help="keep the Chrome traces in this folder")
    add_output_args(parser, "gpu_profile.json", shared=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_and_write(lambda r: NAME[r["device"]], args.out_dir, lambda: run(args), print_summary)


# ------------------------------------------------------------------------------------------ report


def _md(text: str, limit: int = 110) -> str:
    short = text if len(text) <= limit else text[: limit - 1] + "…"
    return "`" + short.replace("`", "'").replace("|", "\\|") + "`"


def report_section(data: dict[str, Any]) -> list[str]:
    """RESULTS.md: the profiles, the variants and the findings of one ``gpu_profile*.json``."""
    cfg = data.get("config") or {}
    model = data.get("model") or {}
    gpu = data.get("gpu") or {}
    lines = [
        "## GPU profile (where the model's time goes)",
        "",
        f"Model `{model.get('version', '?')}` (sha256 `{model.get('sha256', '?')}`), served backend "
        f"{model.get('backend', '?')}, batch {cfg.get('batch', '?')} at {cfg.get('height', '?')}x"
        f"{cfg.get('width', '?')}, network variants in {cfg.get('dtype', '?')}; run {data.get('date', '?')} "
        "with `python -m benchmarks.gpu_profile`.",
        "",
    ]
    if data.get("device") != "cuda":
        lines += ["> CPU smoke run (`--device cpu`): the profiler's view of the CPU, not a GPU figure.", ""]
    if not data.get("complete"):
        lines += ["> Incomplete run (stopped before the end): the rows it reached are below.", ""]
    if gpu:
        lines += [
            f"GPU: {gpu.get('name', '?')} (compute capability {gpu.get('capability', '?')}, "
            f"{num(gpu.get('memory_gb'), 0)} GB, {gpu.get('multiprocessors', '?')} SMs), "
            f"CUDA {gpu.get('cuda', '?')}, cuDNN {gpu.get('cudnn', '?')}, driver {gpu.get('driver') or '?'}.",
            "",
        ]
    profiles = data.get("profiles") or {}
    unit = "GPU" if data.get("device") == "cuda" else "CPU"
    if profiles:
        lines += [
            "Per batch, mean over the profiled batches: busy is the union of the device's work (kernels and "
            "copies; on a CPU the operators), span runs from the batch's first to its last device activity, "
            "idle is the part of the span with nothing running; host wall is the host's time for the call, "
            "of which CUDA API calls, and of those the ones that wait for the GPU (synchronization, copies). "
            "`served`: "
            f"{(profiles.get('served') or {}).get('what', '?')}; "
            f"`eager`: {(profiles.get('eager') or {}).get('what', '?')}.",
            "",
            f"| profile | {unit} busy ms | span ms | idle | host wall ms | CUDA API ms | of which waiting ms "
            "| launches |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for key, p in profiles.items():
            t = p.get("timeline") or {}
            idle = t.get("idle_fraction")
            lines.append(
                f"| {key} | {num(t.get('busy_ms'), 3)} | {num(t.get('span_ms'), 3)} | "
                f"{num(100 * idle, 0) + ' %' if isinstance(idle, int | float) else '–'} | "
                f"{num(t.get('host_wall_ms'), 3)} | {num(t.get('host_api_ms'), 3)} | "
                f"{num(t.get('host_sync_ms'), 3)} | "
                f"{num(t.get('launches'), 0)} |"
            )
        keys = list(profiles)
        lines += [
            "",
            f"Time by category (share of the {unit} work; `served` sorts replayed kernels by name only, "
            "`eager` also by the operator and module that launched them, so only it can show the ConvGRU):",
            "",
            "| category | " + " | ".join(f"{k} ms | {k} %" for k in keys) + " |",
            "| --- |" + " ---: | ---: |" * len(keys),
        ]
        for category in data.get("categories") or CATEGORIES:
            cells = []
            for k in keys:
                c = next((c for c in profiles[k].get("categories") or [] if c["category"] == category), {})
                cells.append(
                    f"{num(c.get('ms_per_batch'), 3)} | {num(100 * c.get('share', float('nan')), 1)}"
                )
            lines.append(f"| {category} | " + " | ".join(cells) + " |")
        main_key = "served" if "served" in profiles else keys[0]
        eager_ops: dict[str, list[str]] = {}
        for k in (profiles.get("eager") or {}).get("top_kernels") or []:
            eager_ops[k["name"]] = k.get("ops") or []
        lines += [
            "",
            f"Top {TOP_KERNELS} of the `{main_key}` profile (operators from the eager profile where the same "
            "kernel ran there):",
            "",
            "| kernel | category | calls per batch | ms per batch | share | operator | shapes |",
            "| --- | --- | ---: | ---: | ---: | --- | --- |",
        ]
        for k in profiles[main_key].get("top_kernels") or []:
            ops = k.get("ops") or eager_ops.get(k["name"]) or []
            lines.append(
                f"| {_md(k['name'])} | {k.get('category')} | {num(k.get('calls_per_batch'), 1)} | "
                f"{num(k.get('ms_per_batch'), 3)} | {num(100 * k.get('share', float('nan')), 1)} % | "
                f"{', '.join(ops) or '–'} | {k.get('shapes') or '–'} |"
            )
        memcpy = profiles[main_key].get("memcpy") or {}
        if any((memcpy.get(d) or {}).get("count_per_batch") for d in ("h2d", "d2h")):
            parts = []
            for d, label in (("h2d", "host to device"), ("d2h", "device to host")):
                m = memcpy.get(d) or {}
                where = {True: "pageable", False: "pinned", None: "–"}[m.get("pageable")]
                parts.append(
                    f"{label} {num(m.get('bytes_per_batch', 0) / 2**20, 2)} MiB in "
                    f"{num(m.get('count_per_batch'), 0)} copies, {num(m.get('ms_per_batch'), 3)} ms "
                    f"({where} host memory)"
                )
            lines += ["", "Copies per served batch: " + "; ".join(parts) + ".", ""]
        modules = (profiles.get("eager") or {}).get("modules") or []
        if modules:
            lines += [
                "",
                "By module (eager profile): "
                + ", ".join(f"`{m['module']}` {num(100 * m['share'], 1)} %" for m in modules)
                + ".",
                "",
            ]
    rows = data.get("variants") or []
    if rows:
        served = _variant(data, api="forward") or _variant(data, api="run")
        lines += [
            "Frames per second, calls back to back and synchronized at the end "
            f"({cfg.get('iterations', '?')} timed calls after {cfg.get('warmup', '?')} untimed):",
            "",
            "| variant | CUDA graphs | channels-last | compile | dtype | fps | ms per batch | vs served |",
            "| --- | --- | --- | --- | --- | ---: | ---: | ---: |",
        ]
        for r in rows:
            fps = r.get("fps")
            ratio = fps / served["fps"] if served and isinstance(fps, int | float) and served["fps"] else None
            note = r.get("error") or r.get("skipped")
            compile_note = r.get("compile") or "–"
            if r.get("compile_s") is not None:
                compile_note += f" ({num(r['compile_s'], 0)} s to compile)"
            lines.append(
                f"| {r.get('name')} | {'yes' if r.get('cuda_graphs') else 'no'} | "
                f"{'yes' if r.get('channels_last') else 'no'} | {compile_note} | {r.get('dtype')} | "
                f"{num(fps, 1) if fps is not None else (note or '–')[:80]} | "
                f"{num(r.get('ms_per_batch'), 3)} | "
                f"{'x' + num(ratio) if ratio is not None else '–'} |"
            )
        lines.append("")
    found = findings(data)
    if found:
        lines += ["Findings (computed from the figures above):", "", *[f"- {f}" for f in found], ""]
    lines += [machine_line(data), ""]
    return lines


def not_measured_section() -> list[str]:
    """RESULTS.md where no ``gpu_profile.json`` exists yet."""
    return [
        "## GPU profile (where the model's time goes)",
        "",
        "Not measured yet: run `make gpu-check` on a CUDA machine.",
        "",
    ]


if __name__ == "__main__":
    sys.exit(main())
