"""The measures docs/ARCHITECTURE.md, Measures defines, in one place, so every harness computes them the same
way.

Image quality compares a colorized picture with the colour original: PSNR and SSIM measure closeness,
colourfulness (CF) measures how much colour there is at all. Both views are needed because a
colorizer that plays safe and outputs grey scores a respectable PSNR while being useless; ΔCF
exposes that. Video measures judge stability over time: CDC compares colour distributions between
nearby frames, warp error follows the motion, flicker looks at pixels whose true colour is static.

All image inputs are 8-bit RGB ``[H, W, 3]`` (channel-last, R first).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

PSNR_CAP_DB = 100.0
"""PSNR of identical pictures is infinite; it is capped so means and JSON stay finite (a near-grey
ground truth compared with the grey baseline can hit this)."""

CDC_OFFSETS = (1, 2, 4)


def _check_pair(x: np.ndarray, y: np.ndarray) -> None:
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"expected RGB [H, W, 3], got {x.shape}")


def psnr(x: U8, y: U8, max_db: float | None = PSNR_CAP_DB) -> float:
    """PSNR in dB over all pixels and all three RGB channels of two 8-bit pictures (peak 255).

    ``max_db`` caps the value (``None`` gives ``inf`` for identical pictures).
    """
    _check_pair(x, y)
    mse = float(np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2))
    value = math.inf if mse == 0.0 else 10.0 * math.log10(255.0**2 / mse)
    return value if max_db is None else min(value, max_db)


def ssim(x: U8, y: U8) -> float:
    """SSIM of two 8-bit RGB pictures, computed per RGB channel and averaged over the channels.

    Per-channel RGB, not luminance: the colorizer keeps the input's luminance, so a luminance SSIM
    would be close to 1 for every output and say nothing about the colours. Settings are Wang et al.
    (2004): 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, population covariances, data
    range 255 -- scikit-image's ``structural_similarity`` with ``gaussian_weights=True``.
    """
    _check_pair(x, y)
    try:
        from skimage.metrics import structural_similarity
    except ImportError as exc:
        raise ImportError("SSIM needs scikit-image: pip install -e '.[bench]'") from exc
    compare: Any = structural_similarity  # scikit-image ships no type hints
    value = compare(
        x,
        y,
        data_range=255,
        channel_axis=-1,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    return float(value)


def colourfulness(x: U8) -> float:
    """Hasler & Süsstrunk (2003) colourfulness on 0..255 RGB: ``sqrt(σrg² + σyb²) + 0.3·sqrt(μrg² + μyb²)``
    with ``rg = R − G`` and ``yb = (R + G)/2 − B``. A grey picture scores 0; ~100 is very colourful."""
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"expected RGB [H, W, 3], got {x.shape}")
    rgb = x.astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg = r - g
    yb = 0.5 * (r + g) - b
    std = math.sqrt(float(rg.var()) + float(yb.var()))
    mean = math.sqrt(float(rg.mean()) ** 2 + float(yb.mean()) ** 2)
    return std + 0.3 * mean


def delta_colourfulness(out: U8, truth: U8) -> float:
    """ΔCF = |CF(out) − CF(truth)|: how far the output's amount of colour is from the truth's."""
    return abs(colourfulness(out) - colourfulness(truth))


def image_scores(out: U8, truth: U8, cf_truth: float | None = None) -> dict[str, float]:
    """All image measures of one output against its ground truth (``cf_truth`` saves recomputing it)."""
    cf_out = colourfulness(out)
    cf_gt = colourfulness(truth) if cf_truth is None else cf_truth
    return {
        "psnr": psnr(out, truth),
        "ssim": ssim(out, truth),
        "cf": cf_out,
        "cf_gt": cf_gt,
        "dcf": abs(cf_out - cf_gt),
    }


# ----------------------------------------------------------------------------------------------- video


def channel_histograms(x: U8) -> F64:
    """Normalized 256-bin histograms of R, G and B: ``[3, 256]``, each row summing to 1."""
    hist = np.stack([np.bincount(x[..., c].ravel(), minlength=256) for c in range(3)]).astype(np.float64)
    total = hist.sum(axis=1, keepdims=True)
    result: F64 = hist / np.maximum(total, 1.0)
    return result


def js_divergence(p: F64, q: F64) -> float:
    """Jensen–Shannon divergence of two discrete distributions, natural log (bounded by ln 2), as in
    the reference CDC code (``0.5·KL(p‖m) + 0.5·KL(q‖m)`` with scipy's entropy)."""
    m = 0.5 * (p + q)

    def kl(a: F64) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log(a[mask] / m[mask])))

    return 0.5 * kl(p) + 0.5 * kl(q)


def cdc(frames: Sequence[U8], offsets: Iterable[int] = CDC_OFFSETS) -> dict[str, float]:
    """Colour distribution consistency (Lei & Chen 2019): for each offset k, the mean over t of the
    JS divergence between the per-channel RGB histograms of frames t and t+k (averaged over R, G, B).

    Returns ``{"k1": ..., "k2": ..., "k4": ..., "mean": ...}``; lower is steadier. Offsets longer
    than the sequence are left out.
    """
    hists = [channel_histograms(f) for f in frames]
    result: dict[str, float] = {}
    for k in offsets:
        if k < 1 or k >= len(hists):
            continue
        values = [
            float(np.mean([js_divergence(hists[t][c], hists[t + k][c]) for c in range(3)]))
            for t in range(len(hists) - k)
        ]
        result[f"k{k}"] = float(np.mean(values))
    if result:
        result["mean"] = float(np.mean(list(result.values())))
    return result


