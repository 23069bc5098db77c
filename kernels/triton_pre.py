"""Triton kernel: 8-bit luma -> the colorizer's ``L / L_SCALE`` input at working size, in one pass.

Import through :mod:`chromastream.kernels.triton_frames`, which checks the tensors, builds the resampling
tables and chooses between compiled kernels (CUDA) and Triton's interpreter (CPU tensors). This module imports
triton at the top so that ``@triton.jit`` sees the real decorator; whether it compiles or interprets is
decided when the module is executed (``triton.knobs.runtime.interpret``, i.e. ``TRITON_INTERPRET``).

One program writes a ``BLOCK_H x BLOCK_W`` tile of the output. Each output pixel reads its ``KY x KX``
source taps straight from the (strided) luma plane, maps every byte through the 256-entry Y' -> L table
and sums them with the separable weights of the row and column tables. Nothing but the output is written:
no full-resolution L plane, no intermediate resize buffer.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl


@triton.jit
def _network_input_kernel(
    y_ptr,
    y_row_stride,
    y_col_stride,
    lut_ptr,
    row_idx_ptr,
    row_w_ptr,
    col_idx_ptr,
    col_w_ptr,
    out_ptr,
    out_h,
    out_w,
    l_scale,
    KY: tl.constexpr,
    KX: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    row_ok = rows < out_h
    col_ok = cols < out_w
    mask = row_ok[:, None] & col_ok[None, :]
    acc = tl.full((BLOCK_H, BLOCK_W), 0.0, tl.float32)
    # Horizontal sum per source row first, then the vertical weight: OpenCV's order of accumulation.
    for ky in tl.static_range(KY):
        src_row = tl.load(row_idx_ptr + rows * KY + ky, mask=row_ok, other=0)
        wy = tl.load(row_w_ptr + rows * KY + ky, mask=row_ok, other=0.0)
        row_acc = tl.full((BLOCK_H, BLOCK_W), 0.0, tl.float32)
        for kx in tl.static_range(KX):
            src_col = tl.load(col_idx_ptr + cols * KX + kx, mask=col_ok, other=0)
            wx = tl.load(col_w_ptr + cols * KX + kx, mask=col_ok, other=0.0)
            offs = src_row[:, None].to(tl.int64) * y_row_stride + src_col[None, :].to(tl.int64) * y_col_stride
            luma = tl.load(y_ptr + offs, mask=mask, other=0)
            lightness = tl.load(lut_ptr + luma.to(tl.int32))
            row_acc += lightness * wx[None, :]
        acc += row_acc * wy[:, None]
    out = acc / l_scale
    out_offs = rows[:, None] * out_w + cols[None, :]
    tl.store(out_ptr + out_offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def launch_network_input(
    y: torch.Tensor,
    lut: torch.Tensor,
    row_idx: torch.Tensor,
    row_w: torch.Tensor,
    col_idx: torch.Tensor,
    col_w: torch.Tensor,
    out: torch.Tensor,
    l_scale: float,
    block: tuple[int, int],
) -> None:
    """Fill contiguous ``out [h, w]`` from luma ``y [H, W]`` (any strides); tables on ``y``'s device."""
    out_h, out_w = out.shape
    grid = (triton.cdiv(out_h, block[0]), triton.cdiv(out_w, block[1]))
    kernel: Any = _network_input_kernel
    kernel[grid](
        y,
        y.stride(0),
        y.stride(1),
        lut,
        row_idx,
        row_w,
        col_idx,
        col_w,
        out,
        out_h,
        out_w,
        float(l_scale),
        KY=row_idx.shape[1],
        KX=col_idx.shape[1],
        BLOCK_H=block[0],
        BLOCK_W=block[1],
    )
