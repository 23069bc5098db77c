"""The deepfake sampler inside the live pipeline: verdicts from sampled input frames reach every frame's
metadata, with a face -> a calibrated probability and a label, without one -> ``no_face`` and no number."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.live_latency import make_face_clip
from chromastream.models.detector.classifier_runtime import default_model_path
from chromastream.models.runtime.registry import create_backend
from chromastream.stream.config import PipelineConfig, StreamConfig
from chromastream.stream.deepfake import DeepfakeSampler, create_sampler, luma_to_grey
from chromastream.stream.frames import OutputFrame
from chromastream.stream.metadata import DEEPFAKE_KEYS
from chromastream.stream.pipeline import Pipeline
from chromastream.stream.sources.file import FileSource
from chromastream.stream.sources.synthetic import SyntheticSource

needs_detector = pytest.mark.skipif(
    not default_model_path().is_file(), reason="the deepfake detector model is not built"
)


def test_limited_range_luma_becomes_full_range_grey() -> None:
    y = np.array([[0, 16, 126, 235, 255]], np.uint8)
    assert luma_to_grey(y, full_range=False).tolist() == [[0, 0, 128, 255, 255]]
    assert luma_to_grey(y, full_range=True) is y


def test_no_sampling_means_no_detector() -> None:
    assert create_sampler(0.0) is None


async def _collect(source: Any, seconds: float, rate: float) -> list[OutputFrame]:
    sampler = DeepfakeSampler()
    pipeline = Pipeline(PipelineConfig(size=96, detector_rate=rate), create_backend(), detector=sampler)
    out: list[OutputFrame] = []
    await pipeline.start()
    try:
        await pipeline.add_stream(StreamConfig(id="cam", url="synthetic:"), source)
        subscription = pipeline.subscribe("cam", maxsize=1000)

        async def read() -> None:
            async for frame in subscription:
                out.append(frame)

        reader = asyncio.ensure_future(read())
        await asyncio.sleep(seconds)
        reader.cancel()
    finally:
        await pipeline.stop()
        sampler.close()
    return out


@needs_detector
def test_face_stream_gets_a_probability_and_a_label(tmp_path: Path) -> None:
    clip = make_face_clip(tmp_path / "face.mp4", seconds=2.0)
    if clip is None:
        pytest.skip("no faces in the shared data")
    frames = asyncio.run(_collect(FileSource("cam", clip, loop=True, realtime=True), 3.0, rate=4.0))
    verdicts = [f.metadata["deepfake"] for f in frames]
    assert all(set(v) == set(DEEPFAKE_KEYS) for v in verdicts)
    judged = [(f, v) for f, v in zip(frames, verdicts, strict=True) if v["label"] != "off"]
    assert judged, "no frame carried a verdict"
    frame, last = judged[-1]
    assert last["label"] in ("real", "fake", "uncertain")
    assert 0.0 <= last["probability"] <= 1.0
    assert len(last["faces"]) == 1 and last["faces"][0]["samples"] >= 1
    x0, y0, x1, y1 = last["faces"][0]["box"]
    assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480 and x1 - x0 > 60  # the 180 px face
    assert last["sampled_pts"] is not None and last["sampled_pts"] <= frame.pts
    assert last["detector"]


@needs_detector
def test_stream_without_faces_says_no_face_and_gives_no_number() -> None:
    frames = asyncio.run(_collect(SyntheticSource("cam", 320, 240, 25.0), 1.5, rate=4.0))
    judged = [f.metadata["deepfake"] for f in frames if f.metadata["deepfake"]["label"] != "off"]
    assert judged
    assert all(v["label"] == "no_face" and v["probability"] is None and v["faces"] == [] for v in judged)


@needs_detector
def test_the_live_detector_runs_without_torch() -> None:
    """``make serve`` installs the runtime only: the sampler must load with torch absent."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from stream.deepfake import create_sampler\n"
        "sampler = create_sampler(2.0)\n"
        "assert sampler is not None, 'detector did not load'\n"
        "sampler.close()\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
