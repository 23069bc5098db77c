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
