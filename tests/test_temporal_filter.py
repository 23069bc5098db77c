"""The temporal filter steadies colour where the picture is still and leaves moving parts alone."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from chromastream.models.runtime.temporal_filter import STRENGTH, TemporalFilter


def _scene(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(20, 80, (32, 48)).astype(np.float32)


def test_still_picture_flickers_less() -> None:
    rng = np.random.default_rng(1)
    lightness = _scene()
    smoother = TemporalFilter()
    raw = [rng.normal(10, 3, (2, 32, 48)).astype(np.float32) for _ in range(40)]
    out = [smoother.apply(lightness, ab) for ab in raw]
    raw_flicker = np.mean([np.abs(b - a).mean() for a, b in itertools.pairwise(raw[10:])])
    out_flicker = np.mean([np.abs(b - a).mean() for a, b in itertools.pairwise(out[10:])])
    assert out_flicker < 0.6 * raw_flicker
    # An average, not a drift: the mean colour stays the network's.
    assert abs(float(np.mean(out[10:])) - 10.0) < 0.5


def test_changed_pixels_take_the_new_colour() -> None:
    smoother = TemporalFilter()
    before, after = _scene(0), _scene(0)
    after[:, 24:] += 40.0  # the right half changed (something moved in)
    smoother.apply(before, np.zeros((2, 32, 48), np.float32))
    new = np.full((2, 32, 48), 30.0, np.float32)
    out = smoother.apply(after, new)
    assert np.allclose(out[:, :, 30:], 30.0, atol=1e-3)  # moved: the network's new colour
    assert np.allclose(out[:, :, :18], 30.0 * (1 - STRENGTH), atol=1e-3)  # still: blended with the old


def test_reset_and_new_shapes_start_afresh() -> None:
    smoother = TemporalFilter()
    smoother.apply(_scene(), np.zeros((2, 32, 48), np.float32))
    smoother.reset()
    ab = np.full((2, 32, 48), 7.0, np.float32)
    np.testing.assert_array_equal(smoother.apply(_scene(), ab), ab)
    other = np.full((2, 16, 16), 5.0, np.float32)
    np.testing.assert_array_equal(smoother.apply(np.zeros((16, 16), np.float32), other), other)


def test_strength_zero_is_the_identity_and_bad_constants_are_refused() -> None:
    smoother = TemporalFilter(0.0)
    smoother.apply(_scene(), np.zeros((2, 32, 48), np.float32))
    ab = np.ones((2, 32, 48), np.float32)
    np.testing.assert_array_equal(smoother.apply(_scene(), ab), ab)
    with pytest.raises(ValueError, match="strength"):
        TemporalFilter(1.0)
    with pytest.raises(ValueError, match="sigma"):
        TemporalFilter(0.5, 0.0)


class _NoisyBackend:
    """The shipped model's interface, answering each frame with fresh noise around one colour."""

    name = "noisy"

    def __init__(self) -> None:
        from chromastream.models.runtime.registry import create_backend

        self.info = create_backend("onnxruntime").info
        self._rng = np.random.default_rng(2)

    def run(self, L: np.ndarray, hints: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, _, h, w = L.shape
        ab = self._rng.normal(0.1, 0.05, (n, 2, h, w)).astype(np.float32)
        self.last = ab
        return ab, state


def test_the_session_smooths_in_memory_mode_only() -> None:
    from chromastream.models.colorizer.hints import Hint
    from chromastream.models.runtime.session import ColorizerSession

    backend = _NoisyBackend()
    plane = np.full((64, 96), 50.0, np.float32)

    def flicker(session: ColorizerSession) -> float:
        out = [session.predict_ab(plane) for _ in range(12)]
        return float(np.mean([np.abs(b - a).mean() for a, b in itertools.pairwise(out[4:])]))

    steady = flicker(ColorizerSession(backend, size=64, memory=True))
    raw = flicker(ColorizerSession(backend, size=64, memory=False))
    assert steady < 0.5 * raw

    session = ColorizerSession(backend, size=64, memory=True, smoothing=(0.0, 3.0))
    assert flicker(session) > 0.8 * raw  # strength 0: the network's output as it is

    session = ColorizerSession(backend, size=64, memory=True)
    scale = backend.info.ab_scale
    session.predict_ab(plane)
    blended = session.predict_ab(plane)
    assert not np.allclose(blended, backend.last[0] * scale)
    session.set_hints([Hint(x=0.5, y=0.5, a=40.0, b=20.0)])
    # A new hint shows at once: the first output after it is the network's own, not a blend.
    np.testing.assert_allclose(session.predict_ab(plane), backend.last[0] * scale, rtol=1e-6)
