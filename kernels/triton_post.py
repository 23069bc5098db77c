"""Triton kernel: full-resolution luma + low-resolution ab -> the U and V planes of 4:2:0, in one pass.

Import through :mod:`chromastream.kernels.triton_frames` (it validates the tensors, uploads the tables and
picks compiled or interpreted kernels). The maths is
:func:`chromastream.kernels.combine_numpy.luma_ab_to_yuv420`, one chroma sample per lane: the four luma bytes
of its 2x2 block go through the Y' -> L table and are averaged, ab is sampled bilinearly from the network's
output with the reference's half-pixel taps, Lab -> XYZ -> linear RGB -> R'G'B' (clipped) -> BT.601 Cb/Cr,
rounded half up to 8 bits. Only U and V are written; the output's Y plane is the input's, untouched.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from chromastream.kernels.combine_numpy import CB_ROW, CR_ROW
from chromastream.kernels.lab_numpy import WHITE_D65, XYZ_TO_RGB

# Kernels may only read module globals that are compile-time constants: the XYZ -> linear RGB matrix
# with the D65 white folded in (as in kernels.lab_torch), and the BT.601 chroma rows. Write them to the
# right of a tensor (``x * _M00``): the interpreter cannot multiply a constexpr by a tensor.
_M = XYZ_TO_RGB * WHITE_D65[None, :]
_M00: tl.constexpr = tl.constexpr(float(_M[0, 0]))
_M01: tl.constexpr = tl.constexpr(float(_M[0, 1]))
_M02: tl.constexpr = tl.constexpr(float(_M[0, 2]))
_M10: tl.constexpr = tl.constexpr(float(_M[1, 0]))
_M11: tl.constexpr = tl.constexpr(float(_M[1, 1]))
_M12: tl.constexpr = tl.constexpr(float(_M[1, 2]))
_M20: tl.constexpr = tl.constexpr(float(_M[2, 0]))
_M21: tl.constexpr = tl.constexpr(float(_M[2, 1]))
_M22: tl.constexpr = tl.constexpr(float(_M[2, 2]))
_CB_R: tl.constexpr = tl.constexpr(float(CB_ROW[0]))
_CB_G: tl.constexpr = tl.constexpr(float(CB_ROW[1]))
_CB_B: tl.constexpr = tl.constexpr(float(CB_ROW[2]))
_CR_R: tl.constexpr = tl.constexpr(float(CR_ROW[0]))
_CR_G: tl.constexpr = tl.constexpr(float(CR_ROW[1]))
_CR_B: tl.constexpr = tl.constexpr(float(CR_ROW[2]))
_EPS: tl.constexpr = tl.constexpr(216.0 / 24389.0)
_KAPPA: tl.constexpr = tl.constexpr(24389.0 / 27.0)


@triton.jit
def _f_inv(f):
    f3 = f * f * f
    return tl.where(f3 > _EPS, f3, (116.0 * f - 16.0) / _KAPPA)


@triton.jit
def _to_srgb(c):
    c = tl.minimum(tl.maximum(c, 0.0), 1.0)
    curve = 1.055 * tl.exp2(tl.log2(tl.maximum(c, 0.0031308)) * (1.0 / 2.4)) - 0.055
    return tl.where(c <= 0.0031308, 12.92 * c, curve)


@triton.jit
def _to_code(x):
    """Unit-range chroma already scaled and offset -> 8-bit code, round half up, clamped."""
    return tl.minimum(tl.maximum(tl.floor(x + 128.5), 0.0), 255.0).to(tl.uint8)


@triton.jit
def _yuv420_chroma_kernel(
    y_ptr,
    y_row_stride,
    y_col_stride,
    ab_ptr,
    ab_chan_stride,
    ab_row_stride,
    ab_col_stride,
    u_ptr,
    u_row_stride,
    u_col_stride,
    v_ptr,
    v_row_stride,
    v_col_stride,
    lut_ptr,
    row_i0_ptr,
    row_i1_ptr,
    row_w_ptr,
    col_i0_ptr,
    col_i1_ptr,
    col_w_ptr,
    chroma_h,
    chroma_w,
    scale,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    row_ok = rows < chroma_h
    col_ok = cols < chroma_w
    mask = row_ok[:, None] & col_ok[None, :]

    # L at chroma resolution: the mean of the four L values of each 2x2 luma block.
    y_offs = (2 * rows[:, None]).to(tl.int64) * y_row_stride + (2 * cols[None, :]).to(tl.int64) * y_col_stride
    y00 = tl.load(y_ptr + y_offs, mask=mask, other=0).to(tl.int32)
    y01 = tl.load(y_ptr + y_offs + y_col_stride, mask=mask, other=0).to(tl.int32)
    y10 = tl.load(y_ptr + y_offs + y_row_stride, mask=mask, other=0).to(tl.int32)
    y11 = tl.load(y_ptr + y_offs + y_row_stride + y_col_stride, mask=mask, other=0).to(tl.int32)
    top = tl.load(lut_ptr + y00) + tl.load(lut_ptr + y01)
    bottom = tl.load(lut_ptr + y10) + tl.load(lut_ptr + y11)
    lightness = (top + bottom) * 0.25

    # ab on the chroma grid: separable bilinear, rows first, with the reference's taps.
    r0 = tl.load(row_i0_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    r1 = tl.load(row_i1_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    wr = tl.load(row_w_ptr + rows, mask=row_ok, other=0.0)[:, None]
    c0 = tl.load(col_i0_ptr + cols, mask=col_ok, other=0).to(tl.int64)
    c1 = tl.load(col_i1_ptr + cols, mask=col_ok, other=0).to(tl.int64)
    wc = tl.load(col_w_ptr + cols, mask=col_ok, other=0.0)[None, :]
    o00 = r0[:, None] * ab_row_stride + c0[None, :] * ab_col_stride
    o01 = r0[:, None] * ab_row_stride + c1[None, :] * ab_col_stride
    o10 = r1[:, None] * ab_row_stride + c0[None, :] * ab_col_stride
    o11 = r1[:, None] * ab_row_stride + c1[None, :] * ab_col_stride
    a00 = tl.load(ab_ptr + o00, mask=mask, other=0.0).to(tl.float32)
    a01 = tl.load(ab_ptr + o01, mask=mask, other=0.0).to(tl.float32)
    a10 = tl.load(ab_ptr + o10, mask=mask, other=0.0).to(tl.float32)
    a11 = tl.load(ab_ptr + o11, mask=mask, other=0.0).to(tl.float32)
    a_left = a00 * (1.0 - wr) + a10 * wr
    a_right = a01 * (1.0 - wr) + a11 * wr
    a = a_left * (1.0 - wc) + a_right * wc
    b_ptr = ab_ptr + ab_chan_stride
    b00 = tl.load(b_ptr + o00, mask=mask, other=0.0).to(tl.float32)
    b01 = tl.load(b_ptr + o01, mask=mask, other=0.0).to(tl.float32)
    b10 = tl.load(b_ptr + o10, mask=mask, other=0.0).to(tl.float32)
    b11 = tl.load(b_ptr + o11, mask=mask, other=0.0).to(tl.float32)
    b_left = b00 * (1.0 - wr) + b10 * wr
    b_right = b01 * (1.0 - wr) + b11 * wr
    b = b_left * (1.0 - wc) + b_right * wc

    # Lab -> XYZ (white folded into the matrix) -> linear RGB -> R'G'B' in [0, 1].
    fy = (lightness + 16.0) / 116.0
    xx = _f_inv(fy + a / 500.0)
    yy = _f_inv(fy)
    zz = _f_inv(fy - b / 200.0)
    red = _to_srgb(xx * _M00 + yy * _M01 + zz * _M02)
    green = _to_srgb(xx * _M10 + yy * _M11 + zz * _M12)
    blue = _to_srgb(xx * _M20 + yy * _M21 + zz * _M22)

    cb = (red * _CB_R + green * _CB_G + blue * _CB_B) * scale
    cr = (red * _CR_R + green * _CR_G + blue * _CR_B) * scale
    u_offs = rows[:, None] * u_row_stride + cols[None, :] * u_col_stride
    v_offs = rows[:, None] * v_row_stride + cols[None, :] * v_col_stride
    tl.store(u_ptr + u_offs, _to_code(cb), mask=mask)
    tl.store(v_ptr + v_offs, _to_code(cr), mask=mask)


def launch_yuv420_chroma(
    y: torch.Tensor,
    ab: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    lut: torch.Tensor,
    row_taps: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    col_taps: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    full_range: bool,
    block: tuple[int, int],
) -> None:
    """Write ``u``, ``v [H/2, W/2]`` (any strides) from luma ``y [H, W]`` and ``ab [2, h, w]``."""
    chroma_h, chroma_w = u.shape
    grid = (triton.cdiv(chroma_h, block[0]), triton.cdiv(chroma_w, block[1]))
    kernel: Any = _yuv420_chroma_kernel
    kernel[grid](
        y,
        y.stride(0),
        y.stride(1),
        ab,
        ab.stride(0),
        ab.stride(1),
        ab.stride(2),
        u,
        u.stride(0),
        u.stride(1),
        v,
        v.stride(0),
        v.stride(1),
        lut,
        *row_taps,
        *col_taps,
        chroma_h,
        chroma_w,
        255.0 if full_range else 224.0,
        BLOCK_H=block[0],
        BLOCK_W=block[1],
    )
