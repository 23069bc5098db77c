"""The fixed hint-propagation step: hinted pixels get the hinted colour, the colour spreads over similar
lightness and stops at a lightness edge, and without hints nothing changes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from chromastream.models.colorizer.network import HintPropagation  # noqa: E402


def scene() -> tuple[torch.Tensor, torch.Tensor]:
    """A 64x64 picture: dark left half, bright right half; the decoder predicted grey everywhere."""
    L = torch.full((1, 1, 64, 64), 0.3)
    L[..., 32:] = 0.8
    return L, torch.zeros(1, 2, 64, 64)


def test_no_hints_no_change() -> None:
    L, ab = scene()
    ab = ab + 0.1
    out = HintPropagation()(ab, torch.zeros(1, 3, 64, 64), L)
    assert torch.equal(out, ab)


def test_a_hint_colours_its_surface_and_stops_at_the_edge() -> None:
    L, ab = scene()
    hints = torch.zeros(1, 3, 64, 64)
    hints[0, :, 30:34, 10:14] = torch.tensor([0.4, -0.2, 1.0])[:, None, None]  # a click on the dark half
    out = HintPropagation()(ab, hints, L)
    at_click = out[0, :, 32, 12]
    assert torch.allclose(at_click, torch.tensor([0.4, -0.2]), atol=0.05)
    same_surface = out[0, 0, 10, 20]  # 20 px away, same lightness
    across_edge = out[0, 0, 32, 40]  # 26 px away, other lightness
    assert same_surface > 0.2
    assert abs(float(across_edge)) < 0.25 * float(same_surface)


def test_dense_hints_stay_local() -> None:
    L = torch.full((1, 1, 64, 64), 0.5)
    ab = torch.zeros(1, 2, 64, 64)
    hints = torch.zeros(1, 3, 64, 64)
    for y in range(2, 64, 8):  # a grid of clicks: red on the left columns, blue on the right
        for x in range(2, 64, 8):
            colour = [0.4, 0.0] if x < 32 else [-0.4, 0.0]
            hints[0, :, y : y + 2, x : x + 2] = torch.tensor([*colour, 1.0])[:, None, None]
    out = HintPropagation()(ab, hints, L)
    assert float(out[0, 0, 30, 8]) > 0.3 and float(out[0, 0, 30, 56]) < -0.3


def test_fp16_matches_fp32() -> None:
    L, ab = scene()
    hints = torch.zeros(1, 3, 64, 64)
    hints[0, :, 30:34, 10:14] = torch.tensor([0.4, -0.2, 1.0])[:, None, None]
    module = HintPropagation()
    full = module(ab, hints, L)
    half = module.half()(ab.half(), hints.half(), L.half()).float()
    assert torch.isfinite(half).all()
    assert torch.allclose(half, full, atol=1e-2)
