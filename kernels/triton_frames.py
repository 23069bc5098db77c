"""Per-frame pre- and post-processing as fused Triton kernels, for frames that live in GPU memory.

The CPU path (:mod:`chromastream.kernels.combine`, :mod:`chromastream.models.runtime.session`) makes the
network input with a table lookup, an ``INTER_AREA`` resize and a division, and the output chroma with a 2x2
mean, a bilinear resize, a Lab conversion and a matrix: several full passes over memory each. Here each
direction is one kernel that reads the luma bytes once and writes only its result:

- :func:`network_input`: luma ``[H, W]`` uint8 (any strides, e.g. the Y plane of an I420 / NV12 buffer)
  -> ``L / l_scale`` ``[1, 1, h, w]`` float32 or float16 at the working size, resampled exactly as
  ``cv2.resize(..., INTER_AREA)`` does on the CPU path (area averaging when shrinking, OpenCV's two-tap
  "area" interpolation when enlarging), so both paths feed the network the same numbers.
- :func:`luma_ab_to_yuv420`: luma + low-resolution ab ``[2, h, w]`` -> (Y, U, V) of 4:2:0, the maths of
  :func:`chromastream.kernels.combine_numpy.luma_ab_to_yuv420` (the reference); Y is the input tensor itself.

Tensors may be on CUDA (compiled kernels) or on the CPU, where Triton's interpreter runs the same kernel
code: slow, but it lets the CPU-only test suite check the kernels against the numpy reference. The
interpreter is chosen when each kernel module is *executed* (``@triton.jit`` reads
``triton.knobs.runtime.interpret``, i.e. ``TRITON_INTERPRET``, as it decorates; in triton 3.8 the variable
can be set after ``import triton`` as long as it precedes the kernels). To offer both in one process, CPU
tensors get a private interpreted copy of the kernel modules; ``TRITON_INTERPRET=1`` in the environment
makes every device use the interpreter, as Triton users expect. The interpreter keeps global state:
do not call these functions on CPU tensors from several threads at once.

``tests/test_triton_kernels.py`` runs the interpreter in CI and the compiled kernels wherever
``torch.cuda.is_available()``; they passed compiled on an NVIDIA H200 (Triton 3.6, torch 2.11).
:mod:`chromastream.kernels.frame_ops` puts them on the video paths when the model runs on a GPU.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import threading
from functools import lru_cache
from types import ModuleType

import numpy as np
import numpy.typing as npt
import torch

from chromastream.errors import ChromastreamError
from chromastream.kernels.combine import luma_to_l_table
from chromastream.kernels.combine_numpy import linear_taps
from chromastream.kernels.lab_numpy import L_WHITE
from chromastream.kernels.luma import PixelFormat

I32 = npt.NDArray[np.int32]
F32 = npt.NDArray[np.float32]

INSTALL_HINT = "install the 'gpu' extra: pip install 'chromastream[gpu]'"
OUTPUT_DTYPES = (torch.float32, torch.float16)
AB_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Output tile per program. The interpreter runs one Python call per program, so it gets bigger tiles.
_BLOCK_GPU = (16, 64)
_BLOCK_INTERPRETER = (32, 64)


class KernelError(ChromastreamError):
    """Base class for errors of the accelerated kernels."""


class KernelUnavailable(KernelError):
    """The kernels cannot run here (no triton, or an unsupported device); the message says what to do."""


# ---------------------------------------------------------------- resampling tables (numpy, exact)


def area_taps(n_in: int, n_out: int, area: bool) -> tuple[I32, F32]:
    """Source indices and weights ``[n_out, K]`` of one axis of ``cv2.resize(..., INTER_AREA)``.

    OpenCV resamples with true pixel-area averaging only when *both* axes shrink (``area=True``): each
    output pixel covers ``n_in / n_out`` source pixels and weighs each by its overlap (partial overlaps
    under 1e-3 of a pixel are dropped, as OpenCV does). Otherwise it interpolates linearly between two
    neighbours with weights from the output cell's edge, not its centre (``area=False``). The scale is
    computed as OpenCV computes it (the reciprocal of ``n_out / n_in``) because a floor of a product
    that lands within an ulp of an integer decides which pixel is read. Unused taps repeat the last
    index with weight 0, so a kernel can loop over a fixed ``K`` without bounds checks.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be positive, got {n_in} -> {n_out}")
    inv_scale = n_out / n_in
    scale = 1.0 / inv_scale
    taps: list[list[tuple[int, float]]] = []
    for d in range(n_out):
        if area:
            start = d * scale
            end = start + scale
            cell = min(scale, n_in - start)
            first = math.ceil(start)
            last = min(math.floor(end), n_in - 1)
            first = min(first, last)
            row: list[tuple[int, float]] = []
            if first - start > 1e-3:
                row.append((first - 1, (first - start) / cell))
            row.extend((s, 1.0 / cell) for s in range(first, last))
            if end - last > 1e-3:
                row.append((last, min(end - last, 1.0, cell) / cell))
        else:
            src = math.floor(d * scale)
            frac = float(np.float32((d + 1) - (src + 1) * inv_scale))
            frac = 0.0 if frac <= 0 else frac - math.floor(frac)
            if src >= n_in - 1:
                src, frac = n_in - 1, 0.0
            row = [(src, 1.0 - frac), (min(src + 1, n_in - 1), frac)]
        taps.append(row)
    k = max(len(row) for row in taps)
    idx = np.empty((n_out, k), dtype=np.int32)
    weights = np.zeros((n_out, k), dtype=np.float32)
    for d, row in enumerate(taps):
        idx[d] = row[-1][0]
        for j, (s, w) in enumerate(row):
            idx[d, j] = s
            weights[d, j] = w
    return idx, weights


