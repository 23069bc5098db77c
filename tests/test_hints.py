"""User colour hints: every accepted form, every rejection (naming the hint), and rasterization."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from chromastream.kernels.lab_numpy import rgb_to_lab
from chromastream.models.colorizer import spec
from chromastream.models.colorizer.hints import (
    DEFAULT_RADIUS,
    MAX_HINTS,
    Hint,
    HintError,
    load_hints_file,
    parse_hint,
    parse_hints,
    rasterize,
)

RED_AB = tuple(float(v) for v in rgb_to_lab(np.array([1.0, 0.0, 0.0]))[1:])
BLUE_AB = tuple(float(v) for v in rgb_to_lab(np.array([0.0, 0.0, 1.0]))[1:])


# ---------------------------------------------------------------- accepted forms


def test_ab_hint_with_default_radius() -> None:
    h = parse_hint({"x": 0.25, "y": 0.75, "a": 12.5, "b": -40})
    assert h == Hint(0.25, 0.75, 12.5, -40.0, DEFAULT_RADIUS)
    assert isinstance(h.b, float)


@pytest.mark.parametrize("rgb", [[255, 0, 0], (255, 0, 0), [255.0, 0.0, 0.0], "#ff0000", "#FF0000", "ff0000"])
def test_rgb_forms_give_the_lab_chroma_of_that_colour(rgb: Any) -> None:
    h = parse_hint({"x": 0.5, "y": 0.5, "rgb": rgb})
    assert (h.a, h.b) == pytest.approx(RED_AB, abs=1e-4)
    assert (h.a, h.b) == pytest.approx((80.09, 67.20), abs=0.05)


def test_hex_and_list_agree_and_only_chroma_is_kept() -> None:
    """Only a/b are kept: a hint never changes brightness, which always comes from the frame."""
    h_hex = parse_hint({"x": 0, "y": 0, "rgb": "#0000ff"})
    h_list = parse_hint({"x": 0, "y": 0, "rgb": [0, 0, 255]})
    assert (h_hex.a, h_hex.b) == pytest.approx(BLUE_AB, abs=1e-4) == (h_list.a, h_list.b)
    grey = parse_hint({"x": 0, "y": 0, "rgb": "#808080"})
    assert (grey.a, grey.b) == pytest.approx((0.0, 0.0), abs=0.01)
    assert set(h_hex.to_json()) == {"x", "y", "a", "b", "radius"}


def test_radius_and_corner_coordinates() -> None:
    h = parse_hint({"x": 1, "y": 0, "a": 0, "b": 0, "radius": 0.25})
    assert (h.x, h.y, h.radius) == (1.0, 0.0, 0.25)


def test_list_and_wrapped_forms() -> None:
    items = [{"x": 0.1, "y": 0.2, "a": 1, "b": 2}, {"x": 0.3, "y": 0.4, "rgb": "#00ff00", "radius": 0.1}]
    plain = parse_hints(items)
    assert parse_hints({"hints": items}) == plain
    assert len(plain) == 2 and plain[1].radius == 0.1
    assert parse_hints([]) == []
    assert len(parse_hints([items[0]] * MAX_HINTS)) == MAX_HINTS


def test_round_trip_through_json_file(tmp_path: Path) -> None:
    hints = [Hint(0.1, 0.9, -20.0, 35.5, 0.05), Hint(0.5, 0.5, 0.0, 0.0)]
    path = tmp_path / "hints.json"
    path.write_text(json.dumps({"hints": [h.to_json() for h in hints]}), encoding="utf-8")
    assert load_hints_file(path) == hints


# ---------------------------------------------------------------- rejections


BAD_HINTS: list[tuple[Any, str]] = [
    ({"x": 1.01, "y": 0.5, "a": 0, "b": 0}, "x and y are normalized"),
    ({"x": 0.5, "y": -0.1, "a": 0, "b": 0}, "x and y are normalized"),
    ({"x": 0.5, "y": 0.5, "a": 128.5, "b": 0}, "a and b must lie in"),
    ({"x": 0.5, "y": 0.5, "a": 0, "b": -200}, "a and b must lie in"),
    ({"x": 0.5, "y": 0.5, "a": 0, "b": 0, "radius": 0}, "radius must be in"),
    ({"x": 0.5, "y": 0.5, "a": 0, "b": 0, "radius": -0.1}, "radius must be in"),
    ({"x": 0.5, "y": 0.5, "a": 0, "b": 0, "radius": 0.3}, "radius must be in"),
    ({"x": 0.5, "y": 0.5, "rgb": [256, 0, 0]}, "components must be numbers in 0..255"),
    ({"x": 0.5, "y": 0.5, "rgb": [-1, 0, 0]}, "components must be numbers in 0..255"),
    ({"x": 0.5, "y": 0.5, "rgb": [True, 0, 0]}, "components must be numbers in 0..255"),
    ({"x": 0.5, "y": 0.5, "rgb": ["255", 0, 0]}, "components must be numbers in 0..255"),
    ({"x": 0.5, "y": 0.5, "rgb": [255, 0, math.nan]}, "components must be numbers in 0..255"),
    ({"x": 0.5, "y": 0.5, "rgb": [255, 0]}, "'rgb' must be"),
    ({"x": 0.5, "y": 0.5, "rgb": 16711680}, "'rgb' must be"),
    ({"x": 0.5, "y": 0.5, "rgb": "#ff00"}, "must look like '#rrggbb'"),
    ({"x": 0.5, "y": 0.5, "rgb": "#gg0000"}, "must look like '#rrggbb'"),
    ({"x": 0.5, "y": 0.5, "a": 0, "b": 0, "colour": "red"}, r"unknown field\(s\) \['colour'\]"),
    ({"x": 0.5, "y": 0.5, "rgb": "#ff0000", "a": 0}, "either 'rgb' or 'a'/'b', not both"),
    ({"x": 0.5, "y": 0.5, "a": 10}, "a colour is required"),
    ({"x": 0.5, "y": 0.5}, "a colour is required"),
    ({"y": 0.5, "a": 0, "b": 0}, "'x' must be a finite number, got None"),
    ({"x": math.nan, "y": 0.5, "a": 0, "b": 0}, "'x' must be a finite number, got nan"),
    ({"x": 0.5, "y": math.inf, "a": 0, "b": 0}, "'y' must be a finite number"),
    ({"x": 0.5, "y": 0.5, "a": math.nan, "b": 0}, "'a' must be a finite number"),
    ({"x": True, "y": 0.5, "a": 0, "b": 0}, "'x' must be a finite number, got True"),
    ({"x": 0.5, "y": 0.5, "a": 0, "b": False}, "'b' must be a finite number, got False"),
    ({"x": "0.5", "y": 0.5, "a": 0, "b": 0}, "'x' must be a finite number"),
    ({"x": 0.5, "y": 0.5, "a": 0, "b": 0, "radius": math.nan}, "'radius' must be a finite number"),
    ([0.5, 0.5, 0, 0], "expected an object"),
    ("#ff0000", "expected an object"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_HINTS)
def test_rejections_name_the_hint_and_the_reason(bad: Any, message: str) -> None:
    good = {"x": 0.5, "y": 0.5, "a": 0, "b": 0}
    with pytest.raises(HintError, match=r"^hint 2: .*" + message):
        parse_hints([good, good, bad, good])
    assert issubclass(HintError, ValueError), "callers that catch ValueError keep working"


def test_too_many_hints() -> None:
    good = {"x": 0.5, "y": 0.5, "a": 0, "b": 0}
    with pytest.raises(HintError, match=f"too many hints: {MAX_HINTS + 1} \\(at most {MAX_HINTS}\\)"):
        parse_hints([good] * (MAX_HINTS + 1))


@pytest.mark.parametrize("obj", [{"x": 0.5}, "hints", 3, None, {"hints": {"x": 0.5}}])
def test_not_a_list(obj: Any) -> None:
    with pytest.raises(HintError, match="must be a JSON list"):
        parse_hints(obj)


def test_file_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "hints.json"
    path.write_text("[{x: 0.5}", encoding="utf-8")
    with pytest.raises(HintError, match="is not valid JSON"):
        load_hints_file(path)
    with pytest.raises(HintError, match="cannot read hints file"):
        load_hints_file(tmp_path / "missing.json")


def test_file_with_nan_and_bools_is_rejected(tmp_path: Path) -> None:
    """Python's json accepts NaN and Infinity; a hint must still refuse them."""
    path = tmp_path / "hints.json"
    path.write_text('[{"x": 0.5, "y": 0.5, "a": 1, "b": 1}, {"x": NaN, "y": 0.5, "a": 0, "b": 0}]')
    with pytest.raises(HintError, match=r"^hint 1: 'x' must be a finite number"):
        load_hints_file(path)
    path.write_text('{"hints": [{"x": 0.5, "y": 0.5, "a": Infinity, "b": 0}]}')
    with pytest.raises(HintError, match=r"^hint 0: 'a' must be a finite number"):
        load_hints_file(path)
    path.write_text('[{"x": 0.5, "y": 0.5, "a": true, "b": 0}]')
    with pytest.raises(HintError, match=r"^hint 0: 'a' must be a finite number, got True"):
        load_hints_file(path)


