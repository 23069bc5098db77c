"""Triton pre/post-processing kernels against the CPU references (numpy oracle, OpenCV path).

Every test runs on the CPU through Triton's interpreter ("cpu-interpreter"), and natively on CUDA where
``torch.cuda.is_available()`` (those are marked ``gpu``). The interpreter runs one Python call per
program, so frames stay small.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the kernels take torch tensors (the 'gpu' or 'train' extra)")
pytest.importorskip("triton", reason="triton is not installed (the 'gpu' or 'dev' extra)")

from chromastream.kernels import combine, combine_numpy, lab_numpy, triton_frames  # noqa: E402
from chromastream.kernels.luma import PixelFormat  # noqa: E402
from chromastream.models.colorizer.spec import L_SCALE  # noqa: E402
from chromastream.models.runtime.session import working_shape  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu-interpreter", pytest.param("cuda", marks=[pytest.mark.gpu, needs_cuda])]
PRE_TOL = {torch.float32: 1e-4, torch.float16: 6e-4}  # fp16 holds [0, 1] to half an ulp of 2^-11


def _device(name: str) -> torch.device:
    return torch.device("cpu" if name == "cpu-interpreter" else name)


def _rng(seed: int = 1234) -> np.random.Generator:
    return np.random.default_rng(seed)


def _frame(fmt: str, y: np.ndarray, stride: int, rng: np.random.Generator) -> np.ndarray:
    """A flat I420 / NV12 buffer holding ``y``, with every padding byte 255 so a wrong offset shows."""
    h, w = y.shape
    ch, cw = (h + 1) // 2, (w + 1) // 2
    planes = np.full((h, stride), 255, dtype=np.uint8)
    planes[:, :w] = y
    parts = [planes.ravel()]
    if fmt == "i420":
        uv_stride = (stride + 1) // 2
        for _ in range(2):
            c = np.full((ch, uv_stride), 255, dtype=np.uint8)
            c[:, :cw] = rng.integers(16, 241, (ch, cw), dtype=np.uint8)
            parts.append(c.ravel())
    else:
        uv = np.full((ch, stride), 255, dtype=np.uint8)
        uv[:, : 2 * cw] = rng.integers(16, 241, (ch, 2 * cw), dtype=np.uint8)
        parts.append(uv.ravel())
    return np.concatenate(parts)


def _cpu_network_input(y: np.ndarray, shape: tuple[int, int], full_range: bool) -> np.ndarray:
    """What the CPU path (session / pipeline) feeds the network."""
    small = cv2.resize(combine.l_from_luma(y, full_range), (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    return np.asarray(small / np.float32(L_SCALE), dtype=np.float32)


def _structured_luma(h: int, w: int) -> np.ndarray:
    """Ramp over all 256 codes (footroom and headroom included), a checkerboard block and flat patches."""
    y = np.tile(np.linspace(0, 255, w).round().astype(np.uint8), (h, 1))
    y[: h // 2, : w // 2] = np.where((np.indices((h // 2, w // 2)).sum(0) % 2) == 0, 16, 235)
    y[h // 2 :, w // 2 :] = 128
    return y


# ---------------------------------------------------------------- resampling tables (numpy)


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ((48, 64), (32, 64)),  # shrink rows only (mixed: OpenCV interpolates both axes)
        ((1080, 1920), (256, 448)),  # area averaging, non-integer factors
        ((720, 1280), (256, 448)),
        ((64, 64), (32, 32)),  # integer factor (OpenCV's fast path)
        ((48, 64), (256, 352)),  # enlarge: OpenCV's two-tap "area" interpolation
        ((31, 200), (64, 416)),  # a product within an ulp of an integer decides the tap
        ((100, 30), (64, 32)),
        ((37, 53), (37, 53)),  # identity
    ],
)
def test_area_tables_reproduce_opencv_inter_area(src: tuple[int, int], dst: tuple[int, int]) -> None:
    x = _rng().uniform(0, 100, src).astype(np.float32)
    ref = cv2.resize(x, (dst[1], dst[0]), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(triton_frames.resize_area(x, *dst), ref, atol=1e-4)


def test_area_taps_weights_sum_to_one_and_stay_in_bounds() -> None:
    for n_in, n_out, area in [(1920, 448, True), (67, 31, True), (48, 352, False), (7, 7, False)]:
        idx, w = triton_frames.area_taps(n_in, n_out, area)
        assert idx.shape == w.shape and idx.shape[0] == n_out
        assert idx.min() >= 0 and idx.max() < n_in
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="positive"):
        triton_frames.area_taps(0, 4, True)


# ---------------------------------------------------------------- pre: luma -> network input


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("full_range", [False, True])
@pytest.mark.parametrize(
    ("fmt", "h", "w", "stride", "shape"),
    [
        ("i420", 48, 64, 64, (32, 48)),  # shrink, tight rows
        ("nv12", 48, 64, 80, (64, 96)),  # enlarge, padded rows
        ("i420", 47, 65, 71, (32, 40)),  # odd sizes and an odd stride
        ("nv12", 66, 130, 144, (40, 72)),  # more than one tile in each direction
    ],
)
def test_network_input_matches_cpu_path(
    device: str, full_range: bool, fmt: PixelFormat, h: int, w: int, stride: int, shape: tuple[int, int]
) -> None:
    rng = _rng()
    y = rng.integers(0, 256, (h, w), dtype=np.uint8)
    buf = torch.from_numpy(_frame(fmt, y, stride, rng)).to(_device(device))
    got = triton_frames.network_input_from_frame(
        buf,
        fmt,
        h,
        w,
        shape,
        y_stride=stride,
        full_range=full_range,
    )
    assert got.shape == (1, 1, *shape) and got.dtype == torch.float32 and got.device == buf.device
    ref = _cpu_network_input(y, shape, full_range)
    np.testing.assert_allclose(got[0, 0].cpu().numpy(), ref, atol=PRE_TOL[torch.float32], rtol=0)
    np.testing.assert_allclose(
        got[0, 0].cpu().numpy(),
        triton_frames.resize_area(combine_numpy.l_from_luma(y, full_range), *shape) / L_SCALE,
        atol=PRE_TOL[torch.float32],
        rtol=0,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_network_input_structured_frame_at_working_size(device: str, dtype: torch.dtype) -> None:
    h, w = 66, 130
    y = _structured_luma(h, w)
    shape = working_shape(h, w, 64, 32)
    for full_range in (False, True):
        got = triton_frames.network_input(
            torch.from_numpy(y).to(_device(device)), shape, full_range, dtype=dtype
        )
        assert got.dtype == dtype
        ref = _cpu_network_input(y, shape, full_range)
        np.testing.assert_allclose(got[0, 0].float().cpu().numpy(), ref, atol=PRE_TOL[dtype], rtol=0)
        assert float(got.min()) >= 0.0 and float(got.max()) <= 1.0 + PRE_TOL[dtype]


@pytest.mark.parametrize("device", DEVICES)
def test_network_input_reads_a_transposed_view(device: str) -> None:
    """Any strides, not just padded rows: a transposed plane is read in place, not copied first."""
    y = _rng().integers(0, 256, (40, 24), dtype=np.uint8)
    view = torch.from_numpy(y).to(_device(device)).t()
    assert not view.is_contiguous()
    got = triton_frames.network_input(view, (16, 24))
    ref = _cpu_network_input(np.ascontiguousarray(y.T), (16, 24), False)
    np.testing.assert_allclose(got[0, 0].cpu().numpy(), ref, atol=1e-4, rtol=0)


def test_network_input_rejects_bad_input() -> None:
    y = torch.zeros(8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        triton_frames.network_input(y.float(), (4, 4))
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        triton_frames.network_input(y[None], (4, 4))
    with pytest.raises(ValueError, match="positive"):
        triton_frames.network_input(y, (0, 4))
    with pytest.raises(ValueError, match="float32 or float16"):
        triton_frames.network_input(y, (4, 4), dtype=torch.float64)
    with pytest.raises(ValueError, match="needs 96 bytes, got 95"):
        triton_frames.network_input_from_frame(torch.zeros(95, dtype=torch.uint8), "i420", 8, 8, (4, 4))
    with pytest.raises(triton_frames.KernelUnavailable, match="CUDA"):
        triton_frames.network_input(y.to("meta"), (4, 4))


def test_missing_triton_names_the_gpu_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where triton cannot be imported the call fails with one line that says what to install."""
    monkeypatch.setitem(sys.modules, "triton", None)  # what `import triton` sees without the package
    with pytest.raises(triton_frames.KernelUnavailable, match=r"chromastream\[gpu\]"):
        triton_frames.network_input(torch.zeros(8, 8, dtype=torch.uint8), (4, 4))
    with pytest.raises(triton_frames.KernelUnavailable, match="'gpu' extra"):
        triton_frames.luma_ab_to_yuv420(torch.zeros(8, 8, dtype=torch.uint8), torch.zeros(2, 2, 2))