def inter_area_tables(
    src_h: int, src_w: int, dst_h: int, dst_w: int
) -> tuple[tuple[I32, F32], tuple[I32, F32]]:
    """Row and column taps of ``cv2.resize(..., INTER_AREA)`` from ``src`` to ``dst`` (:func:`area_taps`)."""
    shrinks = 1.0 / (dst_h / src_h) >= 1.0 and 1.0 / (dst_w / src_w) >= 1.0
    return area_taps(src_h, dst_h, shrinks), area_taps(src_w, dst_w, shrinks)


def resize_area(x: npt.ArrayLike, height: int, width: int) -> F32:
    """``[H, W]`` -> ``[height, width]`` through :func:`inter_area_tables`: a readable twin of OpenCV's
    ``INTER_AREA`` and the reference the pre-processing kernel is checked against."""
    a = np.asarray(x, dtype=np.float64)
    (ry, wy), (cx, wx) = inter_area_tables(a.shape[0], a.shape[1], height, width)
    rows = (a[ry] * wy[..., None]).sum(axis=1)
    out: F32 = (rows[:, cx] * wx[None]).sum(axis=2).astype(np.float32)
    return out


# ---------------------------------------------------------------- loading the kernels


_load_lock = threading.Lock()
_modules: dict[tuple[str, bool], ModuleType] = {}


def _load_module(name: str, interpret: bool) -> ModuleType:
    """``chromastream.kernels.<name>`` compiled or interpreted; a private copy when the process default
    differs."""
    try:
        import triton
    except ImportError as exc:
        raise KernelUnavailable(f"the Triton kernels need triton ({exc}); {INSTALL_HINT}") from exc
    key = (name, interpret)
    with _load_lock:
        if key in _modules:
            return _modules[key]
        if bool(triton.knobs.runtime.interpret) == interpret:
            module = importlib.import_module(f"chromastream.kernels.{name}")
        else:
            spec = importlib.util.find_spec(f"chromastream.kernels.{name}")
            if spec is None or spec.origin is None:
                raise KernelUnavailable(
                    f"chromastream.kernels.{name} is missing from this installation; {INSTALL_HINT}"
                )
            alias = f"chromastream.kernels.{name}_{'interpreted' if interpret else 'compiled'}"
            copy_spec = importlib.util.spec_from_file_location(alias, spec.origin)
            assert copy_spec is not None and copy_spec.loader is not None
            module = importlib.util.module_from_spec(copy_spec)
            sys.modules[alias] = module
            # The decorator reads the knob (and the environment it mirrors); scope() restores both.
            with triton.knobs.runtime.scope():
                triton.knobs.runtime.interpret = interpret
                copy_spec.loader.exec_module(module)
        _modules[key] = module
        return module


