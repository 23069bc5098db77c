"""The losses against muted colour: rebalancing (rare colours weigh more, weights average to 1) and the
colourfulness loss (the docs/ARCHITECTURE.md, Measures measure, differentiable, pulling a greyed prediction to
the truth)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from chromastream.models.colorizer import spec  # noqa: E402
from chromastream.models.colorizer.rebalance import (  # noqa: E402
    N_BINS,
    ab_bins,
    ab_histogram,
    pixel_weights,
    rebalance_weights,
)
from chromastream.models.colorizer.train import colourfulness, colourfulness_loss  # noqa: E402


def _photos() -> list[np.ndarray]:
    """Mostly grey pictures with a small saturated red patch: the shape of natural photographs."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(4):
        img = np.full((40, 40, 3), 120, np.uint8) + rng.integers(0, 6, (40, 40, 1), dtype=np.uint8)
        img[:4, :4] = (220, 20, 30)
        out.append(img)
    return out


def test_rare_colours_weigh_more_and_weights_average_to_one() -> None:
    hist = ab_histogram(_photos())
    assert hist.sum() == 4 * 40 * 40
    weights = rebalance_weights(hist, lam=0.5)
    p = hist / hist.sum()
    grey = tuple(ab_bins(np.array([0.0, 0.0])))
    red_lab = cv2.cvtColor(np.array([[[220, 20, 30]]], np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    red = tuple(ab_bins(red_lab[0, 0, 1:]))
    assert hist[red] > 0
    assert weights[red] > 2 * weights[grey]
    # Expected weight under the (smoothed) training distribution is 1, so the loss keeps its scale;
    # against the raw histogram it stays close to that.
    assert 0.8 < float((p * weights).sum()) < 1.2
    # lam = 1 switches rebalancing off: every colour that occurs weighs the same.
    flat = rebalance_weights(hist, lam=1.0)
    assert np.allclose(flat[hist > 0], 1.0)


def test_pixel_weights_look_up_the_true_colour() -> None:
    weights = torch.arange(N_BINS * N_BINS, dtype=torch.float32).reshape(N_BINS, N_BINS)
    ab = torch.tensor([0.0, 0.0, 55.0, -30.0, 200.0, -200.0]).reshape(3, 2).T.reshape(1, 2, 1, 3)
    got = pixel_weights(ab / spec.AB_SCALE, weights)
    assert got.shape == (1, 1, 1, 3)
    expected = [weights[tuple(ab_bins(np.array(v)))].item() for v in ([0, 0], [55, -30], [200, -200])]
    assert got.flatten().tolist() == pytest.approx(expected)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        rebalance_weights(np.zeros((N_BINS, N_BINS)))
    with pytest.raises(ValueError, match="lam"):
        rebalance_weights(np.ones((N_BINS, N_BINS)), lam=0.0)


def test_colourfulness_loss_is_the_metric_and_restores_colour() -> None:
    rng = np.random.default_rng(1)
    truth = torch.from_numpy(rng.random((2, 3, 24, 24), dtype=np.float32))
    grey = truth.mean(1, keepdim=True)
    muted = grey + 0.3 * (truth - grey)  # the same picture with 30 % of its colour
    expected = np.mean(
        [
            abs(
                colourfulness(muted[i].permute(1, 2, 0).numpy() * 255)
                - colourfulness(truth[i].permute(1, 2, 0).numpy() * 255)
            )
            for i in range(2)
        ]
    )
    assert colourfulness_loss(muted, truth).item() == pytest.approx(expected / 100.0, rel=1e-4)
    # A gradient step on the muted picture moves it away from grey, towards the truth's colourfulness.
    x = muted.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(colourfulness_loss(x, truth), x)
    stepped = (x - 0.05 * grad / grad.abs().max()).detach()
    assert colourfulness_loss(stepped, truth) < colourfulness_loss(muted, truth)
    assert (stepped - stepped.mean(1, keepdim=True)).abs().mean() > (muted - grey).abs().mean()