# ---------------------------------------------------------------- rasterize


def test_rasterize_puts_a_disc_at_the_hint() -> None:
    height, width = 48, 64
    hint = Hint(x=0.5, y=0.25, a=55.0, b=-33.0, radius=0.1)
    out = rasterize([hint], height, width)
    assert out.shape == (3, height, width) and out.dtype == np.float32

    cx, cy, r = 0.5 * (width - 1), 0.25 * (height - 1), 0.1 * min(height, width)
    yy, xx = np.mgrid[0:height, 0:width]
    inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    mask = out[2]
    np.testing.assert_array_equal(mask == 1.0, inside)
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert abs(inside.sum() - math.pi * r * r) < 2 * math.pi * r, "about the area of the disc"
    np.testing.assert_allclose(out[0][inside], 55.0 / spec.AB_SCALE, rtol=1e-6)
    np.testing.assert_allclose(out[1][inside], -33.0 / spec.AB_SCALE, rtol=1e-6)
    assert not out[:2][:, ~inside].any(), "colour only where the mask is set"
    assert mask[round(cy), round(cx)] == 1.0 and mask[0, 0] == 0.0 and mask[-1, -1] == 0.0


def test_rasterize_scales_with_resolution_and_clips_at_borders() -> None:
    """Normalized coordinates: the same hint lands at the same relative place at any size."""
    hint = Hint(x=1.0, y=1.0, a=10.0, b=10.0, radius=0.2)
    small, large = rasterize([hint], 64, 96), rasterize([hint], 256, 384)
    assert small[2, -1, -1] == 1.0 and large[2, -1, -1] == 1.0
    assert large[2].sum() / small[2].sum() == pytest.approx(16, rel=0.1)
    # A radius that would be under a pixel still marks the hinted pixel itself.
    tiny = rasterize([Hint(x=0.0, y=0.0, a=1.0, b=1.0, radius=1e-4)], 32, 32)
    assert tiny[2, 0, 0] == 1.0 and tiny[2].sum() == 1.0
    assert not rasterize([], 16, 24).any()


def test_later_hints_overwrite_earlier_ones() -> None:
    first = Hint(x=0.4, y=0.5, a=80.0, b=60.0, radius=0.2)
    second = Hint(x=0.6, y=0.5, a=-50.0, b=-20.0, radius=0.2)
    out = rasterize([first, second], 50, 50)
    # 0.6 * 49 = 29.4: the second hint's centre; 0.4 * 49 = 19.6: only the first reaches column 12.
    assert out[0, 25, 29] == pytest.approx(-50.0 / spec.AB_SCALE)
    assert out[0, 25, 24] == pytest.approx(-50.0 / spec.AB_SCALE), "overlap: the newer hint wins"
    assert out[0, 25, 12] == pytest.approx(80.0 / spec.AB_SCALE)
    assert out[1, 25, 12] == pytest.approx(60.0 / spec.AB_SCALE)
    swapped = rasterize([second, first], 50, 50)
    assert swapped[0, 25, 24] == pytest.approx(80.0 / spec.AB_SCALE)
    np.testing.assert_array_equal(out[2], swapped[2])