# ---------------------------------------------------------------- post: luma + ab -> YUV 4:2:0


def _assert_chroma_close(got: torch.Tensor, ref: np.ndarray) -> None:
    diff = np.abs(got.cpu().numpy().astype(int) - ref)
    assert got.dtype == torch.uint8 and tuple(got.shape) == ref.shape
    assert diff.max() <= 1
    assert (diff > 0).mean() < 0.01, "off-by-one should be rare rounding ties, not a bias"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("full_range", [False, True])
@pytest.mark.parametrize(
    ("fmt", "h", "w", "stride", "low"),
    [("i420", 48, 64, 64, (9, 13)), ("nv12", 48, 64, 67, (16, 16)), ("i420", 66, 130, 133, (7, 11))],
)
def test_yuv420_matches_numpy_reference(
    device: str, full_range: bool, fmt: str, h: int, w: int, stride: int, low: tuple[int, int]
) -> None:
    rng = _rng()
    y = rng.integers(0, 256, (h, w), dtype=np.uint8)
    ab = rng.uniform(-70, 70, (2, *low)).astype(np.float32)
    dev = _device(device)
    buf = torch.from_numpy(_frame(fmt, y, stride, rng)).to(dev)
    y_view = buf[: h * stride].view(h, stride)[:, :w]  # the decoder's strided Y plane, as is
    y_out, u, v = triton_frames.luma_ab_to_yuv420(y_view, torch.from_numpy(ab).to(dev), full_range)
    assert y_out is y_view, "the output's luminance is the input plane itself"
    _, u_ref, v_ref = combine_numpy.luma_ab_to_yuv420(y, ab, full_range)
    _assert_chroma_close(u, u_ref)
    _assert_chroma_close(v, v_ref)


