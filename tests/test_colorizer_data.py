"""Training clips and hints: the motion the temporal loss trusts must be the motion in the pictures."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from chromastream.models.colorizer import spec  # noqa: E402
from chromastream.models.colorizer.data import (  # noqa: E402
    ImageBank,
    VideoBank,
    davis_training_sequences,
    random_hints,
    training_images,
)
from chromastream.models.colorizer.network import pool_hints  # noqa: E402
from chromastream.models.shared_data import shared_root  # noqa: E402

SHARED = shared_root()
needs_shared = pytest.mark.skipif(
    not (SHARED / "data").is_dir() and os.environ.get("CI") != "true",
    reason=f"shared data not found at {SHARED}",
)


def _warp_error(frames: torch.Tensor, grid: torch.Tensor, valid: torch.Tensor) -> tuple[float, float]:
    """Mean |frame t warped onto t+1 - frame t+1| over trusted pixels, and the same without warping."""
    warped = F.grid_sample(frames[:, 0], grid, mode="bilinear", align_corners=False)
    weight = valid.expand_as(warped)
    err = float(((warped - frames[:, 1]).abs() * weight).sum() / weight.sum())
    still = float(((frames[:, 0] - frames[:, 1]).abs() * weight).sum() / weight.sum())
    return err, still


@needs_shared
def test_davis_training_never_reads_held_out_sequences() -> None:
    names = {p.name for p in davis_training_sequences(SHARED, spec.DAVIS_EVAL_SEQUENCES)}
    assert len(names) >= 6
    assert not names & set(spec.DAVIS_EVAL_SEQUENCES)


@needs_shared
def test_davis_flow_explains_the_motion() -> None:
    bank = VideoBank(davis_training_sequences(SHARED, spec.DAVIS_EVAL_SEQUENCES)[:1], short_side=128)
    clip = bank.sample(np.random.default_rng(0), 4, 96, frames=3)
    assert clip.frames.shape == (4, 3, 3, 96, 96)
    assert clip.flow_grid.shape == (4, 2, 96, 96, 2)
    assert 0.3 < float(clip.valid.mean()) <= 1.0
    err, still = _warp_error(clip.frames, clip.flow_grid[:, 0], clip.valid[:, 0])
    assert err < 0.5 * still


@needs_shared
def test_synthetic_motion_is_exact() -> None:
    bank = ImageBank(training_images(SHARED)[:4], short_side=128)
    clip = bank.sample(np.random.default_rng(1), 3, 96, frames=3)
    for t in range(2):
        err, _ = _warp_error(clip.frames[:, t : t + 2], clip.flow_grid[:, t], clip.valid[:, t])
        assert err < 0.02


def test_random_hints_reveal_the_truth_under_each_disc() -> None:
    ab = torch.zeros(8, 2, 64, 64)
    ab[:, 0], ab[:, 1] = 0.5, -0.25
    ab[:, :, :, 48:] = 0.0  # a grey strip: discs over its edge carry a mix, never more than the colour
    hints = random_hints(ab, np.random.default_rng(2), p_none=0.0, max_count=20)
    mask = hints[:, 2] > 0
    assert bool(mask.any(dim=(1, 2)).all())  # p_none=0: every sample has hints
    assert bool((hints[:, :2][~mask[:, None].expand(-1, 2, -1, -1)] == 0).all())
    far_left = mask.clone()
    far_left[:, :, 40:] = False  # discs (radius <= 4) touching these columns lie wholly in the colour
    assert torch.allclose(hints[:, 0][far_left], torch.tensor(0.5))
    assert torch.allclose(hints[:, 1][far_left], torch.tensor(-0.25))
    assert bool((hints[:, 0][mask] <= 0.5 + 1e-6).all()) and bool((hints[:, 0][mask] >= 0).all())


def test_pool_hints_keeps_a_small_click_at_full_strength() -> None:
    hints = torch.zeros(1, 3, 16, 16)
    hints[0, :, 5, 6] = torch.tensor([0.4, -0.3, 1.0])  # one hinted pixel
    pooled = pool_hints(hints, 4)
    assert pooled.shape == (1, 3, 4, 4)
    assert torch.allclose(pooled[0, :, 1, 1], torch.tensor([0.4, -0.3, 1.0]))
    assert float(pooled[0, 2].sum()) == 1.0  # no other cell claims a hint
