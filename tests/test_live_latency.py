"""The live latency benchmark runs end to end (server, pipeline, WHEP viewer in a child process) and its
JSON feeds the RESULTS.md section; a short run, so the figures themselves are not judged here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import live_latency, report
from chromastream.models.detector.classifier_runtime import default_model_path as detector_path
from chromastream.stream.config import PipelineConfig


def test_quick_run_writes_json_and_report_section(tmp_path: Path) -> None:
    argv = ["--quick", "--streams", "1", "--seconds", "1.5", "--no-detector", "--out-dir", str(tmp_path)]
    status = live_latency.main(argv)
    assert status == 0
    data = json.loads((tmp_path / "live_latency.json").read_text())
    for key in ("machine", "model", "source", "size", "targets", "rows", "pass", "limit_definition"):
        assert key in data, key
    assert data["quick"] is True and data["size"] == PipelineConfig().size
    assert [(r["mode"], r["streams"]) for r in data["rows"]] == [("model", 1), ("limit", 1)]
    for row in data["rows"]:
        for key in ("fps_in_min", "fps_out_min", "drops", "cpu_percent", "cpu_bound", "rss_mb_max"):
            assert key in row, key
        assert row["samples"] > 0 and row["fps_out_min"] > 0
        assert set(row["latency_ms"]) >= {"p50", "p95", "p99"}
        assert row["per_stream"][0]["id"] == "cam0"
    assert data["pass"]["memory_4"] is None  # no 4-stream row in this run
    assert not (tmp_path / "live_soak.json").exists()

    text = report.render(tmp_path, tmp_path / "RESULTS.md")
    assert "## Live latency (serve, WebRTC)" in text
    assert "| model | 1 |" in text and "| limit | 1 |" in text
    assert "Smoke run" in text
    assert "## Live soak" not in text


def test_soak_section_judges_the_slopes(tmp_path: Path) -> None:
    points = [{"t_min": 0.5 * i, "p95_ms": 100.0, "rss_mb": 300.0 + 20.0 * i} for i in range(1, 5)]
    soak = {
        "minutes": 2,
        "interval_s": 30,
        "points": points,
        "p95_slope_ms_per_min": 0.0,
        "rss_slope_mb_per_min": 40.0,
        "rss_growth_mb": 60.0,
        "flat": False,
        "targets": live_latency.TARGETS,
    }
    (tmp_path / "live_soak.json").write_text(json.dumps(soak))
    text = report.render(tmp_path, tmp_path / "RESULTS.md")
    section = text[text.index("## Live soak") :]
    assert "| p95 slope | 0.00 ms/min | ≤ 2.00 ms/min | **PASS** |" in section
    assert "| RSS slope (growth 60 MB) | 40.00 MB/min | ≤ 5.00 MB/min | **FAIL** |" in section
    assert "## Live latency" not in text


@pytest.mark.skipif(not detector_path().is_file(), reason="the deepfake detector model is not built")
def test_quick_run_measures_the_deepfake_sampler_on_a_face(tmp_path: Path) -> None:
    argv = ["--quick", "--streams", "1", "--seconds", "2", "--out-dir", str(tmp_path)]
    assert live_latency.main(argv) == 0
    data = json.loads((tmp_path / "live_latency.json").read_text())
    modes = [(r["mode"], r["source"].split(" ")[0]) for r in data["rows"]]
    assert modes == [
        ("model", "synthetic"),
        ("limit", "synthetic"),
        ("model", "face"),
        ("model+detector", "face"),
    ]
    with_detector = data["rows"][-1]
    verdicts = with_detector["detector_verdicts"]
    assert verdicts and verdicts[0]["label"] in ("real", "fake", "uncertain")  # the face was found
    assert data["rows"][2]["detector_verdicts"] == []
    cost = data["detector_cost"]
    assert cost["fps_out_with"] > 0 and cost["cpu_ms_per_frame_with"] > 0
    assert data["pass"]["detector_drop"] in (True, False)
    text = report.render(tmp_path, tmp_path / "RESULTS.md")
    assert "| model+detector (face clip) | 1 |" in text
    assert "deepfake sampler" in text
