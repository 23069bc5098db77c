"""CIE Lab <-> sRGB conversions in numpy: the reference every other implementation is tested against.

Conventions (shared by every implementation in ``kernels``):
- sRGB with the IEC 61966-2-1 transfer curve, D65 white point (Xn, Yn, Zn) = (0.95047, 1, 1.08883).
- Arrays are channel-last here (``[..., 3]``), floats in [0, 1] for RGB; L in [0, 100], a/b unbounded.
- Out-of-gamut results of ``lab_to_rgb`` are clipped to [0, 1]: a colorizer can ask for colours that
  sRGB cannot show, and clipping keeps luminance closest to the request for the common small excursions.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

#: Lab lightness of the reference white: L runs from 0 (black) to ``L_WHITE``.
L_WHITE = 100.0
WHITE_D65 = np.array([0.95047, 1.0, 1.08883], dtype=np.float64)
RGB_TO_XYZ = np.array(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ],
    dtype=np.float64,
)
XYZ_TO_RGB = np.linalg.inv(RGB_TO_XYZ)
_EPS = 216.0 / 24389.0  # (6/29)^3
_KAPPA = 24389.0 / 27.0


def srgb_to_linear(c: npt.ArrayLike) -> FloatArray:
    x = np.asarray(c, dtype=np.float64)
    out = np.where(x <= 0.04045, x / 12.92, ((np.maximum(x, 0.04045) + 0.055) / 1.055) ** 2.4)
    return out.astype(np.float32)


def linear_to_srgb(c: npt.ArrayLike) -> FloatArray:
    x = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    out = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.maximum(x, 0.0031308) ** (1.0 / 2.4) - 0.055)
    return out.astype(np.float32)


def _f(t: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.where(t > _EPS, np.cbrt(np.maximum(t, _EPS)), (_KAPPA * t + 16.0) / 116.0)


def _f_inv(f: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    f3 = f**3
    return np.where(f3 > _EPS, f3, (116.0 * f - 16.0) / _KAPPA)


def rgb_to_lab(rgb: npt.ArrayLike) -> FloatArray:
    """sRGB ``[..., 3]`` in [0, 1] to Lab ``[..., 3]``."""
    lin = srgb_to_linear(rgb).astype(np.float64)
    xyz = lin @ RGB_TO_XYZ.T / WHITE_D65
    fx, fy, fz = (_f(xyz[..., i]) for i in range(3))
    lab = np.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)
    return lab.astype(np.float32)


def lab_to_rgb(lab: npt.ArrayLike) -> FloatArray:
    """Lab ``[..., 3]`` to sRGB ``[..., 3]`` in [0, 1] (out-of-gamut values clipped)."""
    x = np.asarray(lab, dtype=np.float64)
    fy = (x[..., 0] + 16.0) / 116.0
    fx = fy + x[..., 1] / 500.0
    fz = fy - x[..., 2] / 200.0
    xyz = np.stack([_f_inv(fx), _f_inv(fy), _f_inv(fz)], axis=-1) * WHITE_D65
    return linear_to_srgb(xyz @ XYZ_TO_RGB.T)


def gray_to_l(gray: npt.ArrayLike) -> FloatArray:
    """Grey level in [0, 1] (R = G = B) to Lab L: a neutral grey has a = b = 0, so only Y matters."""
    y = srgb_to_linear(gray).astype(np.float64)
    return (116.0 * _f(y) - 16.0).astype(np.float32)


def l_to_gray(l_channel: npt.ArrayLike) -> FloatArray:
    """Lab L to the sRGB grey level in [0, 1] with the same luminance (a = b = 0)."""
    fy = (np.asarray(l_channel, dtype=np.float64) + 16.0) / 116.0
    return linear_to_srgb(_f_inv(fy))


def gray_u8_to_l_table() -> FloatArray:
    """Lookup table: 8-bit grey level -> Lab L. Decoded video luma maps through it in one gather."""
    return gray_to_l(np.arange(256, dtype=np.float64) / 255.0)
