"""The video-quality and hints benchmarks: their measures on values known by hand, smoke runs of both
scripts into a temporary folder, and the report sections rendered from those runs (the real runs are
long and write into benchmarks/results)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import hints_curve, metrics, quality, report, temporal_sweep, video_quality
from benchmarks.common import default_model_path, shared_root

DAVIS = shared_root() / "data" / "video" / "davis"
BSD100 = shared_root() / "data" / "images" / "eval" / "bsd100"
SEQUENCE = "blackswan"
SIZE = "128"
"""Small working size: the smoke runs check plumbing and layout, not colour."""


def require(path: Path) -> None:
    """Skip where the shared data is absent, except in CI, where its absence is a failure."""
    if path.is_dir():
        return
    message = f"shared data not found at {path} (set CHROMASTREAM_SHARED)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


# ----------------------------------------------------------------------------------------------- units


def test_warp_errors_shares_flow_and_matches_warp_error() -> None:
    rng = np.random.default_rng(3)
    base = np.kron(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8), np.ones((4, 4, 1), dtype=np.uint8))
    truths = [np.roll(base, 2 * t, axis=1) for t in range(3)]
    tinted = [
        np.clip(f.astype(np.int16) + np.array([0, 0, 20 * t]), 0, 255).astype(np.uint8)
        for t, f in enumerate(truths)
    ]
    both = metrics.warp_errors({"follow": truths, "tinted": tinted}, truths)
    assert both["follow"] == pytest.approx(metrics.warp_error(truths, truths))
    assert both["tinted"] == pytest.approx(metrics.warp_error(tinted, truths))
    assert both["tinted"] > both["follow"] + 1.0


def test_video_compare_targets() -> None:
    per_frame = {"psnr": 25.0, "flicker": 2.0, "warp": 1.0, "cdc": {"mean": 0.010}}
    better = {"psnr": 24.8, "flicker": 1.0, "warp": 0.5, "cdc": {"mean": 0.008}}
    c = video_quality.compare(better, per_frame)
    assert c["flicker_ratio"] == pytest.approx(0.5) and c["warp_ratio"] == pytest.approx(0.5)
    assert c["cdc_ratio"] == pytest.approx(0.8) and c["psnr_diff_db"] == pytest.approx(-0.2)
    assert c["pass"] == {"flicker": True, "warp": True, "cdc": True, "psnr": True}
    # a memory that changes nothing: a tie is not a win on any steadiness measure
    same = video_quality.compare(per_frame, per_frame)
    assert same["pass"] == {"flicker": False, "warp": False, "cdc": False, "psnr": True}
    worse = video_quality.compare({**better, "psnr": 24.0, "flicker": math.nan}, per_frame)
    assert worse["pass"]["psnr"] is False and worse["pass"]["flicker"] is None


def test_strip_indices_span_the_sequence() -> None:
    assert video_quality.strip_indices(4) == [0, 1, 2, 3]
    picks = video_quality.strip_indices(50)
    assert len(picks) == video_quality.STRIP_COLUMNS and picks[0] == 0 and picks[-1] == 49


def test_hint_points_are_fixed_and_nested() -> None:
    five = hints_curve.sample_points("a.jpg", 321, 481, 5, seed=1)
    assert five == hints_curve.sample_points("a.jpg", 321, 481, 5, seed=1)
    assert hints_curve.sample_points("a.jpg", 321, 481, 2, seed=1) == five[:2]
    assert five != hints_curve.sample_points("b.jpg", 321, 481, 5, seed=1)
    assert all(0 <= x < 481 and 0 <= y < 321 for x, y in five)


def test_hint_colour_is_the_patch_mean() -> None:
    truth = np.zeros((40, 60, 3), dtype=np.uint8)
    truth[:, :30] = (200, 40, 40)  # red left half, blue right half
    truth[:, 30:] = (40, 40, 200)
    (red, blue, edge) = hints_curve.make_hints(truth, [(5, 20), (50, 20), (30, 20)], radius=2.5 / 40)
    lab = metrics.rgb_to_ab(truth)
    assert (red.a, red.b) == pytest.approx(tuple(lab[20, 5]), abs=0.5)
    assert (blue.a, blue.b) == pytest.approx(tuple(lab[20, 50]), abs=0.5)
    assert min(red.a, blue.a) < edge.a < max(red.a, blue.a)  # a patch across an edge mixes both sides
    assert (red.x, red.y) == pytest.approx((5 / 59, 20 / 39))


# ----------------------------------------------------------------------------------------------- harnesses


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("video_results")


@pytest.fixture(scope="module")
def video_json(results_dir: Path) -> dict[str, Any]:
    require(DAVIS)
    pytest.importorskip("skimage")
    argv = ["--sequences", SEQUENCE, "--max-frames", "4", "--size", SIZE, "--out-dir", str(results_dir)]
    assert video_quality.main(argv) == 0
    data: dict[str, Any] = json.loads((results_dir / "video_quality.json").read_text())
    return data


@pytest.fixture(scope="module")
def hints_json(results_dir: Path) -> dict[str, Any]:
    require(BSD100)
    argv = ["--limit", "2", "--counts", "5", "0", "--size", SIZE, "--out-dir", str(results_dir)]
    assert hints_curve.main(argv) == 0
    data: dict[str, Any] = json.loads((results_dir / "hints_curve.json").read_text())
    return data


def test_video_quality_smoke(video_json: dict[str, Any], results_dir: Path) -> None:
    data = video_json
    assert {"benchmark", "date", "model", "size", "machine", "sequences", "mean", "targets", "pass"} <= set(
        data
    )
    assert data["model"]["version"] and data["max_frames"] == 4
    seq = data["sequences"][SEQUENCE]
    assert seq["frames"] == 4
    for group in (seq, data["mean"]):
        assert set(group["modes"]) == set(video_quality.MODES)
        for scores in group["modes"].values():
            for key in ("psnr", "ssim", "cf", "dcf", "warp", "flicker"):
                assert math.isfinite(scores[key]), key
            assert set(scores["cdc"]) == {"k1", "k2", "mean"}  # k = 4 needs five frames
        compare = group["compare"]
        for key in ("flicker_ratio", "warp_ratio", "cdc_ratio", "cdc_diff", "psnr_diff_db"):
            assert key in compare
        assert set(compare["pass"]) == {"flicker", "warp", "cdc", "psnr"}
    gray = seq["modes"]["gray"]
    assert gray["cf"] == pytest.approx(0.0, abs=1e-6)
    assert gray["flicker"] < 0.5 and gray["warp"] < 0.5  # grey is steady: only 8-bit rounding moves
    assert seq["truth"]["warp"] > 0
    assert (results_dir / seq["strip"]).is_file()


def test_hints_curve_smoke(hints_json: dict[str, Any]) -> None:
    from chromastream.kernels.combine import lab_to_rgb_u8
    from chromastream.models.runtime.registry import create_backend
    from chromastream.models.runtime.session import ColorizerSession

    data = hints_json
    assert {"benchmark", "model", "size", "seed", "counts", "curve", "targets_gain_db", "pass"} <= set(data)
    assert data["counts"] == [0, 5]
    assert [p["n"] for p in data["curve"]] == [0, 5]
    assert data["curve"][0]["gain_db"]["mean"] == 0.0
    assert data["pass"] == {"10": None, "100": None}  # those N were not run
    rows = data["sets"]["bsd100"]["rows"]
    assert len(rows) == 2
    # N = 0 must be exactly the plain colorizer without hints
    session = ColorizerSession(create_backend("auto", default_model_path()), size=int(SIZE), memory=False)
    for row in rows:
        truth = quality.load_rgb(BSD100 / row["name"])
        _, lightness = quality.gray_input(truth)
        out = lab_to_rgb_u8(lightness, session.predict_ab(lightness))
        assert row["by_count"]["0"]["psnr"] == pytest.approx(metrics.psnr(out, truth), abs=1e-9)
        assert set(row["by_count"]) == {"0", "5"}


def test_report_renders_video_and_hints(
    video_json: dict[str, Any], hints_json: dict[str, Any], results_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "RESULTS.md"
    assert report.main(["--results-dir", str(results_dir), "--out", str(out)]) == 0
    text = out.read_text()
    assert "## Video quality (held-out DAVIS)" in text and "## Hints" in text
    assert "| measure | memory | per-frame | grey | truth |" in text
    mem_psnr = video_json["mean"]["modes"]["memory"]["psnr"]
    assert f"| PSNR dB ↑ | {mem_psnr:.2f} |" in text
    assert "≤ 0.60" in text and "≥ −0.30 dB" in text
    assert f"video_strip_{SEQUENCE}.png" in text and "(file missing)" not in text
    assert f"{hints_json['curve'][1]['psnr']['mean']:.2f}" in text
    assert "Targets not measured in this run" in text and "10, 100" in text
    assert "--max-frames 4" in text and "--limit 2" in text
    assert "Other result files" not in text


def test_report_hints_targets_rendered(tmp_path: Path) -> None:
    """The targets appear beside their N with the verdict, from a hand-made result."""
    curve = [
        {"n": n, "psnr": {"mean": 22.0 + g, "median": 22.0 + g}, "gain_db": {"mean": g}, "dcf": {"mean": 9.0}}
        for n, g in ((0, 0.0), (10, 2.5), (100, 4.0))
    ]
    data = {"curve": curve, "targets_gain_db": {"10": 2.0, "100": 5.0}, "pass": {"10": True, "100": False}}
    text = "\n".join(report.hints_section(data))
    assert "| 10 | 24.50 (24.50) | +2.50 | 9.0 | ≥ +2.0 | **PASS** |" in text
    assert "| 100 | 26.00 (26.00) | +4.00 | 9.0 | ≥ +5.0 | **FAIL** |" in text


@pytest.mark.parametrize("module", [video_quality, hints_curve, temporal_sweep])
def test_missing_data_fails_clearly(module: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--shared", str(tmp_path), "--out-dir", str(tmp_path / "out")]
    assert module.main(argv) != 0
    assert "not found" in capsys.readouterr().err
    assert not any((tmp_path / "out").glob("*.json"))


@pytest.mark.parametrize("module", [video_quality, hints_curve, temporal_sweep])
def test_help(module: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0
    assert "usage: python -m benchmarks." in capsys.readouterr().out


def test_default_sequences_are_the_held_out_ones() -> None:
    from chromastream.models.colorizer.spec import DAVIS_EVAL_SEQUENCES

    assert video_quality.default_sequences() == list(DAVIS_EVAL_SEQUENCES)


def test_temporal_sweep_smoke_and_report(tmp_path: Path) -> None:
    require(DAVIS)
    out = tmp_path / "out"
    argv = ["--sequences", "dog", "--max-frames", "3", "--strengths", "0.5", "--sigmas", "3"]
    assert temporal_sweep.main([*argv, "--size", SIZE, "--out-dir", str(out)]) == 0
    data = json.loads((out / "temporal_filter_sweep.json").read_text())
    assert [(r["strength"], r["sigma"]) for r in data["rows"]] == [(0.0, None), (0.5, 3.0)]
    assert all(math.isfinite(r["flicker"]) and math.isfinite(r["psnr"]) for r in data["rows"])
    assert data["chosen"] in ({"strength": 0.0, "sigma": None}, {"strength": 0.5, "sigma": 3.0})
    text = report.temporal_sweep_section(data)
    assert text[0] == "## Temporal filter constants" and sum(line.startswith("| 0.") for line in text) == 2


def test_temporal_sweep_refuses_held_out_sequences(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert temporal_sweep.main(["--sequences", "blackswan", "--out-dir", str(tmp_path)]) != 0
    assert "held out" in capsys.readouterr().err


def test_temporal_sweep_rule_keeps_quality() -> None:
    rows = [
        {"strength": 0.0, "sigma": None, "psnr": 27.0, "dcf": 15.0, "flicker": 1.0},
        {"strength": 0.5, "sigma": 3.0, "psnr": 26.95, "dcf": 15.2, "flicker": 0.8},
        {"strength": 0.9, "sigma": 3.0, "psnr": 26.5, "dcf": 15.0, "flicker": 0.5},  # PSNR fell too far
        {"strength": 0.9, "sigma": 9.0, "psnr": 27.0, "dcf": 16.0, "flicker": 0.4},  # greyer
    ]
    assert temporal_sweep.choose(rows)["strength"] == 0.5
