"""Detector metrics of docs/ARCHITECTURE.md, Measures: ROC AUC, accuracy at the operating threshold, log-loss
and ECE.

Plain numpy, so the benchmark and the tests need nothing beyond the core install. Labels are 1 = fake,
0 = real; scores are P(fake). Each function refuses empty or mismatched input with ``ValueError`` rather
than returning a number that means nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

ArrayLike = Sequence[float] | Sequence[int] | npt.NDArray[np.floating] | npt.NDArray[np.integer]

#: Probabilities are clipped to [EPS, 1 - EPS] for log-loss, so one confident mistake costs ~34.5 nats
#: instead of infinity (the convention of scikit-learn's ``log_loss``).
LOG_LOSS_EPS = 1e-15
ECE_BINS = 15


def sigmoid(logits: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The logistic function: the classifier's logits as P(fake), the scores every measure here takes."""
    z = np.asarray(logits, np.float64)
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)), np.float64)  # overflow-free logistic


def _pair(labels: ArrayLike, scores: ArrayLike) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    y = np.asarray(labels)
    p = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 1 or y.shape != p.shape:
        raise ValueError(f"labels and scores must be 1-D and the same length, got {y.shape} and {p.shape}")
    if y.size == 0:
        raise ValueError("no samples")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (real) or 1 (fake)")
    if not np.isfinite(p).all():
        raise ValueError("scores must be finite")
    return y.astype(np.int64), p


def _average_ranks(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """1-based ranks with ties sharing the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(values.size, dtype=np.float64)
    start = 0
    while start < values.size:
        end = start + 1
        while end < values.size and sorted_values[end] == sorted_values[start]:
            end += 1
        ranks[order[start:end]] = (start + 1 + end) / 2.0
        start = end
    return ranks


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve via the Mann–Whitney U statistic: the probability that a random fake
    scores above a random real, ties counting one half. Needs both classes."""
    y, p = _pair(labels, scores)
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        raise ValueError("ROC AUC needs at least one fake and one real sample")
    ranks = _average_ranks(p)
    u = float(ranks[y == 1].sum()) - positives * (positives + 1) / 2.0
    return u / (positives * negatives)


def accuracy_at(labels: ArrayLike, scores: ArrayLike, threshold: float) -> float:
    """Share of samples on the right side of ``threshold`` (P >= threshold means fake)."""
    y, p = _pair(labels, scores)
    return float(np.mean((p >= threshold).astype(np.int64) == y))


def log_loss(labels: ArrayLike, scores: ArrayLike, eps: float = LOG_LOSS_EPS) -> float:
    """Mean binary cross-entropy in nats, with probabilities clipped to ``[eps, 1 - eps]``."""
    y, p = _pair(labels, scores)
    q = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q)))


def expected_calibration_error(labels: ArrayLike, scores: ArrayLike, bins: int = ECE_BINS) -> float:
    """ECE with ``bins`` equal-width bins of P(fake) over [0, 1]: sum over bins of (share of samples) x
    |mean P(fake) − share of fakes|. Bins are right-closed except the first, which also takes 0
    (the reliability-diagram convention), so P = 1 falls in the last bin."""
    y, p = _pair(labels, scores)
    if bins < 1:
        raise ValueError("bins must be >= 1")
    if (p < 0).any() or (p > 1).any():
        raise ValueError("ECE needs probabilities in [0, 1]")
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, p, side="left") - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            total += float(mask.mean()) * abs(float(p[mask].mean()) - float(y[mask].mean()))
    return total


def summary(labels: ArrayLike, scores: ArrayLike, threshold: float) -> dict[str, float | int | None]:
    """All four measures plus counts; AUC is ``None`` when only one class is present."""
    y, p = _pair(labels, scores)
    both = 0 < int(y.sum()) < y.size
    return {
        "n": int(y.size),
        "n_fake": int(y.sum()),
        "n_real": int(y.size - y.sum()),
        "auc": roc_auc(y, p) if both else None,
        "accuracy": accuracy_at(y, p, threshold),
        "log_loss": log_loss(y, p),
        "ece": expected_calibration_error(y, p),
        "threshold": float(threshold),
    }
