"""Colour rebalancing (Zhang et al. 2016, "Colorful Image Colorization", §2.2), applied to regression.

Most pixels of natural photographs are near grey (sky, walls, roads), so a loss averaged over pixels is
won by predicting muted colours everywhere: the network learns that a red car is "probably grey-ish"
and says so. Rebalancing weighs each pixel's loss by how rare its true colour is in the training set,
so the saturated minority counts as much as the grey majority. As in the paper, the empirical ab
distribution is smoothed (Gaussian, ``sigma`` in ab units), mixed with a uniform one (``lam``), inverted,
and normalized so the expected weight under the training distribution is 1; ``lam`` sets the strength
(1: no rebalancing; the paper uses 0.5).
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np
import torch

from chromastream.models.colorizer import spec

BIN = 10.0  # ab units per histogram bin, as in the paper
EDGE = 110.0  # |a|, |b| covered by the histogram (spec.AB_SCALE)
N_BINS = int(2 * EDGE / BIN)


def ab_histogram(images: Iterable[np.ndarray]) -> np.ndarray:
    """Pixel counts of RGB uint8 images over the ``N_BINS x N_BINS`` ab grid (float64)."""
    hist = np.zeros((N_BINS, N_BINS), np.float64)
    for rgb in images:
        lab = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
        idx = ab_bins(lab[..., 1:].reshape(-1, 2))
        np.add.at(hist, (idx[:, 0], idx[:, 1]), 1.0)
    return hist


def ab_bins(ab: np.ndarray) -> np.ndarray:
    """Bin indices ``[..., 2]`` (a, b) of ab values in Lab units, clamped to the grid."""
    return np.clip(((ab + EDGE) / BIN).astype(np.int64), 0, N_BINS - 1)


def rebalance_weights(hist: np.ndarray, lam: float = 0.5, sigma: float = 5.0) -> np.ndarray:
    """Per-bin loss weights from an ab histogram: ``1 / ((1 - lam) * p_smooth + lam / Q)``, normalized so
    ``sum(p_smooth * w) == 1`` over the Q bins that occur. Bins that never occur get weight 0 (no true
    pixel has that colour, so the weight is never read)."""
    if hist.sum() <= 0:
        raise ValueError("empty ab histogram")
    if not 0.0 < lam <= 1.0:
        raise ValueError(f"lam must be in (0, 1], got {lam}")
    p = hist / hist.sum()
    seen = p > 0
    smooth = cv2.GaussianBlur(p, (0, 0), sigma / BIN, borderType=cv2.BORDER_CONSTANT)
    smooth = np.where(seen, smooth, 0.0)
    smooth /= smooth.sum()
    q = int(seen.sum())
    w = np.where(seen, 1.0 / ((1.0 - lam) * smooth + lam / q), 0.0)
    w /= float((smooth * w).sum())
    return w


def pixel_weights(ab: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weights ``[..., 1, H, W]`` for network-unit ab ``[..., 2, H, W]`` (ab / AB_SCALE) from a
    ``weights`` grid made by :func:`rebalance_weights`."""
    idx = ((ab * spec.AB_SCALE + EDGE) / BIN).long().clamp(0, N_BINS - 1)
    return weights[idx.select(-3, 0), idx.select(-3, 1)].unsqueeze(-3)
