"""Fast CPU versions of the per-frame pre/post-processing, built on OpenCV's SIMD code.

These run on every frame, so they use OpenCV; :mod:`chromastream.kernels.combine_numpy` holds the plain numpy
reference they are tested against, and :mod:`chromastream.kernels.combine_torch` the torch version for GPU
tensors.

Frames arrive as video luma (Y', 8-bit, limited "TV" range 16..235 unless said otherwise) and leave either
as RGB (pictures) or as YUV 4:2:0 planes (the encoder's format). In the YUV path the output Y plane *is*
the input Y plane: the luminance of the output equals the input's exactly, and the model only ever speaks
through chroma, which is computed at chroma resolution (a quarter of the pixels).
"""

from __future__ import annotations

from functools import cache

import cv2
import numpy as np
import numpy.typing as npt

from chromastream.kernels.lab_numpy import gray_to_l

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]

# BT.601 R'G'B' -> Cb, Cr (unit range); scaled by 224/255 for limited range around 128.
_CB = np.array([-0.168736, -0.331264, 0.5], dtype=np.float32)
_CR = np.array([0.5, -0.418688, -0.081312], dtype=np.float32)


@cache
def luma_to_l_table(full_range: bool) -> F32:
    """8-bit Y' -> Lab L: limited range maps 16..235 onto black..white (values outside are clipped)."""
    y = np.arange(256, dtype=np.float64)
    gray = y / 255.0 if full_range else np.clip((y - 16.0) / 219.0, 0.0, 1.0)
    return gray_to_l(gray)


def l_from_luma(y: U8, full_range: bool = False) -> F32:
    """Lab L ``[H, W]`` from an 8-bit luma plane, by table lookup."""
    out: F32 = luma_to_l_table(full_range)[y]
    return out


def upsample_ab(ab_low: F32, height: int, width: int) -> F32:
    """``[2, h, w]`` -> ``[height, width, 2]`` bilinear, half-pixel centres (torch align_corners=False)."""
    hwc = np.ascontiguousarray(ab_low.transpose(1, 2, 0), dtype=np.float32)
    out: F32 = np.asarray(cv2.resize(hwc, (width, height), interpolation=cv2.INTER_LINEAR), dtype=np.float32)
    return out


def lab_to_rgb_u8(l_full: F32, ab_low: F32) -> U8:
    """Full-resolution L ``[H, W]`` + low-resolution ab ``[2, h, w]`` -> RGB uint8 ``[H, W, 3]``."""
    height, width = l_full.shape
    ab = upsample_ab(ab_low, height, width)
    lab = np.dstack([l_full.astype(np.float32), ab])
    rgb = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)
    out: U8 = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def luma_ab_to_yuv420(y: U8, ab_low: F32, full_range: bool = False) -> tuple[U8, U8, U8]:
    """Input luma ``[H, W]`` (H, W even) + low-resolution ab -> (Y, U, V) planes of 4:2:0 (BT.601).

    Y is returned unchanged; U and V come from the colour at chroma resolution: L averaged over each
    2x2 block, ab resampled to the chroma grid, converted to R'G'B' and then to Cb/Cr.
    """
    height, width = y.shape
    if height % 2 or width % 2:
        raise ValueError(f"4:2:0 needs even frame sizes, got {width}x{height}")
    ch, cw = height // 2, width // 2
    l_c = cv2.resize(l_from_luma(y, full_range), (cw, ch), interpolation=cv2.INTER_AREA)
    ab_c = upsample_ab(ab_low, ch, cw)
    rgb = np.clip(cv2.cvtColor(np.dstack([l_c, ab_c]), cv2.COLOR_Lab2RGB), 0.0, 1.0)
    scale = 255.0 if full_range else 224.0
    u = np.clip(rgb @ _CB * scale + 128.5, 0, 255).astype(np.uint8)
    v = np.clip(rgb @ _CR * scale + 128.5, 0, 255).astype(np.uint8)
    return y, u, v
