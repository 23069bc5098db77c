"""Torch version of :mod:`chromastream.kernels.combine` on batched tensors, for frames that already live on a
GPU.

When the decoder writes frames into device memory (NVDEC) and the network runs there too, moving the
planes to the host just to combine them would cost more than the combine itself. Everything here works
on ``[B, ...]`` tensors on whatever device they arrive on, with no host round trip and no
data-dependent Python control flow, so the functions batch many streams and trace cleanly.

Conventions are those of :mod:`chromastream.kernels.combine_numpy` (the reference): bilinear with half-pixel
centres, 2x2 means for chroma-grid lightness, BT.601 chroma, round-half-up to 8 bits. Planes are
channel-first: luma ``[B, H, W]``, ab ``[B, 2, h, w]``, RGB ``[B, 3, H, W]``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from chromastream.kernels import lab_torch
from chromastream.kernels.combine import luma_to_l_table as _luma_to_l_table_np
from chromastream.kernels.combine_numpy import CB_ROW, CR_ROW
from chromastream.kernels.luma import PixelFormat, planar_layout


def luma_to_l_table(
    full_range: bool = False, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The 256-entry Y' -> Lab L table on ``device`` (built once in numpy, so every path agrees)."""
    return torch.as_tensor(_luma_to_l_table_np(full_range), dtype=dtype, device=device)


def l_from_luma(y: torch.Tensor, full_range: bool = False, table: torch.Tensor | None = None) -> torch.Tensor:
    """Lab L from uint8 luma of any shape, by a gather through the 256-entry table.

    A gather costs one memory read per pixel, far less than evaluating the sRGB curve and a cube root;
    pass ``table`` (from :func:`luma_to_l_table`) to skip re-uploading it every frame.
    """
    if y.dtype != torch.uint8:
        raise TypeError(f"luma must be uint8, got {y.dtype}")
    lut = luma_to_l_table(full_range, y.device) if table is None else table.to(y.device)
    return lut[y.long()]


def upsample_ab(ab_low: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[B, 2, h, w]`` -> ``[B, 2, height, width]`` bilinear, half-pixel centres (= cv2.INTER_LINEAR)."""
    return F.interpolate(ab_low, size=(height, width), mode="bilinear", align_corners=False, antialias=False)


def area_down2(x: torch.Tensor) -> torch.Tensor:
    """Mean of each 2x2 block of ``[B, C, H, W]`` (H, W even)."""
    return F.avg_pool2d(x, kernel_size=2, stride=2)


def to_u8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats to uint8 with round-half-up (the rounding of every path in ``kernels``)."""
    return torch.floor(x * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)


def _l_channel(l_full: torch.Tensor) -> torch.Tensor:
    if l_full.dim() == 3:
        return l_full[:, None]
    if l_full.dim() == 4 and l_full.shape[1] == 1:
        return l_full
    raise ValueError(f"L must be [B, H, W] or [B, 1, H, W], got {tuple(l_full.shape)}")


def lab_to_rgb(l_full: torch.Tensor, ab_low: torch.Tensor) -> torch.Tensor:
    """Full-resolution L ``[B, (1,) H, W]`` + low-resolution ab ``[B, 2, h, w]`` -> RGB ``[B, 3, H, W]``.

    Floats in [0, 1] and differentiable, so training can score the picture a viewer would see.
    """
    l4 = _l_channel(l_full)
    ab = upsample_ab(ab_low.to(l4.dtype), l4.shape[-2], l4.shape[-1])
    return lab_torch.lab_to_rgb(torch.cat([l4, ab], dim=1))


def lab_to_rgb_u8(l_full: torch.Tensor, ab_low: torch.Tensor) -> torch.Tensor:
    """As :func:`lab_to_rgb`, as uint8 ``[B, 3, H, W]``."""
    return to_u8(lab_to_rgb(l_full, ab_low))


def chroma_u8(rgb: torch.Tensor, full_range: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """R'G'B' ``[B, 3, h, w]`` in [0, 1] -> 8-bit Cb, Cr ``[B, h, w]`` (BT.601)."""
    scale = 255.0 if full_range else 224.0
    rows = torch.as_tensor(np.stack([CB_ROW, CR_ROW]), dtype=rgb.dtype, device=rgb.device) * scale
    cbcr = torch.einsum("kc,bchw->bkhw", rows, rgb.clamp(0.0, 1.0))
    uv = torch.floor(cbcr + 128.5).clamp(0, 255).to(torch.uint8)
    return uv[:, 0], uv[:, 1]


def luma_ab_to_yuv420(
    y: torch.Tensor, ab_low: torch.Tensor, full_range: bool = False, table: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Luma ``[B, H, W]`` uint8 (H, W even) + ab ``[B, 2, h, w]`` -> (Y, U, V) of 4:2:0, Y returned as is.

    Chroma is computed at chroma resolution from L averaged over each 2x2 block, as in
    :func:`chromastream.kernels.combine.luma_ab_to_yuv420`: a quarter of the pixels go through the Lab maths.
    """
    if y.dim() != 3:
        raise ValueError(f"luma must be [B, H, W], got {tuple(y.shape)}")
    height, width = y.shape[-2:]
    if height % 2 or width % 2:
        raise ValueError(f"4:2:0 needs even frame sizes, got {width}x{height}")
    l_c = area_down2(l_from_luma(y, full_range, table)[:, None])
    ab_c = upsample_ab(ab_low.to(l_c.dtype), height // 2, width // 2)
    rgb = lab_torch.lab_to_rgb(torch.cat([l_c, ab_c], dim=1))
    u, v = chroma_u8(rgb, full_range)
    return y, u, v


def y_plane(
    buffer: torch.Tensor,
    fmt: PixelFormat,
    height: int,
    width: int,
    y_stride: int | None = None,
    uv_stride: int | None = None,
    y_rows: int | None = None,
) -> torch.Tensor:
    """Y plane ``[height, width]`` of a flat uint8 I420 / NV12 tensor, as a view (torch twin of
    :func:`chromastream.kernels.luma.y_plane`, for frames a hardware decoder left in device memory)."""
    layout = planar_layout(fmt, height, width, y_stride, uv_stride, y_rows)
    if buffer.dtype != torch.uint8 or buffer.dim() != 1:
        raise ValueError(
            f"frame buffer must be a flat uint8 tensor, got {buffer.dtype} {tuple(buffer.shape)}"
        )
    if buffer.numel() != layout.size:
        raise ValueError(
            f"{fmt} frame {width}x{height} (y_stride {layout.y_stride}, y_rows {layout.y_rows}, "
            f"uv_stride {layout.uv_stride}) needs {layout.size} bytes, got {buffer.numel()}"
        )
    return buffer[: height * layout.y_stride].view(height, layout.y_stride)[:, :width]
