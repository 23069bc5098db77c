"""The scene-cut detector: one cut at a splice, none on smooth motion, brightness ramps or noise."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import pytest

from chromastream.stream.scene_cut import SceneCutDetector

H, W = 120, 160
_yy, _xx = np.mgrid[0:H, 0:W]
_rng = np.random.default_rng(7)


def _texture(sigma: float) -> np.ndarray:
    noise = cv2.GaussianBlur(_rng.random((2 * H, 2 * W)).astype(np.float32), (0, 0), sigma)
    return (noise - noise.min()) / (noise.max() - noise.min())


_TEX_A = _texture(6)
_TEX_B = _texture(3)


def pan(i: int) -> np.ndarray:
    """A textured scene under a camera panning 3 px a frame and tilting 1 px."""
    return (30 + 190 * _TEX_A[10 + i : 10 + i + H, 3 * i : 3 * i + W]).astype(np.uint8)


def other_pan(i: int) -> np.ndarray:
    """A different, finer texture panning the other way."""
    return (50 + 150 * _TEX_B[60 : 60 + H, 100 - 2 * i : 100 - 2 * i + W]).astype(np.uint8)


def rings(i: int) -> np.ndarray:
    """Concentric rings drifting and pulsing: smooth motion everywhere in the frame."""
    r = np.hypot(_xx - (80 + 10 * np.sin(i / 5)), _yy - 60)
    return np.clip(120 + 60 * np.cos(r / 6 + i * 0.3), 16, 235).astype(np.uint8)


def ramp(i: int) -> np.ndarray:
    """The first frame of ``pan`` getting brighter by 2 levels a frame (auto exposure, sunrise)."""
    return np.clip(pan(0).astype(int) + 2 * i - 30, 0, 255).astype(np.uint8)


def noisy(i: int) -> np.ndarray:
    """A still scene with strong sensor noise."""
    return np.clip(pan(0) + _rng.normal(0, 8, (H, W)), 0, 255).astype(np.uint8)


def cuts(frames: list[np.ndarray], detector: SceneCutDetector | None = None) -> list[int]:
    detector = detector or SceneCutDetector()
    return [i for i, y in enumerate(frames) if detector.update(y)]


Scene = Callable[[int], np.ndarray]
SCENES: dict[str, Scene] = {"pan": pan, "other_pan": other_pan, "rings": rings, "ramp": ramp, "noisy": noisy}


@pytest.mark.parametrize("name", SCENES)
def test_no_cut_within_one_scene(name: str) -> None:
    assert cuts([SCENES[name](i) for i in range(40)]) == []


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("pan", "other_pan"),
        ("other_pan", "rings"),
        ("rings", "pan"),
        ("noisy", "rings"),
        ("ramp", "other_pan"),
    ],
)
def test_exactly_one_cut_at_the_splice(first: str, second: str) -> None:
    clip = [SCENES[first](i) for i in range(20)] + [SCENES[second](i) for i in range(20, 40)]
    assert cuts(clip) == [20]


def test_min_gap_ignores_a_flash() -> None:
    """A single different frame (a flash) cuts in and straight back out: one reset, not two."""
    clip = [pan(i) for i in range(30)]
    clip[15] = rings(0)
    assert cuts(clip, SceneCutDetector(min_gap=8)) == [15]
    assert cuts(clip, SceneCutDetector(min_gap=0)) == [15, 16]


def test_reset_forgets_the_previous_frame() -> None:
    detector = SceneCutDetector()
    for i in range(5):
        assert not detector.update(pan(i))
    detector.reset()  # a reconnect: the next frame is not compared with the old scene
    assert not detector.update(rings(0))
    assert detector.score == 0.0


def test_frame_size_change_is_compared_on_thumbnails() -> None:
    detector = SceneCutDetector()
    assert not detector.update(pan(0))
    assert not detector.update(cv2.resize(pan(1), (2 * W, 2 * H), interpolation=cv2.INTER_LINEAR))


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="threshold"):
        SceneCutDetector(threshold=0)
    with pytest.raises(ValueError, match="min_gap"):
        SceneCutDetector(min_gap=-1)