def _uses_interpreter(device: torch.device) -> bool:
    if device.type == "cpu":
        return True
    if device.type != "cuda":
        raise KernelUnavailable(f"the Triton kernels run on CUDA or (interpreted) CPU tensors, not {device}")
    try:
        import triton
    except ImportError as exc:
        raise KernelUnavailable(f"the Triton kernels need triton ({exc}); {INSTALL_HINT}") from exc
    return bool(triton.knobs.runtime.interpret)


def kernels_available() -> bool:
    """Whether triton can be imported (the kernels then run on CUDA, or interpreted on the CPU)."""
    return importlib.util.find_spec("triton") is not None


# ---------------------------------------------------------------- cached device tables


@lru_cache(maxsize=8)
def _lut(full_range: bool, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(luma_to_l_table(full_range), dtype=torch.float32, device=device)


@lru_cache(maxsize=32)
def _area_tables(
    src: tuple[int, int], dst: tuple[int, int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    (ry, wy), (cx, wx) = inter_area_tables(*src, *dst)
    return tuple(torch.from_numpy(t).to(device) for t in (ry, wy, cx, wx))  # type: ignore[return-value]


@lru_cache(maxsize=32)
def _bilinear_taps(
    n_in: int, n_out: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    i0, i1, w1 = linear_taps(n_in, n_out)
    return (
        torch.from_numpy(i0.astype(np.int32)).to(device),
        torch.from_numpy(i1.astype(np.int32)).to(device),
        torch.from_numpy(w1.astype(np.float32)).to(device),
    )


# ---------------------------------------------------------------- public API


def _check_luma(y: torch.Tensor) -> None:
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"luma must be a torch tensor, got {type(y).__name__}")
    if y.dtype != torch.uint8 or y.dim() != 2:
        raise ValueError(f"luma must be a uint8 [H, W] tensor, got {y.dtype} {tuple(y.shape)}")
    if y.shape[0] < 1 or y.shape[1] < 1:
        raise ValueError(f"luma must not be empty, got {tuple(y.shape)}")


def network_input(
    y: torch.Tensor,
    shape: tuple[int, int],
    full_range: bool = False,
    l_scale: float = L_WHITE,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Luma ``[H, W]`` uint8 (any strides) -> the network's ``L`` input ``[1, 1, h, w]`` on the same device.

    ``shape`` is the working size ``(h, w)`` (:func:`chromastream.models.runtime.session.working_shape`).
    Equals ``cv2.resize(kernels.combine.l_from_luma(y, full_range), (w, h), INTER_AREA) / l_scale``, computed
    in float32 and stored as ``dtype`` (float32 or float16). ``l_scale`` is the model's (its
    ``ModelInfo.l_scale``); the default, the Lab white, is the colorizer contract's.
    """
    _check_luma(y)
    height, width = (int(v) for v in shape)
    if height < 1 or width < 1:
        raise ValueError(f"working size must be positive, got {width}x{height}")
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"network input dtype must be float32 or float16, got {dtype}")
    interpret = _uses_interpreter(y.device)
    pre = _load_module("triton_pre", interpret)
    row_idx, row_w, col_idx, col_w = _area_tables((y.shape[0], y.shape[1]), (height, width), y.device)
    out = torch.empty((1, 1, height, width), dtype=dtype, device=y.device)
    block = _BLOCK_INTERPRETER if interpret else _BLOCK_GPU
    pre.launch_network_input(
        y, _lut(full_range, y.device), row_idx, row_w, col_idx, col_w, out[0, 0], l_scale, block
    )
    return out


def network_input_from_frame(
    buffer: torch.Tensor,
    fmt: PixelFormat,
    height: int,
    width: int,
    shape: tuple[int, int],
    *,
    y_stride: int | None = None,
    uv_stride: int | None = None,
    y_rows: int | None = None,
    full_range: bool = False,
    l_scale: float = L_WHITE,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """:func:`network_input` straight from a flat I420 / NV12 frame buffer (uint8, 1-D, any device).

    The layout is checked as :func:`chromastream.kernels.luma.y_plane` checks it (a wrong size raises
    ``ValueError``), and the kernel reads the Y rows in place, through the stride: no copy of the plane is
    made.
    """
    from chromastream.kernels.combine_torch import y_plane

    y = y_plane(buffer, fmt, height, width, y_stride=y_stride, uv_stride=uv_stride, y_rows=y_rows)
    return network_input(y, shape, full_range=full_range, l_scale=l_scale, dtype=dtype)


def luma_ab_to_yuv420(
    y: torch.Tensor,
    ab_low: torch.Tensor,
    full_range: bool = False,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Luma ``[H, W]`` uint8 (H, W even, any strides) + ab ``[2, h, w]`` in Lab units -> (Y, U, V).

    Y is ``y`` itself; U and V ``[H/2, W/2]`` uint8 follow
    :func:`chromastream.kernels.combine_numpy.luma_ab_to_yuv420`.
    ``out`` takes two preallocated planes to write into (any strides): e.g. an encoder's frame buffer,
    or ``uv[:, 0::2]`` and ``uv[:, 1::2]`` of an interleaved NV12 chroma plane.
    """
    _check_luma(y)
    height, width = y.shape
    if height % 2 or width % 2:
        raise ValueError(f"4:2:0 needs even frame sizes, got {width}x{height}")
    if not isinstance(ab_low, torch.Tensor) or ab_low.dim() != 3 or ab_low.shape[0] != 2:
        shown = tuple(ab_low.shape) if isinstance(ab_low, torch.Tensor) else type(ab_low).__name__
        raise ValueError(f"ab must be a [2, h, w] tensor, got {shown}")
    if ab_low.dtype not in AB_DTYPES:
        raise ValueError(f"ab must be float32, float16 or bfloat16, got {ab_low.dtype}")
    if ab_low.shape[1] < 1 or ab_low.shape[2] < 1:
        raise ValueError(f"ab must not be empty, got {tuple(ab_low.shape)}")
    if ab_low.device != y.device:
        raise ValueError(f"luma is on {y.device} but ab is on {ab_low.device}")
    chroma = (height // 2, width // 2)
    if out is None:
        u = torch.empty(chroma, dtype=torch.uint8, device=y.device)
        v = torch.empty(chroma, dtype=torch.uint8, device=y.device)
    else:
        u, v = out
        for plane in (u, v):
            if plane.dtype != torch.uint8 or tuple(plane.shape) != chroma or plane.device != y.device:
                raise ValueError(
                    f"output planes must be uint8 {chroma} on {y.device}, "
                    f"got {plane.dtype} {tuple(plane.shape)} on {plane.device}"
                )
    interpret = _uses_interpreter(y.device)
    post = _load_module("triton_post", interpret)
    block = _BLOCK_INTERPRETER if interpret else _BLOCK_GPU
    post.launch_yuv420_chroma(
        y,
        ab_low,
        u,
        v,
        _lut(full_range, y.device),
        _bilinear_taps(ab_low.shape[1], chroma[0], y.device),
        _bilinear_taps(ab_low.shape[2], chroma[1], y.device),
        full_range,
        block,
    )
    return y, u, v
