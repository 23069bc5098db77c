"""Smoke run of the detector's training, calibration and export on a handful of real faces, and the
exported ONNX against the torch network it came from."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from chromastream.models.detector import DetectorInputError, DetectorModelError  # noqa: E402
from chromastream.models.detector.calibration import main as calibration_main  # noqa: E402
from chromastream.models.detector.classifier import build_classifier  # noqa: E402
from chromastream.models.detector.classifier_runtime import DeepfakeClassifier  # noqa: E402
from chromastream.models.detector.data import real_face_paths, split_of  # noqa: E402
from chromastream.models.detector.export import detector_metadata, export_onnx  # noqa: E402
from chromastream.models.detector.export import main as export_main  # noqa: E402
from chromastream.models.detector.train import main as train_main  # noqa: E402
from chromastream.models.shared_data import shared_root  # noqa: E402

SHARED = shared_root()
needs_shared = pytest.mark.skipif(
    not (SHARED / "data" / "faces" / "real").is_dir() and os.environ.get("CI") != "true",
    reason=f"shared faces not found at {SHARED}",
)
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "weights" / "detector.onnx"


@needs_shared
def test_split_is_by_identity_and_holds_out_about_a_sixth() -> None:
    paths = real_face_paths(SHARED)
    splits = [split_of(p) for p in paths]
    held = sum(s != "train" for s in splits) / len(paths)
    assert 0.10 < held < 0.25
    assert {"train", "calib", "eval"} == set(splits)
    named = [(p.stem.split("_")[2], s) for p, s in zip(paths, splits, strict=True) if p.stem.count("_") == 3]
    by_person: dict[str, set[str]] = {}
    for person, s in named:
        by_person.setdefault(person, set()).add(s)
    assert all(len(s) == 1 for s in by_person.values())  # nobody on both sides


@needs_shared
def test_train_resumes_calibrates_and_exports(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # fmt: off
    tiny = ["--run", str(run), "--batch", "4", "--size", "64", "--limit-images", "2", "--holdout-views", "1",
            "--log-every", "1", "--eval-every", "2", "--save-every", "1"]
    # fmt: on
    train_main([*tiny, "--steps", "2"])
    first = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert first[0]["step"] == 0 and first[0]["params"] < 3_000_000
    assert (run / "last.pt").exists() and (run / "best.pt").exists() and (run / "faces.npz").exists()
    assert torch.load(run / "last.pt", weights_only=False)["step"] == 2

    train_main([*tiny, "--steps", "3"])  # the same command with more steps resumes at step 2
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert any("calib" in r and "auc" in r["eval"] for r in records)

    calibration_main(["--run", str(run)])
    calib = json.loads((run / "calibration.json").read_text())
    assert calib["temperature"] > 0 and 0 <= calib["threshold"] <= 1 and calib["uncertain_band"] >= 0
    assert (run / "reliability.png").stat().st_size > 1000

    onnx_path = tmp_path / "detector.onnx"
    export_main(["--run", str(run), "--output", str(onnx_path), "--version", "smoke"])
    clf = DeepfakeClassifier(onnx_path)
    assert clf.info.version == "smoke" and clf.info.input_size == 64
    assert clf.info.temperature == pytest.approx(calib["temperature"])
    assert clf.info.threshold == pytest.approx(calib["threshold"])


def test_onnx_matches_torch_and_runtime_is_calibrated(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build_classifier(None).eval()
    path = tmp_path / "d.onnx"
    export_onnx(net, path, detector_metadata("t", 96, 2.5, 0.6, 0.1), size=96)
    clf = DeepfakeClassifier(path)
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(3)]
    with torch.no_grad():
        x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
        ref = net(x).numpy().astype(np.float64)
    assert np.allclose(clf.logits(crops), ref, atol=1e-4)
    assert np.allclose(clf.probabilities(crops), 1 / (1 + np.exp(-ref / 2.5)), atol=1e-5)
    # Grey crops and crops of another size are accepted; batch size is free.
    grey = crops[0][:, :, 1]
    assert clf.probabilities([grey]).shape == (1,)
    big = np.repeat(np.repeat(crops[0], 2, axis=0), 2, axis=1)
    assert clf.probabilities([big, crops[1]]).shape == (2,)
    assert clf.probabilities([]).shape == (0,)
    with pytest.raises(DetectorInputError, match="uint8"):
        clf.probabilities([crops[0].astype(np.float32)])


def test_runtime_rejects_missing_or_foreign_models(tmp_path: Path) -> None:
    with pytest.raises(DetectorModelError, match="not found"):
        DeepfakeClassifier(tmp_path / "none.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(DetectorModelError):
        DeepfakeClassifier(junk)


@pytest.mark.skipif(not SHIPPED.exists(), reason="models/weights/detector.onnx not exported yet")
def test_shipped_model_is_small_and_self_describing() -> None:
    assert SHIPPED.stat().st_size < 10_000_000
    info = DeepfakeClassifier(SHIPPED).info
    assert info.input_size in range(96, 225)
    assert info.temperature > 0 and 0 < info.threshold < 1 and 0 <= info.uncertain_band < 0.5