@pytest.mark.parametrize("device", DEVICES)
def test_yuv420_structured_frame_and_grey(device: str) -> None:
    dev = _device(device)
    y = _structured_luma(48, 64)
    ab = np.stack(np.meshgrid(np.linspace(-90, 90, 11), np.linspace(-90, 90, 7))).astype(np.float32)
    for full_range in (False, True):
        _, u, v = triton_frames.luma_ab_to_yuv420(
            torch.from_numpy(y).to(dev), torch.from_numpy(ab).to(dev), full_range
        )
        _, u_ref, v_ref = combine_numpy.luma_ab_to_yuv420(y, ab, full_range)
        assert np.abs(u.cpu().numpy().astype(int) - u_ref).max() <= 1
        assert np.abs(v.cpu().numpy().astype(int) - v_ref).max() <= 1
        # ab = 0 is grey at every brightness: exactly 128.
        grey = torch.zeros(2, 3, 5, device=dev)
        _, u0, v0 = triton_frames.luma_ab_to_yuv420(torch.from_numpy(y).to(dev), grey, full_range)
        assert bool((u0 == 128).all()) and bool((v0 == 128).all())


# BT.601 limited-range Cb/Cr of the primaries (ITU-R BT.601 tables).
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("rgb", "uv"), [((1.0, 0.0, 0.0), (90, 240)), ((0.0, 0.0, 1.0), (240, 110)), ((0.0, 1.0, 0.0), (54, 34))]
)
def test_yuv420_known_colours(device: str, rgb: tuple[float, ...], uv: tuple[int, int]) -> None:
    lab = lab_numpy.rgb_to_lab(np.array(rgb))
    code = round(16 + 219 * float(lab_numpy.l_to_gray(lab[0])))
    dev = _device(device)
    y = torch.full((4, 6), code, dtype=torch.uint8, device=dev)
    ab = torch.from_numpy(np.broadcast_to(lab[1:, None, None], (2, 2, 3)).astype(np.float32)).to(dev)
    _, u, v = triton_frames.luma_ab_to_yuv420(y, ab)
    assert np.abs(u.cpu().numpy().astype(int) - uv[0]).max() <= 2
    assert np.abs(v.cpu().numpy().astype(int) - uv[1]).max() <= 2


