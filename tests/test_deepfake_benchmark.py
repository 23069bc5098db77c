"""Detector metrics on hand-checked examples, and a smoke run of ``python -m benchmarks.deepfake``.

The harness smoke test runs with a stand-in classifier (P(fake) from crop brightness: not a detector)
behind the real YuNet and the real MesoNet, so it checks the data flow and the JSON layout without the
trained model; the shipped-model smoke test runs the real thing and skips when
``models/weights/detector.onnx`` has not been built yet.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from benchmarks import deepfake
from benchmarks.report import render
from chromastream.models.detector.metrics import (
    accuracy_at,
    expected_calibration_error,
    log_loss,
    roc_auc,
    summary,
)
from chromastream.models.shared_data import shared_root

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "weights" / "detector.onnx"
FACES = shared_root() / "data" / "faces"

# ---------------------------------------------------------------------------------------------- metrics


def test_auc_hand_checked() -> None:
    # 4 fake/real pairs: (0.35 > 0.1), (0.35 < 0.4), (0.8 > 0.1), (0.8 > 0.4) -> 3/4.
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.2, 0.9]) == 1.0
    assert roc_auc([1, 0], [0.2, 0.9]) == 0.0


def test_auc_ties_count_half() -> None:
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    # Pairs: 0.5 vs 0.2 -> 1, 0.5 vs 0.5 -> 1/2, 0.9 vs both -> 2; 3.5 of 4.
    assert roc_auc([0, 0, 1, 1], [0.2, 0.5, 0.5, 0.9]) == pytest.approx(0.875)
    # Independent of input order.
    assert roc_auc([1, 0, 1, 0], [0.5, 0.5, 0.9, 0.2]) == pytest.approx(0.875)


def test_auc_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="at least one fake and one real"):
        roc_auc([1, 1], [0.2, 0.3])


def test_accuracy_at_threshold() -> None:
    # Predictions at 0.5 (p >= 0.5 is fake): 0, 1, 1, 1 -> three of four right.
    assert accuracy_at([0, 1, 1, 0], [0.2, 0.7, 0.5, 0.5], 0.5) == pytest.approx(0.75)
    assert accuracy_at([0, 1, 1, 0], [0.2, 0.7, 0.5, 0.5], 0.6) == pytest.approx(0.75)
    assert accuracy_at([0, 1], [0.2, 0.7], 0.1) == pytest.approx(0.5)


def test_log_loss_hand_checked_and_clipped() -> None:
    assert log_loss([1, 0], [0.8, 0.3]) == pytest.approx(-(math.log(0.8) + math.log(0.7)) / 2)
    assert log_loss([1], [0.0]) == pytest.approx(-math.log(1e-15))
    assert math.isfinite(log_loss([0], [1.0]))


def test_ece_hand_checked() -> None:
    # Bin of 0.1: confidence 0.1, half fake -> |0.1 - 0.5| x 1/2; bin of 0.9: |0.9 - 1| x 1/2.
    assert expected_calibration_error([0, 1, 1, 1], [0.1, 0.1, 0.9, 0.9]) == pytest.approx(0.25)
    assert expected_calibration_error([0, 1], [0.5, 0.5]) == pytest.approx(0.0)
    # The extremes fall in the first and last bin: perfectly confident and right.
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == pytest.approx(0.0)
    # Right-closed bins: 2/15 goes with bin 1 (confidence 1/15.. 2/15), not bin 2.
    edge = 2 / 15
    assert expected_calibration_error([0, 0], [edge, 0.1]) == pytest.approx((edge + 0.1) / 2)


def test_bad_metric_input() -> None:
    with pytest.raises(ValueError, match="same length"):
        log_loss([0, 1], [0.5])
    with pytest.raises(ValueError, match="no samples"):
        accuracy_at([], [], 0.5)
    with pytest.raises(ValueError, match="0 \\(real\\) or 1"):
        roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([0, 1], [-0.1, 0.5])


def test_summary_single_class_has_no_auc() -> None:
    s = summary([0, 0, 0], [0.1, 0.2, 0.7], 0.5)
    assert s["auc"] is None
    assert s["accuracy"] == pytest.approx(2 / 3)
    assert (s["n"], s["n_fake"], s["n_real"]) == (3, 0, 3)


# ---------------------------------------------------------------------------------------------- smoke runs


@dataclass(frozen=True)
class StandInInfo:
    version: str = "stand-in-brightness"
    input_size: int = 64
    temperature: float = 1.0
    threshold: float = 0.5
    uncertain_band: float = 0.1


class BrightnessClassifier:
    """Not a deepfake detector: P(fake) from mean brightness, so the harness has numbers to carry."""

    info = StandInInfo()

    def probabilities(self, crops: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float64]:
        return np.asarray([float(c.mean()) / 255.0 for c in crops], dtype=np.float64)


needs_faces = pytest.mark.skipif(
    not (FACES / "dfdc" / "labels.csv").is_file(), reason=f"face data not found under {FACES}"
)


def check_result(result: dict[str, Any], version: str) -> None:
    assert result["benchmark"] == "deepfake" and result["smoke"] is True
    assert result["model"]["version"] == version
    assert result["baseline"]["version"] == "mesonet-Meso4_DF"
    dfdc = result["sets"]["dfdc"]
    truths = sorted(row["truth"] for row in dfdc["items"])
    assert truths == ["fake", "real"]
    for row in dfdc["items"]:
        assert row["frames_sampled"] == 3
        assert 0.0 <= row["ours"]["probability"] <= 1.0
        assert 0.0 <= row["mesonet"]["probability"] <= 1.0
        assert ("real_ok" in row) == (row["truth"] == "real")
    for name in ("dfdc", "dfdc_frames", "images"):
        metrics = result["sets"][name]["metrics"]
        ours, meso = metrics["ours"], metrics["mesonet"]
        # Both models scored exactly the same faces.
        assert (ours["n"], ours["n_fake"]) == (meso["n"], meso["n_fake"])
        for m in (ours, meso):
            assert 0.0 <= m["auc"] <= 1.0 and 0.0 <= m["accuracy"] <= 1.0
            assert m["log_loss"] >= 0 and 0.0 <= m["ece"] <= 1.0
    images = result["sets"]["images"]
    assert images["n_fake"] + len([n for n in images["no_face"] if n.startswith("seed")]) == 6
    cost = result["cost"]
    assert cost["threads"] == 2 and cost["faces"] == 1
    assert cost["yunet_ms"]["p50"] > 0 and cost["detector_ms"]["p50"] > 0


@needs_faces
def test_smoke_harness_with_stand_in(tmp_path: Path) -> None:
    status = deepfake.main(["--smoke", "--out-dir", str(tmp_path)], classifier=BrightnessClassifier())
    assert status == 0
    result = json.loads((tmp_path / "deepfake.json").read_text(encoding="utf-8"))
    check_result(result, "stand-in-brightness")
    assert (tmp_path / result["contact_sheet"]).is_file()
    page = render(tmp_path, tmp_path / "RESULTS.md")
    assert "## Deepfake detector" in page and "Smoke run" in page
    assert "| dfdc | 1/1 | detector |" in page
    assert "real-xtpeyyltfi-1.mp4" in page


@pytest.mark.skipif(not SHIPPED.is_file(), reason=f"shipped detector {SHIPPED} not built yet")
@needs_faces
def test_smoke_with_shipped_detector(tmp_path: Path) -> None:
    status = deepfake.main(["--smoke", "--no-sheet", "--out-dir", str(tmp_path)])
    assert status == 0
    result = json.loads((tmp_path / "deepfake.json").read_text(encoding="utf-8"))
    check_result(result, result["model"]["version"])
    assert result["model"]["version"] != "stand-in-brightness"
    assert result["model"]["sha256"]
