"""PyTorch backends: CPU eager, CPU ``torch.compile`` (inductor) and CUDA FP16 with CUDA graphs.

All three run the weights of the shipped ONNX file (:mod:`chromastream.models.runtime.onnx_to_torch`), checked
at load against ONNX Runtime on a probe input, so every backend serves the same colours.

- ``torch``: eager float32 on the CPU. The reference for the other two and the simplest to debug.
- ``torch-compile``: the same module through inductor. Each new input shape compiles once (tens of seconds
  on a small CPU); the pipeline sees few shapes (one working shape per stream resolution, a few batch
  sizes), so the cost is paid at start-up.
- ``torch-cuda``: FP16 weights in channels-last layout (what cuDNN's tensor-core kernels want) and CUDA
  graphs over fixed shape buckets. A graph replays a whole forward pass with one launch, which removes
  the Python and launch overhead that dominates a small network at small batches. Shapes are bucketed:
  the batch is padded up to the next of :data:`BATCH_BUCKETS` and one graph is captured per (batch bucket,
  working height, width), at most :data:`MAX_GRAPHS` of them (least recently used dropped), so memory
  stays bounded whatever the streams do. Padded rows are zeros and are dropped from the output: rows of a
  batch never interact. Batches above the largest bucket run eagerly.

Where it ran: the CPU modes are tested against ONNX Runtime on the development machines (x86, 2 cores).
The CUDA mode uses torch's documented CUDA graph API (``torch.cuda.graph``, warm-up on a side stream before
capture). It ran on an NVIDIA H200 (torch 2.11, CUDA 13): ``tests/test_torch_backend.py`` passed there,
and ``benchmarks/results/throughput_cuda.json`` holds its speed; its tests skip without a CUDA device.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chromastream.models.runtime.base import F32, BackendUnavailable

if TYPE_CHECKING:
    import torch

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)
MAX_GRAPHS = 12
TORCH_EXTRA = "pip install 'chromastream[train]' (CPU) or 'chromastream[gpu]' (CUDA)"


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailable(f"the torch backends need torch: {TORCH_EXTRA}") from exc
    return torch


def cuda_available() -> bool:
    """A usable CUDA device with torch (False when torch is missing)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def bucket_for(batch: int, buckets: tuple[int, ...] = BATCH_BUCKETS) -> int | None:
    """The smallest bucket that holds ``batch`` rows, or None when it exceeds the largest."""
    return next((b for b in buckets if b >= batch), None)


class TorchBackend:
    """The colorizer in torch on the CPU, eager (``compile=False``) or through inductor (``compile=True``)."""

    def __init__(self, model_path: Path, compile: bool = False, verify: bool = True):
        torch = _import_torch()
        from chromastream.models.runtime.onnx_to_torch import load_colorizer, verify_against_onnxruntime

        model, self.info = load_colorizer(model_path)
        if verify:
            verify_against_onnxruntime(model, model_path, self.info)
        self._module: Any = torch.compile(model, dynamic=False) if compile else model
        self.name = "torch-compile" if compile else "torch"
        self._torch = torch

    def run(self, L: F32, hints: F32, state: F32) -> tuple[F32, F32]:
        torch = self._torch
        with torch.inference_mode():
            ab, state_out = self._module(
                torch.from_numpy(np.ascontiguousarray(L, dtype=np.float32)),
                torch.from_numpy(np.ascontiguousarray(hints, dtype=np.float32)),
                torch.from_numpy(np.ascontiguousarray(state, dtype=np.float32)),
            )
        return ab.numpy(), state_out.numpy()


@dataclass
class _Graph:
    """One captured forward pass: its static inputs (written before each replay) and outputs."""

    graph: Any
    L: torch.Tensor
    hints: torch.Tensor
    state: torch.Tensor
    ab: torch.Tensor
    state_out: torch.Tensor