@pytest.mark.parametrize("device", DEVICES)
def test_yuv420_writes_into_interleaved_nv12_chroma(device: str) -> None:
    """``out=`` takes strided planes: here the U and V lanes of an NV12 chroma plane with padded rows."""
    rng = _rng()
    dev = _device(device)
    h, w, stride = 48, 64, 72
    y = torch.from_numpy(rng.integers(0, 256, (h, w), dtype=np.uint8)).to(dev)
    ab = torch.from_numpy(rng.uniform(-60, 60, (2, 6, 8)).astype(np.float32)).to(dev)
    uv = torch.full((h // 2, stride), 7, dtype=torch.uint8, device=dev)
    lanes = (uv[:, 0:w:2], uv[:, 1:w:2])
    _, u_out, v_out = triton_frames.luma_ab_to_yuv420(y, ab, out=lanes)
    assert u_out is lanes[0] and v_out is lanes[1]
    _, u, v = triton_frames.luma_ab_to_yuv420(y, ab)
    assert torch.equal(uv[:, 0:w:2], u) and torch.equal(uv[:, 1:w:2], v)
    assert bool((uv[:, w:] == 7).all()), "row padding is left alone"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_yuv420_half_precision_ab(device: str, dtype: torch.dtype) -> None:
    """Network output in fp16 / bf16 is read as is: same codes as the reference on the rounded values."""
    rng = _rng()
    dev = _device(device)
    y = rng.integers(0, 256, (48, 64), dtype=np.uint8)
    ab = torch.from_numpy(rng.uniform(-70, 70, (2, 9, 13)).astype(np.float32)).to(dtype)
    _, u, v = triton_frames.luma_ab_to_yuv420(torch.from_numpy(y).to(dev), ab.to(dev))
    _, u_ref, v_ref = combine_numpy.luma_ab_to_yuv420(y, ab.float().numpy())
    _assert_chroma_close(u, u_ref)
    _assert_chroma_close(v, v_ref)


def test_yuv420_rejects_bad_input() -> None:
    y = torch.zeros(8, 8, dtype=torch.uint8)
    ab = torch.zeros(2, 2, 2)
    with pytest.raises(ValueError, match="even"):
        triton_frames.luma_ab_to_yuv420(torch.zeros(5, 8, dtype=torch.uint8), ab)
    with pytest.raises(ValueError, match=r"\[2, h, w\]"):
        triton_frames.luma_ab_to_yuv420(y, torch.zeros(3, 2, 2))
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        triton_frames.luma_ab_to_yuv420(y, ab.double())
    with pytest.raises(ValueError, match="output planes"):
        triton_frames.luma_ab_to_yuv420(y, ab, out=(torch.empty(4, 3, dtype=torch.uint8),) * 2)
    with pytest.raises(ValueError, match="is on"):
        triton_frames.luma_ab_to_yuv420(y, ab.to("meta"))


# ---------------------------------------------------------------- interpreter selection


_CHILD = """
import json, os, sys
os.environ["TRITON_INTERPRET"] = "1"  # before triton and the kernels are imported
import numpy as np, torch, triton
from chromastream.kernels import triton_frames
y = torch.from_numpy(np.random.default_rng(5).integers(0, 256, (16, 24), dtype=np.uint8))
ab = torch.linspace(-50, 50, 2 * 3 * 4).reshape(2, 3, 4)
L = triton_frames.network_input(y, (8, 16))
_, u, v = triton_frames.luma_ab_to_yuv420(y, ab)
pre = "chromastream.kernels.triton_pre"
plain = pre in sys.modules and f"{pre}_interpreted" not in sys.modules
out = {"plain": plain, "L": L.flatten().tolist(), "u": u.flatten().tolist(), "v": v.flatten().tolist()}
print(json.dumps(out))
"""


def test_interpreter_from_environment_gives_the_same_results() -> None:
    """Both documented routes agree: TRITON_INTERPRET=1 set before import (the plain modules run
    interpreted), and CPU tensors in a process without it (a private interpreted copy); the variable
    does not leak out of the latter."""
    before = os.environ.get("TRITON_INTERPRET")
    y = torch.from_numpy(np.random.default_rng(5).integers(0, 256, (16, 24), dtype=np.uint8))
    ab = torch.linspace(-50, 50, 2 * 3 * 4).reshape(2, 3, 4)
    L = triton_frames.network_input(y, (8, 16))
    _, u, v = triton_frames.luma_ab_to_yuv420(y, ab)
    assert os.environ.get("TRITON_INTERPRET") == before
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    assert child["plain"]
    assert child["L"] == L.flatten().tolist()
    assert child["u"] == u.flatten().tolist() and child["v"] == v.flatten().tolist()
