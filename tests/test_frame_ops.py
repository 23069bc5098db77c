"""The frame work around the network gives the same numbers on the CPU and through the Triton kernels.

The Triton path runs in Triton's interpreter on CPU tensors here and compiled where CUDA is present; the
colorize command picks the path from the backend, so a GPU backend gets the GPU frame work.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the Triton frame path needs torch")
pytest.importorskip("triton", reason="the Triton frame path needs triton (the gpu or dev extra)")

from chromastream.kernels.frame_ops import CpuFrameOps, TritonFrameOps, frame_ops_for  # noqa: E402
from chromastream.models.colorizer.spec import L_SCALE  # noqa: E402
from chromastream.models.runtime.registry import create_backend  # noqa: E402

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
#: The Triton interpreter on CPU tensors everywhere; the compiled kernels on CUDA, as ``gpu`` tests.
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, needs_cuda])]


def _luma(height: int, width: int, seed: int = 3) -> np.ndarray:
    """Smooth gradients plus noise over the whole limited range, so resize and colour both matter."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = 16 + 219 * (0.5 + 0.5 * np.sin(xx / 7.0) * np.cos(yy / 5.0))
    out: np.ndarray = np.clip(base + rng.normal(0, 12, (height, width)), 0, 255).astype(np.uint8)
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("full_range", [False, True])
def test_triton_frame_ops_match_the_cpu_ops(device: str, full_range: bool) -> None:
    y = _luma(46, 70)
    shape = (32, 64)
    cpu, gpu = CpuFrameOps(), TritonFrameOps(device)
    L_cpu = cpu.network_l(y, shape, full_range, L_SCALE)
    L_gpu = gpu.network_l(y, shape, full_range, L_SCALE)
    assert L_gpu.shape == L_cpu.shape == (1, 1, *shape) and L_gpu.dtype == np.float32
    np.testing.assert_allclose(L_gpu, L_cpu, atol=1e-4, rtol=0)

    rng = np.random.default_rng(5)
    ab = rng.uniform(-60, 60, (2, *shape)).astype(np.float32)
    y_cpu, u_cpu, v_cpu = cpu.to_yuv420(y, ab, full_range)
    y_gpu, u_gpu, v_gpu = gpu.to_yuv420(y, ab, full_range)
    assert y_gpu is y and u_gpu.shape == u_cpu.shape == (23, 35) and u_gpu.dtype == np.uint8
    assert np.abs(u_gpu.astype(int) - u_cpu).max() <= 1
    assert np.abs(v_gpu.astype(int) - v_cpu).max() <= 1
    assert np.array_equal(y_cpu, y_gpu)


def test_cpu_backends_keep_the_frame_work_on_the_cpu() -> None:
    assert isinstance(frame_ops_for(create_backend("onnxruntime")), CpuFrameOps)


@pytest.mark.gpu
@needs_cuda
def test_the_cuda_backend_gets_the_gpu_frame_work(tmp_path: Path) -> None:
    backend = create_backend("torch-cuda")
    ops = frame_ops_for(backend)
    assert isinstance(ops, TritonFrameOps) and ops.name == "triton-cuda"
    y = _luma(1080, 1920)
    shape = (256, 448)
    L = ops.network_l(y, shape, False, backend.info.l_scale)
    np.testing.assert_allclose(L, CpuFrameOps().network_l(y, shape, False, backend.info.l_scale), atol=1e-4)
    ab, _ = backend.run(
        L, np.zeros((1, 3, *shape), np.float32), np.zeros(backend.info.state_shape(1, *shape), np.float32)
    )
    _, u, v = ops.to_yuv420(y, ab[0] * backend.info.ab_scale, False)
    _, u_ref, v_ref = CpuFrameOps().to_yuv420(y, ab[0] * backend.info.ab_scale, False)
    assert np.abs(u.astype(int) - u_ref).max() <= 1 and np.abs(v.astype(int) - v_ref).max() <= 1
