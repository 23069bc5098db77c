"""Plain-numpy reference of :mod:`chromastream.kernels.combine`: every step written out, nothing delegated to
OpenCV.

The OpenCV versions are fast but opaque (fixed-point paths, SIMD, their own Lab constants); this module
spells out the same maths with the conventions of :mod:`chromastream.kernels.lab_numpy`, so the fast CPU code
and the torch code can both be checked against something readable. It is not meant to be fast.

Resampling conventions (the ones the network's training and every implementation share):
- Bilinear with half-pixel centres: output pixel ``i`` samples the input at ``(i + 0.5) * in / out - 0.5``,
  clamped to the first and last input pixels. This is ``cv2.INTER_LINEAR`` and
  ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` without antialiasing.
- Chroma-grid lightness is the mean of each 2x2 block (``cv2.INTER_AREA`` at an exact factor of two,
  ``torch.nn.functional.avg_pool2d(x, 2)``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from chromastream.kernels.combine import luma_to_l_table
from chromastream.kernels.lab_numpy import lab_to_rgb

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

# BT.601 R'G'B' -> Cb, Cr in unit range (the same rows as kernels.combine, in double precision).
CB_ROW = np.array([-0.168736, -0.331264, 0.5], dtype=np.float64)
CR_ROW = np.array([0.5, -0.418688, -0.081312], dtype=np.float64)


def l_from_luma(y: U8, full_range: bool = False) -> F32:
    """Lab L from 8-bit luma: the same 256-entry table as the fast path (one source of truth)."""
    out: F32 = luma_to_l_table(full_range)[np.asarray(y, dtype=np.uint8)]
    return out


def linear_taps(n_in: int, n_out: int) -> tuple[I64, I64, F64]:
    """Indices ``i0``, ``i1`` and the weight of ``i1`` for half-pixel-centre linear resampling.

    Sources left of the first pixel centre clamp to it (weight 0), and ``i1`` never passes the last pixel,
    which is how both OpenCV and torch treat the borders.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be positive, got {n_in} -> {n_out}")
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = np.where(i1 > i0, src - i0, 0.0)
    return i0, i1, w1


def resize_bilinear(x: npt.ArrayLike, height: int, width: int) -> F32:
    """Bilinear resize of ``[..., h, w]`` to ``[..., height, width]`` (half-pixel centres), separably."""
    a = np.asarray(x, dtype=np.float64)
    y0, y1, wy = linear_taps(a.shape[-2], height)
    x0, x1, wx = linear_taps(a.shape[-1], width)
    rows = a[..., y0, :] * (1.0 - wy)[:, None] + a[..., y1, :] * wy[:, None]
    out = rows[..., x0] * (1.0 - wx) + rows[..., x1] * wx
    return out.astype(np.float32)


def upsample_ab(ab_low: F32, height: int, width: int) -> F32:
    """``[2, h, w]`` -> ``[height, width, 2]``, channel-last like
    :func:`chromastream.kernels.combine.upsample_ab`."""
    return np.ascontiguousarray(resize_bilinear(ab_low, height, width).transpose(1, 2, 0))


def area_down2(x: npt.ArrayLike) -> F32:
    """Mean of each 2x2 block of ``[..., H, W]`` (H, W even): one value per 4:2:0 chroma sample."""
    a = np.asarray(x, dtype=np.float64)
    height, width = a.shape[-2:]
    if height % 2 or width % 2:
        raise ValueError(f"2x2 area downsampling needs even sizes, got {width}x{height}")
    blocks = a.reshape(*a.shape[:-2], height // 2, 2, width // 2, 2)
    out: F32 = blocks.mean(axis=(-3, -1)).astype(np.float32)
    return out


def to_u8(x: npt.ArrayLike) -> U8:
    """[0, 1] floats to 8-bit with round-half-up, the rounding every path in ``kernels`` uses."""
    out: U8 = np.clip(np.floor(np.asarray(x, dtype=np.float64) * 255.0 + 0.5), 0, 255).astype(np.uint8)
    return out


def lab_to_rgb_u8(l_full: F32, ab_low: F32) -> U8:
    """Full-resolution L ``[H, W]`` + low-resolution ab ``[2, h, w]`` -> RGB uint8 ``[H, W, 3]``."""
    height, width = l_full.shape
    ab = upsample_ab(ab_low, height, width)
    lab = np.concatenate([np.asarray(l_full, dtype=np.float32)[..., None], ab], axis=-1)
    return to_u8(lab_to_rgb(lab))


def chroma_u8(rgb: npt.ArrayLike, full_range: bool) -> tuple[U8, U8]:
    """R'G'B' in [0, 1] ``[..., 3]`` -> 8-bit Cb, Cr (BT.601; 224 levels around 128 in limited range)."""
    c = np.clip(np.asarray(rgb, dtype=np.float64), 0.0, 1.0)
    scale = 255.0 if full_range else 224.0
    u = np.clip(np.floor(c @ CB_ROW * scale + 128.5), 0, 255).astype(np.uint8)
    v = np.clip(np.floor(c @ CR_ROW * scale + 128.5), 0, 255).astype(np.uint8)
    return u, v


def luma_ab_to_yuv420(y: U8, ab_low: F32, full_range: bool = False) -> tuple[U8, U8, U8]:
    """Input luma ``[H, W]`` (H, W even) + low-resolution ab -> (Y, U, V) 4:2:0 planes, Y unchanged."""
    height, width = y.shape
    if height % 2 or width % 2:
        raise ValueError(f"4:2:0 needs even frame sizes, got {width}x{height}")
    l_c = area_down2(l_from_luma(y, full_range))
    ab_c = upsample_ab(ab_low, height // 2, width // 2)
    rgb = lab_to_rgb(np.concatenate([l_c[..., None], ab_c], axis=-1))
    u, v = chroma_u8(rgb, full_range)
    return y, u, v
