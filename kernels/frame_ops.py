"""The per-frame work around the network, on the CPU or on the GPU, with numpy frames in and out.

Every video path does the same two things per frame besides the network: luma -> the network's ``L``
input at the working size, and the network's low-resolution ab + the full-resolution luma -> U and V
planes. At 1080p those two are the expensive part on a CPU (a resize and a full-resolution Lab -> YUV
conversion in numpy: about 40 ms per frame, measured on the H200 machine's CPU in
``benchmarks/results/throughput_cuda.json``), while the network on a GPU takes 2-3 ms. So when the model
runs on a CUDA device, the frame work follows it there through the fused Triton kernels of
:mod:`chromastream.kernels.triton_frames` (one pass each way), and only the Y plane (up), the small ``L``
(down) and the two chroma planes (down) cross the bus.

- :class:`CpuFrameOps`: OpenCV and numpy (:mod:`chromastream.kernels.combine`); the reference, and the only
  choice without a GPU.
- :class:`TritonFrameOps`: the same maths in Triton on CUDA tensors. On CPU tensors Triton's interpreter
  runs the same kernels (slowly), which is how the CPU-only test suite checks this class.

Both take and return numpy arrays, so the batcher and the encoders are the same on either.
:func:`frame_ops_for` picks one for a backend.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

import cv2
import numpy as np

from chromastream.kernels.combine import F32, U8, l_from_luma, luma_ab_to_yuv420

logger = logging.getLogger(__name__)


class FrameOps(Protocol):
    """Pre- and post-processing of one frame around the network (module docstring)."""

    name: str

    def network_l(self, y: U8, shape: tuple[int, int], full_range: bool, l_scale: float) -> F32:
        """Luma ``[H, W]`` uint8 -> the network's ``L / l_scale`` ``[1, 1, h, w]`` float32 at ``shape``."""
        ...

    def to_yuv420(self, y: U8, ab: F32, full_range: bool) -> tuple[U8, U8, U8]:
        """Luma ``[H, W]`` + ab ``[2, h, w]`` in Lab units -> (Y, U, V) of 4:2:0; Y is ``y`` itself."""
        ...


class CpuFrameOps:
    """OpenCV's ``INTER_AREA`` resize and the numpy Lab -> YUV conversion of
    :mod:`chromastream.kernels.combine`."""

    name = "cpu"

    def network_l(self, y: U8, shape: tuple[int, int], full_range: bool, l_scale: float) -> F32:
        height, width = shape
        small = cv2.resize(l_from_luma(y, full_range), (width, height), interpolation=cv2.INTER_AREA)
        L: F32 = np.asarray(small / np.float32(l_scale), dtype=np.float32)[None, None]
        return L

    def to_yuv420(self, y: U8, ab: F32, full_range: bool) -> tuple[U8, U8, U8]:
        return luma_ab_to_yuv420(y, ab, full_range)


class TritonFrameOps:
    """The Triton kernels on ``device`` (CUDA; a CPU device runs them in Triton's interpreter).

    Calls from several threads are safe on CUDA: each is a few kernel launches on the current stream
    followed by a synchronous copy back. The interpreter is not thread-safe, so on a CPU device calls are
    serialized.
    """

    def __init__(self, device: Any = "cuda") -> None:
        import torch

        from chromastream.kernels import triton_frames

        if not triton_frames.kernels_available():
            raise triton_frames.KernelUnavailable(
                f"the GPU frame path needs triton; {triton_frames.INSTALL_HINT}"
            )
        self._torch = torch
        self._kernels = triton_frames
        self.device = torch.device(device)
        self.name = f"triton-{self.device.type}"
        self._lock = threading.Lock() if self.device.type == "cpu" else None

    def _upload(self, array: np.ndarray) -> Any:
        return self._torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def network_l(self, y: U8, shape: tuple[int, int], full_range: bool, l_scale: float) -> F32:
        if self._lock is not None:
            with self._lock:
                return self._network_l(y, shape, full_range, l_scale)
        return self._network_l(y, shape, full_range, l_scale)

    def _network_l(self, y: U8, shape: tuple[int, int], full_range: bool, l_scale: float) -> F32:
        out = self._kernels.network_input(self._upload(y), shape, full_range, l_scale)
        L: F32 = out.cpu().numpy()
        return L

    def to_yuv420(self, y: U8, ab: F32, full_range: bool) -> tuple[U8, U8, U8]:
        if self._lock is not None:
            with self._lock:
                return self._to_yuv420(y, ab, full_range)
        return self._to_yuv420(y, ab, full_range)

    def _to_yuv420(self, y: U8, ab: F32, full_range: bool) -> tuple[U8, U8, U8]:
        ab_low = self._upload(np.asarray(ab, dtype=np.float32))
        _, u, v = self._kernels.luma_ab_to_yuv420(self._upload(y), ab_low, full_range)
        return y, u.cpu().numpy(), v.cpu().numpy()


def frame_ops_for(backend: object) -> FrameOps:
    """The frame work for ``backend``: on its CUDA device through Triton when it runs on one and triton
    imports, else on the CPU. A GPU backend without triton still works, CPU-bound at large frames, and
    says so once."""
    device = getattr(backend, "device", None)
    if getattr(device, "type", None) != "cuda":
        return CpuFrameOps()
    from chromastream.kernels import triton_frames

    try:
        return TritonFrameOps(device)
    except triton_frames.KernelUnavailable as exc:
        logger.warning("frame pre/post-processing stays on the CPU: %s", exc)
        return CpuFrameOps()
