"""``chromastream detect``: verdicts for pictures and videos, and one clear error line for bad input.

Tests marked "shipped" run the real detector (models/weights/detector.onnx + YuNet from shared/) and
skip, saying why, when the model file is absent. The plumbing tests use a stand-in classifier with the
real classifier's interface (``info`` + ``probabilities``) behind the real YuNet face detector.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt
import pytest

from chromastream.models.detector.detector import DeepfakeDetector
from chromastream.models.shared_data import shared_root
from chromastream.stream import detect_cli
from tests.conftest import CliRun

Cli = Callable[..., CliRun]

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "weights" / "detector.onnx"
DFDC = shared_root() / "data" / "faces" / "dfdc"
YUNET = shared_root() / "weights" / "yunet"

needs_shipped = pytest.mark.skipif(
    not SHIPPED.is_file(), reason=f"shipped detector {SHIPPED} not built yet (models/detector training)"
)
needs_faces_data = pytest.mark.skipif(
    not DFDC.is_dir() or not YUNET.is_dir(), reason=f"DFDC samples or YuNet not found under {shared_root()}"
)


def write_clip(path: Path, frames: int = 12, size: tuple[int, int] = (96, 64), fps: int = 6) -> Path:
    """A short H.264 clip of moving stripes: structure, no face."""
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        yy, xx = np.mgrid[0:height, 0:width]
        for i in range(frames):
            value = (40 + (xx * 3 + i * 7) % 150 + 30 * ((yy // 8 + i) % 2)).astype(np.uint8)
            rgb = np.stack([value, value[::-1], np.roll(value, i, axis=1)], axis=2)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "case", ["missing", "empty", "junk_video", "junk_picture", "audio_only", "one_pixel"]
)
def test_bad_input_gives_one_error_line(cli: Cli, tmp_path: Path, case: str) -> None:
    expected = {
        "missing": "input not found",
        "empty": "empty",
        "junk_video": "cannot read video",
        "junk_picture": "cannot decode",
        "audio_only": "has no video stream",
        "one_pixel": "too small to hold a face",
    }[case]
    if case == "missing":
        target = tmp_path / "nowhere.mp4"
    elif case == "empty":
        target = tmp_path / "empty.mp4"
        target.write_bytes(b"")
    elif case == "junk_video":
        target = tmp_path / "junk.mp4"
        target.write_bytes(b"this is not a video" * 50)
    elif case == "junk_picture":
        target = tmp_path / "junk.png"
        target.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    elif case == "audio_only":
        target = write_audio_only(tmp_path / "sound.mp4")
    else:
        target = tmp_path / "dot.png"
        assert cv2.imwrite(str(target), np.zeros((1, 1, 3), np.uint8))
    run = cli("detect", target, "--json")
    assert run.status == 1
    assert run.out == ""
    assert len(run.err_lines) == 1, run.err
    assert run.err_lines[0].startswith("chromastream: error: ")
    assert expected in run.err_lines[0]
    assert "Traceback" not in run.err


def test_bad_flags_are_usage_errors(cli: Cli, tmp_path: Path) -> None:
    for flags in (["--rate", "0"], ["--rate", "nan"], ["--max-frames", "0"]):
        with pytest.raises(SystemExit) as exc:
            cli("detect", tmp_path / "x.mp4", *flags)
        assert exc.value.code == 2


def test_usage_lists_detect(capsys: pytest.CaptureFixture[str]) -> None:
    from chromastream.stream.cli import build_parser

    assert "detect" in build_parser().format_help()
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["detect", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--rate" in text and "--max-frames" in text and "--json" in text


# --------------------------------------------------------------------------- sampling


def test_sampling_rate_and_limit(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "stripes.mp4", frames=24, fps=6)  # 4 s
    times = [f.time for f in detect_cli.sample_video(clip, rate=2.0, max_frames=100)]
    assert times == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5], abs=1e-6)
    frames = list(detect_cli.sample_video(clip, rate=1.0, max_frames=3))
    assert [f.time for f in frames] == pytest.approx([0.0, 1.0, 2.0])
    assert frames[0].rgb.shape == (64, 96, 3) and frames[0].rgb.dtype == np.uint8
    # Faster than the clip's frame rate: every frame, once.
    assert len(list(detect_cli.sample_video(clip, rate=100.0, max_frames=100))) == 24


# --------------------------------------------------------------------------- stand-in classifier


@dataclass(frozen=True)
class StandInInfo:
    version: str = "stand-in"
    input_size: int = 64
    temperature: float = 1.0
    threshold: float = 0.5
    uncertain_band: float = 0.1


class BrightnessClassifier:
    """Not a deepfake detector: P(fake) from mean crop brightness, so plumbing has a number to carry."""

    info = StandInInfo()

    def __init__(self) -> None:
        self.calls = 0

    def probabilities(self, crops: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float64]:
        self.calls += 1
        return np.asarray([float(c.mean()) / 255.0 for c in crops], dtype=np.float64)


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> BrightnessClassifier:
    classifier = BrightnessClassifier()
    monkeypatch.setattr(
        detect_cli, "build_detector", lambda window: DeepfakeDetector(classifier=classifier, window=window)
    )
    return classifier


@needs_faces_data
def test_picture_with_a_face_json_shape(cli: Cli, stand_in: BrightnessClassifier) -> None:
    run = cli("detect", DFDC / "notebook_samples" / "lynaeydofd_fr0.jpg", "--json")
    assert run.status == 0, run.err
    result = json.loads(run.out)
    assert result["kind"] == "image" and result["frames_sampled"] == 1
    assert result["faces"] == len(result["tracks"]) >= 1
    assert 0.0 <= result["fake_probability"] <= 1.0
    assert result["label"] in ("real", "fake", "uncertain")
    assert result["detector"] == "stand-in"
    track = result["tracks"][0]
    assert track["probability"] == result["fake_probability"]
    x0, y0, x1, y1 = track["box"]
    assert 0 <= x0 < x1 and 0 <= y0 < y1
    assert stand_in.calls == 1


@needs_faces_data
def test_no_face_clip_with_stand_in(cli: Cli, tmp_path: Path, stand_in: BrightnessClassifier) -> None:
    run = cli("detect", write_clip(tmp_path / "stripes.mp4"), "--json", "--rate", "4")
    assert run.status == 0, run.err
    result = json.loads(run.out)
    assert (result["label"], result["fake_probability"], result["faces"]) == ("no_face", None, 0)
    assert result["frames_sampled"] == 8  # 2 s at 4 samples per second
    assert stand_in.calls == 0, "no face, so the classifier never runs"
    text = cli("detect", tmp_path / "stripes.mp4")
    assert text.status == 0 and "no_face" in text.out and "no probability" in text.out


# --------------------------------------------------------------------------- shipped detector


@needs_shipped
@needs_faces_data
def test_shipped_no_face_clip(cli: Cli, tmp_path: Path) -> None:
    run = cli("detect", write_clip(tmp_path / "stripes.mp4"), "--json")
    assert run.status == 0, run.err
    result = json.loads(run.out)
    assert result["label"] == "no_face"
    assert result["fake_probability"] is None
    assert result["tracks"] == []


@needs_shipped
@needs_faces_data
def test_shipped_dfdc_video(cli: Cli) -> None:
    clip = DFDC / "mesonet_fork_test_videos" / "real-xtpeyyltfi-1.mp4"
    run = cli("detect", clip, "--json", "--rate", "2", "--max-frames", "4")
    assert run.status == 0, run.err
    result = json.loads(run.out)
    assert result["frames_sampled"] == 4
    assert result["faces"] >= 1
    assert isinstance(result["fake_probability"], float) and 0.0 <= result["fake_probability"] <= 1.0
    assert result["label"] in ("real", "fake", "uncertain")
    assert result["tracks"][0]["samples"] >= 1
    text = cli("detect", clip, "--max-frames", "2")
    assert text.status == 0 and "P(fake)" in text.out and "track" in text.out
