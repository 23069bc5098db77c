"""The x264 settings benchmark runs end to end on colorized frames (one small size, two settings, a few
frames) and its JSON feeds the RESULTS.md section; the figures themselves are not judged here, except the
one fact the live encoder settings rest on: frame threads hold frames back, sliced threads do not."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks import report, x264_settings
from benchmarks.common import shared_root

DAVIS = shared_root() / "data" / "video" / "davis" / x264_settings.SEQUENCE


def test_two_settings_on_a_few_frames_write_json_and_report_section(tmp_path: Path) -> None:
    if not DAVIS.is_dir():
        message = f"DAVIS frames not found at {DAVIS} (set CHROMASTREAM_SHARED)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    argv = ["--quick", "--sizes", "320x240", "--presets", "ultrafast", "--uses", "live", "--frames", "8"]
    argv += ["--threadings", "2-slice", "2-frame", "--out-dir", str(tmp_path)]
    assert x264_settings.main(argv) == 0
    data = json.loads((tmp_path / "x264_settings.json").read_text())
    assert data["quick"] is True and data["frames"] == 8
    sliced, framed = data["rows"]
    assert (sliced["thread_type"], framed["thread_type"]) == ("slice", "frame")
    for row in (sliced, framed):
        assert (row["width"], row["height"], row["preset"], row["threads"]) == (320, 240, "ultrafast", 2)
        assert row["cpu_ms_per_frame"] > 0 and row["wall_ms"]["p95"] >= row["wall_ms"]["p50"] > 0
        assert row["kbps"] > 100 and row["psnr_y"] > 30 and 0.8 < row["ssim_y"] <= 1.0
    assert sliced["latency_frames"] == 0  # tune=zerolatency with sliced threads: each packet at once
    assert framed["latency_frames"] == 1  # a second frame thread holds one frame back

    text = report.render(tmp_path, tmp_path / "RESULTS.md")
    section = text[text.index("## x264 settings") :]
    assert "Smoke run" in section and "### live" in section and "### record" not in section
    assert "| 320x240 | ultrafast | 2 | slice |" in section
    assert "| 320x240 | ultrafast | 2 | frame |" in section