def rgb_to_ab(x: U8) -> F32:
    """Lab a/b ``[H, W, 2]`` of an 8-bit RGB picture (OpenCV's float path, the same conversion the
    colorizer's output stage inverts)."""
    lab = cv2.cvtColor(x.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    ab: F32 = np.ascontiguousarray(lab[..., 1:])
    return ab


def _ab_distance(a: F32, b: F32) -> F32:
    d: F32 = np.sqrt(np.sum((a - b) ** 2, axis=-1))
    return d


def flicker(outputs: Sequence[U8], truths: Sequence[U8], threshold: float = 1.0) -> float:
    """Mean ‖Δab‖ between consecutive outputs, over the pixels whose ground-truth ab changes by less
    than ``threshold`` (Euclidean, Lab units): where the true colour is still, any change is flicker."""
    if len(outputs) != len(truths):
        raise ValueError("outputs and truths must have the same length")
    total, count = 0.0, 0
    prev_out = prev_gt = None
    for out, gt in zip(outputs, truths, strict=True):
        ab_out, ab_gt = rgb_to_ab(out), rgb_to_ab(gt)
        if prev_out is not None and prev_gt is not None:
            still = _ab_distance(ab_gt, prev_gt) < threshold
            total += float(_ab_distance(ab_out, prev_out)[still].sum())
            count += int(still.sum())
        prev_out, prev_gt = ab_out, ab_gt
    return total / count if count else math.nan


def _flow(dis: Any, a: np.ndarray, b: np.ndarray) -> F32:
    flow: F32 = dis.calc(a, b, None)
    return flow


def _warp(img: np.ndarray, flow: F32) -> np.ndarray:
    """Sample ``img`` at ``x + flow(x)`` (backward warping with bilinear interpolation)."""
    h, w = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(img, grid_x + flow[..., 0], grid_y + flow[..., 1], cv2.INTER_LINEAR)


def valid_flow_mask(fw: F32, bw: F32) -> npt.NDArray[np.bool_]:
    """Pixels whose forward flow is confirmed by the backward flow and lands inside the frame
    (Sundaram et al. 2010 test, as used by Lai et al. 2018): occluded pixels have no match to compare."""
    h, w = fw.shape[:2]
    bw_at = _warp(bw, fw)
    sum_sq = np.sum((fw + bw_at) ** 2, axis=-1)
    bound = 0.01 * (np.sum(fw**2, axis=-1) + np.sum(bw_at**2, axis=-1)) + 0.5
    grid_x, grid_y = np.meshgrid(np.arange(w), np.arange(h))
    tx, ty = grid_x + fw[..., 0], grid_y + fw[..., 1]
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    mask: npt.NDArray[np.bool_] = (sum_sq < bound) & inside
    return mask


def warp_error(outputs: Sequence[U8], truths: Sequence[U8]) -> float:
    """Mean ‖Δab‖ between output t and output t+1 warped back along the motion, over valid pixels.

    The flow is DIS optical flow computed on the ground-truth frames (their luminance), so the
    colorizer's own mistakes cannot bend the motion estimate; occlusions are removed by the
    forward-backward check.
    """
    return warp_errors({"outputs": outputs}, truths)["outputs"]


def warp_errors(outputs: Mapping[str, Sequence[U8]], truths: Sequence[U8]) -> dict[str, float]:
    """:func:`warp_error` of several output sequences of the same ground truth, keyed like ``outputs``.

    The optical flow is the expensive part and depends on the ground truth only, so it is computed
    once per frame pair and shared: comparing colorizers then costs one flow, not one per colorizer,
    and every colorizer is judged on exactly the same motion and the same valid pixels.
    """
    for name, frames in outputs.items():
        if len(frames) != len(truths):
            raise ValueError(f"{name}: outputs and truths must have the same length")
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)  # type: ignore[attr-defined]
    totals = dict.fromkeys(outputs, 0.0)
    count = 0
    for t in range(len(truths) - 1):
        g0 = cv2.cvtColor(truths[t], cv2.COLOR_RGB2GRAY)
        g1 = cv2.cvtColor(truths[t + 1], cv2.COLOR_RGB2GRAY)
        fw, bw = _flow(dis, g0, g1), _flow(dis, g1, g0)
        valid = valid_flow_mask(fw, bw)
        count += int(valid.sum())
        for name, frames in outputs.items():
            ab0 = rgb_to_ab(frames[t])
            ab1_warped = _warp(rgb_to_ab(frames[t + 1]), fw)
            totals[name] += float(_ab_distance(ab0, ab1_warped)[valid].sum())
    return {name: total / count if count else math.nan for name, total in totals.items()}


def summarize(values: Iterable[float]) -> dict[str, float]:
    """Mean and median of finite values (the median resists the one odd picture in a small set)."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return {"mean": math.nan, "median": math.nan, "n": 0}
    return {"mean": float(arr.mean()), "median": float(np.median(arr)), "n": int(arr.size)}
