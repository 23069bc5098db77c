"""The benchmark harnesses: metrics on values known by hand, and smoke runs of each script into a
temporary folder (the real runs are long and write into benchmarks/results)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import metrics, model_speed, quality, report, video_speed
from benchmarks.common import shared_root

SET5 = shared_root() / "data" / "images" / "eval" / "set5"


def require_eval_data() -> None:
    """Skip where the shared data is absent, except in CI, where its absence is a failure."""
    if SET5.is_dir():
        return
    message = f"shared evaluation images not found at {SET5} (set CHROMASTREAM_SHARED)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _textured(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------- metrics


def test_psnr_known_values() -> None:
    a = np.zeros((8, 8, 3), dtype=np.uint8)
    b = np.full((8, 8, 3), 10, dtype=np.uint8)  # MSE = 100
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100))
    assert metrics.psnr(a, a) == metrics.PSNR_CAP_DB
    assert metrics.psnr(a, a, max_db=None) == math.inf
    with pytest.raises(ValueError):
        metrics.psnr(a, b[:4])


def test_colourfulness_known_values() -> None:
    grey = np.full((16, 16, 3), 77, dtype=np.uint8)
    assert metrics.colourfulness(grey) == 0.0
    red = np.zeros((16, 16, 3), dtype=np.uint8)
    red[..., 0] = 255  # rg = 255, yb = 127.5, no spread
    assert metrics.colourfulness(red) == pytest.approx(0.3 * math.hypot(255.0, 127.5))
    half = red.copy()
    half[8:] = (0, 255, 0)  # rg = ±255 (σ 255, μ 0), yb = 127.5 everywhere
    assert metrics.colourfulness(half) == pytest.approx(255.0 + 0.3 * 127.5)
    assert metrics.delta_colourfulness(red, grey) == pytest.approx(metrics.colourfulness(red))


def test_ssim_identical_is_one_and_noise_lowers_it() -> None:
    pytest.importorskip("skimage")
    x = _textured(48, 64)
    assert metrics.ssim(x, x) == pytest.approx(1.0)
    # flat pictures: only the luminance term is left, (2·μx·μy + C1) / (μx² + μy² + C1), C1 = (0.01·255)²
    flat_a, flat_b = np.full((32, 32, 3), 100, np.uint8), np.full((32, 32, 3), 120, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert metrics.ssim(flat_a, flat_b) == pytest.approx((2 * 100 * 120 + c1) / (100**2 + 120**2 + c1))
    noisy = np.clip(x.astype(np.int16) + np.random.default_rng(1).integers(-80, 81, x.shape), 0, 255)
    value = metrics.ssim(x, noisy.astype(np.uint8))
    assert 0.0 < value < 0.95
    assert value == pytest.approx(metrics.ssim(noisy.astype(np.uint8), x))


def test_cdc_identical_frames_is_zero_and_bounded() -> None:
    frame = _textured(32, 32)
    same = metrics.cdc([frame] * 6)
    assert same == {"k1": 0.0, "k2": 0.0, "k4": 0.0, "mean": 0.0}
    black, white = np.zeros_like(frame), np.full_like(frame, 255)
    apart = metrics.cdc([black, white])  # disjoint histograms: the JS divergence's maximum, ln 2
    assert set(apart) == {"k1", "mean"}
    assert apart["k1"] == pytest.approx(math.log(2))


def test_flicker_and_warp_error() -> None:
    base = np.kron(_textured(16, 20), np.ones((4, 4, 1), dtype=np.uint8))  # 64x80, blocky texture
    static = [base] * 3
    assert metrics.flicker(static, static) == 0.0
    shifted = [np.roll(base, 2 * t, axis=1) for t in range(3)]  # the truth moves; the output follows it
    assert metrics.warp_error(shifted, shifted) < 2.0
    tinted = [base, np.clip(base.astype(np.int16) + np.array([0, 0, 30]), 0, 255).astype(np.uint8), base]
    assert metrics.flicker(tinted, static) > 1.0  # colour changes where the truth is still


def test_summarize_ignores_missing() -> None:
    s = metrics.summarize([1.0, 3.0, math.nan, 2.0])
    assert s == {"mean": 2.0, "median": 2.0, "n": 3}


# ----------------------------------------------------------------------------------------------- harnesses


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="module")
def quality_json(results_dir: Path) -> dict[str, Any]:
    require_eval_data()
    pytest.importorskip("skimage")
    rc = quality.main(["--sets", "set5", "--limit", "2", "--out-dir", str(results_dir)])
    assert rc == 0
    data: dict[str, Any] = json.loads((results_dir / "quality.json").read_text())
    return data


@pytest.fixture(scope="module")
def speed_json(results_dir: Path) -> dict[str, Any]:
    rc = model_speed.main(["--quick", "--out-dir", str(results_dir)])
    assert rc == 0
    data: dict[str, Any] = json.loads((results_dir / "model_speed.json").read_text())
    return data


def test_quality_smoke(quality_json: dict[str, Any], results_dir: Path) -> None:
    data = quality_json
    assert {"benchmark", "date", "model", "size", "machine", "sets", "all"} <= set(data)
    assert data["model"]["version"]
    s = data["sets"]["set5"]
    assert len(s["rows"]) == 2
    for method in ("model", "gray"):
        for measure in quality.MEASURES:
            assert math.isfinite(s["summary"][method][measure]["mean"])
            assert "median" in s["summary"][method][measure]
    for row in s["rows"]:
        assert row["gray"]["cf"] == pytest.approx(0.0, abs=1e-6)  # the baseline has no colour at all
        assert row["gray"]["dcf"] == pytest.approx(row["cf_gt"])
        assert 0.0 < row["model"]["ssim"] <= 1.0
    assert (results_dir / s["contact_sheet"]).is_file()


def test_quality_gray_input_keeps_lightness() -> None:
    rgb = _textured(24, 24)
    gray, lightness = quality.gray_input(rgb)
    from chromastream.kernels.lab_numpy import rgb_to_lab

    expected = rgb_to_lab(rgb.astype(np.float32) / 255.0)[..., 0]
    assert gray.dtype == np.uint8 and gray.shape == (24, 24)
    assert np.abs(lightness - expected).max() < 0.5  # only 8-bit rounding between them


def test_quality_missing_data_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = quality.main(["--shared", str(tmp_path), "--out-dir", str(tmp_path / "out")])
    assert rc != 0
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "out" / "quality.json").exists()


def test_model_speed_quick(speed_json: dict[str, Any], results_dir: Path) -> None:
    data = speed_json
    assert {"target", "reference", "runs", "headline", "pass", "machine"} <= set(data)
    assert data["target"]["fps"] == 30.0
    assert data["reference"]["gflops_median"] > 0
    names = [r["name"] for r in data["runs"]]
    assert names[0] == "session b1 256"
    for r in data["runs"]:
        assert r["fps"] > 0 and r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
    version = data["model"]["version"]
    assert (results_dir / f"model_speed_{version}.json").is_file()


def test_video_clip_and_limit(tmp_path: Path) -> None:
    spec = video_speed.ClipSpec("tiny", 160, 120, 25, 0.4)
    src = video_speed.make_clip(tmp_path / "in.mp4", spec)
    assert video_speed.probe(src) == {"frames": 10, "width": 160, "height": 120, "audio": True}
    out = tmp_path / "limit.mp4"
    cmd = [sys.executable, "-m", "benchmarks.video_speed", "--transcode-only", str(src), str(out)]
    run = video_speed._finish(video_speed.run_child(cmd, dict(os.environ)), out, spec.frames)
    assert run["ok"], run
    assert run["output"]["audio"] and run["fps"] > 0 and run["peak_rss_mb"] > 1


def test_report_from_results(
    quality_json: dict[str, Any], speed_json: dict[str, Any], results_dir: Path, tmp_path: Path
) -> None:
    previous = json.loads(json.dumps(speed_json))
    previous["model"]["version"] = "older-model"
    previous["headline"]["fps"] = 1.25
    (results_dir / "model_speed_older-model.json").write_text(json.dumps(previous))
    video = {
        "benchmark": "video_speed",
        "date": "2020-01-01T00:00:00+00:00",
        "model": speed_json["model"],
        "machine": speed_json["machine"],
        "targets": {"fps": 15.0, "fps_clip": "640x480", "peak_rss_mb": 1000.0},
        "clips": [
            {
                "name": "640x480",
                "fps": 25,
                "frames": 250,
                "colorize": {"ok": True, "fps": 17.5, "peak_rss_mb": 612.0},
                "limit": {"ok": True, "fps": 70.0, "peak_rss_mb": 120.0},
            }
        ],
        "pass": {"fps": True, "memory": True},
    }
    (results_dir / "video_speed.json").write_text(json.dumps(video))
    out = tmp_path / "RESULTS.md"
    assert report.main(["--results-dir", str(results_dir), "--out", str(out)]) == 0
    text = out.read_text()
    assert "Generated" in text and "python -m benchmarks.report" in text
    model_psnr = quality_json["sets"]["set5"]["summary"]["model"]["psnr"]["mean"]
    gray_psnr = quality_json["sets"]["set5"]["summary"]["gray"]["psnr"]["mean"]
    assert f"{model_psnr:.2f}" in text and f"{gray_psnr:.2f}" in text
    assert f"{speed_json['headline']['fps']:.1f}" in text
    assert "`older-model`" in text and "1.2" in text
    assert "17.5" in text and "70.0" in text and "**PASS**" in text
    assert "contact_set5.png" in text
    assert "Smoke run" in text and "Partial run" in text


def test_report_without_results_fails(tmp_path: Path) -> None:
    assert report.main(["--results-dir", str(tmp_path), "--out", str(tmp_path / "R.md")]) != 0
    assert not (tmp_path / "R.md").exists()


@pytest.mark.parametrize("module", [quality, model_speed, video_speed, report])
def test_help(module: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0
    assert "usage: python -m benchmarks." in capsys.readouterr().out
