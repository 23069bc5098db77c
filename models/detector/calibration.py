"""Temperature scaling, calibration and ranking metrics, and the operating point of the detector.

A classifier trained with log-loss on self-blended fakes is sure of itself (SBI fakes are easier than
what it will meet), so its raw sigmoid says 0.99 where 0.8 would be honest. One temperature ``T``,
fitted by log-loss on held-out real faces and their self-blended fakes, divides the logit: ranking (AUC)
is unchanged and the probability means what it says on data like the held-out set (Guo et al. 2017).

Operating point: real CCTV footage must not be called fake, so the upper edge of the uncertain band (the
``fake`` decision) sits at the calibrated probability that only ``max_fpr`` of held-out real faces reach;
the lower edge (the ``real`` decision) at the probability below which only ``max_fnr`` of held-out fakes
fall, and at least ``min_band`` below the upper edge. ``threshold`` is the middle and ``uncertain_band``
half the width, so ``label_for(p, threshold, band)`` gives fake for ``p >= threshold + band`` and real for
``p < threshold - band``.

``python -m chromastream.models.detector.calibration --run runs/detector`` fits all this on the calibration
half of the held-out split, measures AUC and ECE before/after on the evaluation half, and writes
``calibration.json`` and a reliability diagram into the run folder.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from chromastream.models.detector.metrics import expected_calibration_error, log_loss, roc_auc, sigmoid

F64 = npt.NDArray[np.float64]
ECE_BINS = 15


def _nll_logits(logits: F64, labels: F64, temperature: float) -> float:
    z = logits / temperature
    # log(1 + e^z) - y z, stable for large |z|
    return float(np.mean(np.logaddexp(0.0, z) - labels * z))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimizing log-loss (1-D search on log T: the loss is smooth and unimodal there)."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.float64)
    if z.size == 0 or y.min() == y.max():
        raise ValueError("temperature scaling needs both classes")
    lo, hi = math.log(0.05), math.log(50.0)
    grid = np.linspace(lo, hi, 81)
    best = int(np.argmin([_nll_logits(z, y, math.exp(t)) for t in grid]))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    golden = (math.sqrt(5) - 1) / 2
    for _ in range(60):  # golden-section refinement inside the bracketing grid cells
        c, d = b - golden * (b - a), a + golden * (b - a)
        if _nll_logits(z, y, math.exp(c)) < _nll_logits(z, y, math.exp(d)):
            b = d
        else:
            a = c
    return float(math.exp((a + b) / 2))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    p = np.asarray(probs, np.float64)
    y = np.asarray(labels, np.float64)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        sel = idx == b
        if sel.any():
            rows.append(
                {
                    "lo": b / bins,
                    "hi": (b + 1) / bins,
                    "confidence": float(p[sel].mean()),
                    "frequency": float(y[sel].mean()),
                    "count": int(sel.sum()),
                }
            )
    return rows


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    uncertain_band: float
    max_fpr: float
    max_fnr: float


def choose_operating_point(
    probs: np.ndarray,
    labels: np.ndarray,
    max_fpr: float = 0.02,
    max_fnr: float = 0.10,
    min_band: float = 0.05,
) -> OperatingPoint:
    """Threshold and uncertain band from calibrated held-out probabilities (rule in the module docs)."""
    p = np.asarray(probs, np.float64)
    y = np.asarray(labels).astype(bool)
    upper = float(np.quantile(p[~y], 1.0 - max_fpr, method="higher"))
    upper = min(max(upper, 2 * min_band), 1.0)
    lower = float(np.quantile(p[y], max_fnr, method="lower"))
    lower = max(min(lower, upper - 2 * min_band), 0.0)
    # A face is "fake" from p >= upper; nudge it just above the real quantile so that quantile is not fake.
    upper = float(np.nextafter(upper, 2.0))
    return OperatingPoint((upper + lower) / 2, (upper - lower) / 2, max_fpr, max_fnr)


def summarize(probs: np.ndarray, labels: np.ndarray, point: OperatingPoint | None = None) -> dict[str, float]:
    """AUC, log-loss, ECE and accuracy (at 0.5, and at the operating point's decisions)."""
    p = np.asarray(probs, np.float64)
    y = np.asarray(labels).astype(bool)
    out = {
        "n": float(len(p)),
        "auc": roc_auc(y, p),
        "log_loss": log_loss(y, p),
        "ece": expected_calibration_error(y, p),
        "accuracy_at_0.5": float(((p >= 0.5) == y).mean()),
    }
    if point is not None:
        fake = p >= point.threshold + point.uncertain_band
        real = p < point.threshold - point.uncertain_band
        decided = fake | real
        out["accuracy_decided"] = (
            float((fake[decided] == y[decided]).mean()) if decided.any() else float("nan")
        )
        out["uncertain_rate"] = float(1 - decided.mean())
        out["real_called_fake"] = float(fake[~y].mean())
        out["fake_called_real"] = float(real[y].mean())
        out["accuracy_at_threshold"] = float(((p >= point.threshold) == y).mean())
    return out


def reliability_diagram(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, bins: int = ECE_BINS, size: int = 480
) -> None:
    """A reliability diagram (observed fake frequency against mean predicted P(fake) per bin), drawn with
    OpenCV so no plotting library is needed; each curve is labelled with its ECE."""
    import cv2

    pad, top = 60, 40
    img = np.full((size + top + pad, size + 2 * pad, 3), 255, np.uint8)

    def xy(px: float, py: float) -> tuple[int, int]:
        return pad + round(px * size), top + round((1 - py) * size)

    for k in range(6):
        v = k / 5
        cv2.line(img, xy(v, 0), xy(v, 1), (230, 230, 230), 1)
        cv2.line(img, xy(0, v), xy(1, v), (230, 230, 230), 1)
        cv2.putText(img, f"{v:.1f}", (xy(v, 0)[0] - 12, top + size + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 0, 1)
        cv2.putText(img, f"{v:.1f}", (pad - 35, xy(0, v)[1] + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 0, 1)
    cv2.rectangle(img, xy(0, 1), xy(1, 0), (0, 0, 0), 1)
    cv2.line(img, xy(0, 0), xy(1, 1), (150, 150, 150), 1, cv2.LINE_AA)
    colours = [(40, 40, 220), (200, 110, 20), (30, 150, 30), (150, 50, 150)]  # BGR
    for n, (name, (p, y)) in enumerate(curves.items()):
        colour = colours[n % len(colours)]
        rows = reliability_bins(p, y, bins)
        pts = [xy(r["confidence"], r["frequency"]) for r in rows]
        for a, b in itertools.pairwise(pts):
            cv2.line(img, a, b, colour, 2, cv2.LINE_AA)
        for r, q in zip(rows, pts, strict=True):
            cv2.circle(img, q, 2 + min(6, int(math.sqrt(r["count"]) / 3)), colour, -1, cv2.LINE_AA)
        label = f"{name}: ECE {expected_calibration_error(y, p, bins):.3f}"
        cv2.putText(
            img, label, (pad + 10, top + 20 + 20 * n), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA
        )
    cv2.putText(
        img,
        "mean predicted P(fake)",
        (pad + size // 2 - 90, top + size + 45),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.5,
        0,
        1,
        cv2.LINE_AA,
    )
    cv2.putText(
        img,
        "reliability (observed fake frequency per bin)",
        (pad, 25),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.5,
        0,
        1,
        cv2.LINE_AA,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"cannot write {path}")


@dataclass(frozen=True)
class Calibration:
    temperature: float
    threshold: float
    uncertain_band: float
    max_fpr: float
    max_fnr: float
    calib: dict[str, float]
    eval_before: dict[str, float]
    eval_after: dict[str, float]

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def calibrate(
    calib_logits: np.ndarray,
    calib_labels: np.ndarray,
    eval_logits: np.ndarray,
    eval_labels: np.ndarray,
    max_fpr: float = 0.02,
    max_fnr: float = 0.10,
) -> Calibration:
    """Fit T and the operating point on the calibration half; report the evaluation half before/after."""
    t = fit_temperature(calib_logits, calib_labels)
    calib_p = sigmoid(np.asarray(calib_logits) / t)
    point = choose_operating_point(calib_p, calib_labels, max_fpr, max_fnr)
    eval_before = summarize(sigmoid(eval_logits), eval_labels)
    eval_after = summarize(sigmoid(np.asarray(eval_logits) / t), eval_labels, point)
    calib = summarize(calib_p, calib_labels, point)
    return Calibration(
        t, point.threshold, point.uncertain_band, max_fpr, max_fnr, calib, eval_before, eval_after
    )


def main(argv: list[str] | None = None) -> None:
    from chromastream.models.detector.train import heldout_logits

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, default=Path("runs/detector"), help="training run folder")
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: <run>/best.pt")
    parser.add_argument(
        "--max-fpr", type=float, default=0.02, help="held-out reals allowed to be called fake"
    )
    parser.add_argument(
        "--max-fnr", type=float, default=0.10, help="held-out fakes allowed to be called real"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    ckpt = args.checkpoint or args.run / "best.pt"
    calib_z, calib_y = heldout_logits(args.run, ckpt, "calib", args.threads)
    eval_z, eval_y = heldout_logits(args.run, ckpt, "eval", args.threads)
    result = calibrate(calib_z, calib_y, eval_z, eval_y, args.max_fpr, args.max_fnr)
    out = result.to_json()
    out["checkpoint"] = str(ckpt)
    (args.run / "calibration.json").write_text(json.dumps(out, indent=1))
    t = result.temperature
    reliability_diagram(
        {"before (T=1)": (sigmoid(eval_z), eval_y), f"after (T={t:.2f})": (sigmoid(eval_z / t), eval_y)},
        args.run / "reliability.png",
    )
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
