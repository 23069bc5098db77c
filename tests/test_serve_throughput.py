"""The serve throughput benchmark runs end to end (the real ``serve`` with one and two workers, WHEP
viewers) and its JSON feeds the RESULTS.md section; a short run of the limit rows, so the figures
themselves are not judged here."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import report, serve_throughput


def test_quick_run_writes_json_and_report_section(tmp_path: Path) -> None:
    assert serve_throughput.main(["--quick", "--modes", "limit", "--out-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "serve_throughput.json").read_text())
    assert data["quick"] is True and len(data["machine"]["loadavg"]) == 3 and len(data["loadavg_end"]) == 3
    rows = data["rows"]
    assert [(r["mode"], r["workers"]) for r in rows] == [("limit", 1), ("limit", 2)]
    for row in rows:
        assert row["fps_total"] > 0 and row["per_stream"][0]["id"] == "cam0"
        assert set(row["latency_ms"]) == {"p50", "p95", "p99"}
        assert row["server_cores_busy"] > 0
    assert [s["worker"] for s in rows[1]["per_stream"]] == [0]
    (summary,) = data["summary"]
    assert summary["limit_ratio"] > 0 and summary["model_ratio"] is None

    text = report.render(tmp_path, tmp_path / "RESULTS.md")
    section = text[text.index("## Serve throughput (worker processes)") :]
    assert "Smoke run" in section
    assert "| 320x240 | 1 | limit | 2 |" in section
    assert "| 320x240 | colorized, fps total | – | – | – | ≥ 1.0 | n/a |" in section


def test_encode_cost_rows_compare_viewers_and_predict_capacity(tmp_path: Path) -> None:
    """Two streams, one watched and then both: only watched streams are encoded, every stream's frames
    come out, and the capacity table is in the JSON and in RESULTS.md."""
    args = ["--encode-cost", "--quick", "--modes", "limit", "--seconds", "3", "--out-dir", str(tmp_path)]
    assert serve_throughput.main(args) == 0
    data = json.loads((tmp_path / "serve_encode_cost.json").read_text())
    assert data["study"] == "encode_cost" and not (tmp_path / "serve_throughput.json").exists()
    rows = data["rows"]
    assert [(r["streams"], r["viewers"], r["workers"]) for r in rows] == [(2, 1, 1), (2, 2, 1)]
    one, both = rows
    assert [s["watched"] for s in one["per_stream"]] == [True, False]
    for row in rows:
        assert all(s["fps_out"] > 10 for s in row["per_stream"])  # colorized whether watched or not
        assert row["server_cores_busy"] > 0 and row["other_cores_busy"] >= 0
    encoded_fps = [r["stage_cpu"]["encoded"] / r["seconds"] for r in rows]
    assert encoded_fps[1] > 1.5 * encoded_fps[0] > 0  # two streams encoded against one
    assert one["per_stream"][1]["fps"] is None
    for row in rows:
        cap = row["capacity"]
        ms = cap["ms_per_frame"]
        assert ms["preprocess"] > 0 and ms["postprocess"] > 0 and ms["encode_per_encoded_frame"] > 0
        assert ms["total"] >= ms["stages"] > 0 and cap["predicted_streams"] > 0
        assert cap["held_streams"] <= cap["streams"] == 2
    assert (
        one["capacity"]["ms_per_frame"]["encoded_share"] < both["capacity"]["ms_per_frame"]["encoded_share"]
    )
    (cost,) = data["encode_cost"]
    assert cost["viewers"] == [1, 2] and cost["mode"] == "limit"
    assert cost["encoder_thread_cpu_ms"][1] > 0 and cost["colorized_frame_cpu_ms"] is not None

    text = report.render(tmp_path, tmp_path / "RESULTS.md")
    section = text[text.index("## Serve: the cost of encoding, and capacity") :]
    assert "Smoke run" in section
    assert "| limit | 1 | 2 | 1 |" in section and "| limit | 1 → 2 |" in section
    assert (
        "predicted (all CPU)" in section and " of 2 |" in section and "Reading the capacity table" in section
    )


def test_viewers_beyond_the_streams_are_refused(tmp_path: Path) -> None:
    assert serve_throughput.main(["--quick", "--viewers", "3", "--out-dir", str(tmp_path)]) == 2
    assert not list(tmp_path.iterdir())
