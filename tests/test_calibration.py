"""Temperature scaling, ECE, AUC and the operating point on synthetic scores with known properties."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from chromastream.models.detector.calibration import (
    calibrate,
    choose_operating_point,
    fit_temperature,
    reliability_diagram,
)
from chromastream.models.detector.metrics import expected_calibration_error, log_loss, roc_auc, sigmoid


def _calibrated_logits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose sigmoid is the true P(fake): labels drawn from exactly that probability."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, n)
    y = (rng.random(n) < sigmoid(z)).astype(np.int64)
    return z, y


def test_ece_drops_after_temperature_scaling_of_an_overconfident_model() -> None:
    z, y = _calibrated_logits(20000)
    overconfident = 3.0 * z  # the same ranking, three times too sure
    t = fit_temperature(overconfident, y)
    assert t == pytest.approx(3.0, rel=0.08)
    before = expected_calibration_error(y, sigmoid(overconfident))
    after = expected_calibration_error(y, sigmoid(overconfident / t))
    assert before > 0.08 and after < 0.02
    assert log_loss(y, sigmoid(overconfident / t)) < log_loss(y, sigmoid(overconfident))
    # Scaling never changes the ranking.
    assert roc_auc(y, overconfident / t) == pytest.approx(roc_auc(y, overconfident))


def test_underconfident_model_gets_temperature_below_one() -> None:
    z, y = _calibrated_logits(20000, seed=1)
    assert fit_temperature(z / 2.5, y) == pytest.approx(1 / 2.5, rel=0.08)


def test_ece_of_exact_probabilities_is_small_and_of_constant_wrong_is_its_gap() -> None:
    z, y = _calibrated_logits(50000, seed=2)
    assert expected_calibration_error(y, sigmoid(z)) < 0.01
    y_half = np.array([0, 1] * 500)
    assert expected_calibration_error(y_half, np.full(1000, 0.9)) == pytest.approx(0.4)


def test_auc_known_values() -> None:
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert roc_auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    # One inversion out of 2 x 2 pairs.
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.5, 0.9])) == 0.75


def test_operating_point_keeps_real_faces_from_being_called_fake() -> None:
    rng = np.random.default_rng(3)
    real = sigmoid(rng.normal(-2.0, 1.0, 4000))
    fake = sigmoid(rng.normal(2.0, 1.0, 4000))
    p = np.concatenate([real, fake])
    y = np.concatenate([np.zeros(4000), np.ones(4000)])
    point = choose_operating_point(p, y, max_fpr=0.02, max_fnr=0.10)
    upper, lower = point.threshold + point.uncertain_band, point.threshold - point.uncertain_band
    assert (real >= upper).mean() <= 0.02
    assert (fake < lower).mean() <= 0.10 + 1e-9
    assert point.uncertain_band >= 0.05 - 1e-12 and 0 <= lower < upper <= 1


def test_calibrate_reports_before_and_after_on_the_other_half(tmp_path: Path) -> None:
    z, y = _calibrated_logits(6000, seed=4)
    result = calibrate(4 * z[:3000], y[:3000], 4 * z[3000:], y[3000:])
    assert result.eval_after["ece"] < result.eval_before["ece"]
    assert result.eval_after["auc"] == pytest.approx(result.eval_before["auc"])
    assert result.eval_after["real_called_fake"] < 0.05
    png = tmp_path / "rel.png"
    reliability_diagram(
        {"before": (sigmoid(4 * z), y), "after": (sigmoid(4 * z / result.temperature), y)}, png
    )
    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > 400 and img.std() > 10


def test_temperature_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both classes"):
        fit_temperature(np.array([1.0, 2.0]), np.array([1, 1]))
