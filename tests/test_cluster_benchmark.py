"""The cluster benchmark runs end to end (a three-node Ray cluster on 127.0.0.1, single-machine serve and
the cluster gateway, one node kill) and its JSON feeds the RESULTS.md section; a short run, so the
figures themselves are not judged here beyond what any run must show."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import cluster, report
from tests.missing import missing


def test_quick_run_writes_json_and_report_section(tmp_path: Path) -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        missing("ray is not installed (the cluster extra: pip install -e '.[cluster]')")
    assert cluster.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "cluster.json").read_text())
    assert data["quick"] is True and [k["kill"] for k in data["kills"]] == [1]
    assert all(k["streams"] >= 1 and k["lost"] == 0 and 0 < k["seconds"] < 60 for k in data["kills"])
    assert set(data["failover_s"]) == {"graceful"}
    assert data["failover_s"]["graceful"]["lost"] == 0 and data["failover_s"]["graceful"]["p50"] > 0
    for name in ("single", "gateway"):
        assert data[name]["setup_ms"]["n"] == 2 and data[name]["setup_ms"]["p50"] > 0
        assert data[name]["latency_ms"]["n"] > 0
    assert isinstance(data["setup_added_ms_p50"], float)

    text = report.render(tmp_path, tmp_path / "RESULTS.md")
    section = text[text.index("## Cluster (serve --cluster on Ray)") :]
    assert "Smoke run" in section
    assert "| graceful | 1 | " in section and "| serve --cluster (gateway) |" in section
