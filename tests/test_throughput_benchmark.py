"""The throughput benchmark's smoke run: every section present, figures sane, the report renders it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import report, throughput

pytest.importorskip("torch", reason="the smoke run measures the torch backend too (train extra)")


def test_smoke_run_writes_and_reports(tmp_path: Path) -> None:
    from chromastream.models.colorizer.export import export_onnx
    from chromastream.models.colorizer.network import Colorizer

    model = tmp_path / "model.onnx"  # exported from the current network, so every backend can load it
    export_onnx(Colorizer(), model, "smoke", size=64)
    out = tmp_path / "results"
    assert throughput.main(["--smoke", "--model", str(model), "--out-dir", str(out)]) == 0
    data = json.loads((out / "throughput_cpu.json").read_text())
    assert data["smoke"] and data["device"] == "cpu" and data["model"]["version"] == "smoke"
    names = [e["requested"] for e in data["backends"] if e["available"]]
    assert names == ["onnxruntime", "torch"]
    for entry in data["backends"]:
        assert len(entry["runs"]) == 4 and all(r["fps"] > 0 for r in entry["runs"])
        assert entry["memory"]["mb"] > 0
    assert data["choice"]["fastest"] in names
    rows = data["end_to_end"]["rows"]
    assert [r["streams"] for r in rows] == [1, 2]
    for row in rows:
        assert row["model"]["frames_per_stream"] == 4 and row["limit"]["fps_per_stream"] > 0
    assert data["reference"]["gflops_median"] > 0 and len(data["loadavg_start"]) == 3
    page = report.render(out, tmp_path / "RESULTS.md")
    assert "## Throughput (cpu: onnxruntime, torch)" in page and "end to end" in page.lower()
