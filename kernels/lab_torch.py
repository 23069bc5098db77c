"""CIE Lab <-> sRGB conversions in torch, channel-first (``[B, 3, H, W]``), differentiable.

Same conventions as :mod:`chromastream.kernels.lab_numpy` (the reference). Training uses these to turn
predicted ab into RGB for the feature loss and the critic, so every op here must have a gradient;
``lab_to_rgb`` clamps only at the very end so gradients still flow for in-gamut colours.
"""

from __future__ import annotations

import torch

from chromastream.kernels.lab_numpy import RGB_TO_XYZ, WHITE_D65, XYZ_TO_RGB

_EPS = 216.0 / 24389.0
_KAPPA = 24389.0 / 27.0


def _matrix(m: object, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(m, dtype=like.dtype, device=like.device)


def srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    return torch.where(c <= 0.04045, c / 12.92, ((c.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    c = c.clamp(0.0, 1.0)
    return torch.where(c <= 0.0031308, 12.92 * c, 1.055 * c.clamp(min=0.0031308) ** (1.0 / 2.4) - 0.055)


def _f(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > _EPS, t.clamp(min=_EPS) ** (1.0 / 3.0), (_KAPPA * t + 16.0) / 116.0)


def _f_inv(f: torch.Tensor) -> torch.Tensor:
    f3 = f**3
    return torch.where(f3 > _EPS, f3, (116.0 * f - 16.0) / _KAPPA)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB ``[B, 3, H, W]`` in [0, 1] to Lab ``[B, 3, H, W]``."""
    lin = srgb_to_linear(rgb)
    m = _matrix(RGB_TO_XYZ / WHITE_D65[:, None], lin)
    xyz = torch.einsum("ij,bjhw->bihw", m, lin)
    f = _f(xyz)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab ``[B, 3, H, W]`` to sRGB ``[B, 3, H, W]`` in [0, 1]."""
    fy = (lab[:, 0] + 16.0) / 116.0
    fx = fy + lab[:, 1] / 500.0
    fz = fy - lab[:, 2] / 200.0
    xyz = torch.stack([_f_inv(fx), _f_inv(fy), _f_inv(fz)], dim=1)
    m = _matrix(XYZ_TO_RGB * WHITE_D65[None, :], xyz)
    return linear_to_srgb(torch.einsum("ij,bjhw->bihw", m, xyz))


def l_to_gray(l_channel: torch.Tensor) -> torch.Tensor:
    """Lab L (any shape) to the sRGB grey level in [0, 1] with the same luminance."""
    return linear_to_srgb(_f_inv((l_channel + 16.0) / 116.0))