class TorchCudaBackend:
    """FP16 on a CUDA device, channels-last, with one CUDA graph per shape bucket (module docstring)."""

    def __init__(
        self,
        model_path: Path,
        device: str = "cuda",
        cuda_graphs: bool = True,
        buckets: tuple[int, ...] = BATCH_BUCKETS,
        max_graphs: int = MAX_GRAPHS,
        verify: bool = True,
    ):
        torch = _import_torch()
        if not torch.cuda.is_available():
            raise BackendUnavailable(
                f"torch-cuda needs a CUDA device and a CUDA build of torch: {TORCH_EXTRA}"
            )
        from chromastream.models.runtime.onnx_to_torch import load_colorizer, verify_against_onnxruntime

        model, self.info = load_colorizer(model_path)
        if verify:
            verify_against_onnxruntime(model, model_path, self.info)
        self._torch = torch
        self.device = torch.device(device)
        self._model = model.to(self.device).half().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.name = "torch-cuda"
        self.cuda_graphs = cuda_graphs
        self.buckets = tuple(sorted(buckets))
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[tuple[int, int, int], _Graph] = OrderedDict()
        self._pool: Any = None
        # One stream for this backend's work, named by purpose; callers' streams are left alone.
        self._stream = torch.cuda.Stream(self.device)
        self._lock = threading.Lock()

    # --- device tensors in, device tensors out (used by run() and by the benchmark) -----------------

    def forward(
        self, L: torch.Tensor, hints: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """FP16 device tensors ``[n, ...]`` -> FP16 ``(ab, state_out)`` ``[n, ...]``, on this backend's
        stream, through a CUDA graph when a bucket holds ``n``. Graph outputs are the graph's own buffers:
        they are valid until the next call with the same bucket, so copy what must outlive it."""
        torch = self._torch
        n, _, height, width = L.shape
        bucket = bucket_for(n, self.buckets) if self.cuda_graphs else None
        with torch.inference_mode(), torch.cuda.stream(self._stream):
            if bucket is None:
                ab, state_out = self._model(*(self._layout(t) for t in (L, hints, state)))
                return ab, state_out
            entry = self._graph(bucket, height, width)
            for static, value in ((entry.L, L), (entry.hints, hints), (entry.state, state)):
                static[:n].copy_(value)
                if n < bucket:
                    static[n:].zero_()
            entry.graph.replay()
            return entry.ab[:n], entry.state_out[:n]

    def _layout(self, t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=self._torch.channels_last)

    def _graph(self, batch: int, height: int, width: int) -> _Graph:
        key = (batch, height, width)
        entry = self._graphs.get(key)
        if entry is not None:
            self._graphs.move_to_end(key)
            return entry
        torch = self._torch
        if len(self._graphs) >= self.max_graphs:
            self._graphs.popitem(last=False)
        kw = {"device": self.device, "dtype": torch.float16}
        L = self._layout(torch.zeros(batch, 1, height, width, **kw))
        hints = self._layout(torch.zeros(batch, 3, height, width, **kw))
        state = self._layout(torch.zeros(*self.info.state_shape(batch, height, width), **kw))
        # cuDNN picks its algorithms and allocates workspaces on the first calls: that must happen before
        # capture, on a side stream (torch's documented recipe).
        for _ in range(3):
            self._model(L, hints, state)
        torch.cuda.current_stream().synchronize()
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self._pool, stream=self._stream):
            ab, state_out = self._model(L, hints, state)
        entry = _Graph(graph, L, hints, state, ab, state_out)
        self._graphs[key] = entry
        return entry

    # --- the Backend protocol ------------------------------------------------------------------------

    def run(self, L: F32, hints: F32, state: F32) -> tuple[F32, F32]:
        torch = self._torch
        # One graph's static buffers serve one call at a time; the copies run on this backend's stream,
        # and ``.cpu()`` waits for it, so the numpy results are complete when returned.
        with self._lock, torch.cuda.stream(self._stream):
            inputs = [
                torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device, torch.float16)
                for x in (L, hints, state)
            ]
            ab, state_out = self.forward(*inputs)
            ab_host, state_host = ab.float().cpu(), state_out.float().cpu()
        return ab_host.numpy(), state_host.numpy()

    @property
    def captured(self) -> list[tuple[int, int, int]]:
        """The (batch bucket, height, width) shapes that have a captured graph, oldest first."""
        return list(self._graphs)
