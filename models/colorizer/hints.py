"""User colour hints: parsing, validation and rasterization into the network's ``hints`` input.

A hint is a point in normalized image coordinates (x right, y down, both in [0, 1]) with a colour given
either as Lab ``a``/``b`` or as ``rgb`` (``[r, g, b]`` 0-255 or ``"#rrggbb"``), and a radius relative to
the picture's short side. Only the hint's chroma is used: the luminance always comes from the frame, so a
hint can never change brightness. Coordinates are normalized so a hint survives a change of resolution
(a camera reconfigured, a different working size).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chromastream.errors import ChromastreamError
from chromastream.kernels.lab_numpy import rgb_to_lab
from chromastream.models.colorizer import spec

MAX_HINTS = 256
DEFAULT_RADIUS = 0.02
MAX_RADIUS = 0.25
AB_LIMIT = 128.0


class HintError(ChromastreamError, ValueError):
    """A hint (or a hints file) is malformed; the message says which one and why.

    Also a ``ValueError``: a hint is a value the caller passed in, and code that parses values catches that.
    """


@dataclass(frozen=True)
class Hint:
    x: float
    y: float
    a: float
    b: float
    radius: float = DEFAULT_RADIUS

    def to_json(self) -> dict[str, float]:
        return {"x": self.x, "y": self.y, "a": self.a, "b": self.b, "radius": self.radius}


def _number(obj: dict[str, Any], key: str, where: str) -> float:
    value = obj.get(key)
    try:  # an integer too large for a float (JSON allows any length) is no finite number either
        number = None if isinstance(value, bool) or not isinstance(value, int | float) else float(value)
    except OverflowError:
        number = None
    if number is None or not math.isfinite(number):
        raise HintError(f"{where}: '{key}' must be a finite number, got {value!r}")
    return number


def _parse_rgb(value: Any, where: str) -> tuple[float, float]:
    rgb: list[float]
    if isinstance(value, str):
        text = value.strip().lstrip("#")
        if len(text) != 6 or any(c not in "0123456789abcdefABCDEF" for c in text):
            raise HintError(f"{where}: 'rgb' string must look like '#rrggbb', got {value!r}")
        rgb = [float(int(text[i : i + 2], 16)) for i in (0, 2, 4)]
    elif isinstance(value, list | tuple) and len(value) == 3:
        rgb = []
        for c in value:
            if isinstance(c, bool) or not isinstance(c, int | float) or not 0 <= c <= 255:
                raise HintError(f"{where}: 'rgb' components must be numbers in 0..255, got {value!r}")
            rgb.append(c)
    else:
        raise HintError(f"{where}: 'rgb' must be [r, g, b] (0..255) or '#rrggbb', got {value!r}")
    lab = rgb_to_lab(np.asarray(rgb, dtype=np.float32) / 255.0)
    return float(lab[1]), float(lab[2])


def parse_hint(obj: Any, where: str = "hint") -> Hint:
    """One hint from its JSON form; raises :class:`HintError` naming the field that is wrong."""
    if not isinstance(obj, dict):
        raise HintError(f"{where}: expected an object with x, y and a colour, got {type(obj).__name__}")
    unknown = set(obj) - {"x", "y", "a", "b", "rgb", "radius"}
    if unknown:
        raise HintError(f"{where}: unknown field(s) {sorted(unknown)}")
    x, y = _number(obj, "x", where), _number(obj, "y", where)
    if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        raise HintError(f"{where}: x and y are normalized coordinates in [0, 1], got ({x}, {y})")
    if "rgb" in obj:
        if "a" in obj or "b" in obj:
            raise HintError(f"{where}: give either 'rgb' or 'a'/'b', not both")
        a, b = _parse_rgb(obj["rgb"], where)
    elif "a" in obj and "b" in obj:
        a, b = _number(obj, "a", where), _number(obj, "b", where)
        if abs(a) > AB_LIMIT or abs(b) > AB_LIMIT:
            raise HintError(f"{where}: a and b must lie in [-{AB_LIMIT:g}, {AB_LIMIT:g}], got ({a}, {b})")
    else:
        raise HintError(f"{where}: a colour is required: 'rgb' or both 'a' and 'b'")
    radius = _number(obj, "radius", where) if "radius" in obj else DEFAULT_RADIUS
    if not 0.0 < radius <= MAX_RADIUS:
        raise HintError(f"{where}: radius must be in (0, {MAX_RADIUS}], got {radius}")
    return Hint(x, y, a, b, radius)


def checked_hints(hints: Sequence[Hint]) -> tuple[Hint, ...]:
    """``hints`` as the tuple a stream keeps: at most :data:`MAX_HINTS`, each a parsed :class:`Hint`."""
    hints = tuple(hints)
    if len(hints) > MAX_HINTS:
        raise HintError(f"too many hints: {len(hints)} (at most {MAX_HINTS})")
    for hint in hints:
        if not isinstance(hint, Hint):
            raise HintError(f"expected Hint objects, got {type(hint).__name__}")
    return hints


def parse_hints(obj: Any) -> list[Hint]:
    """A list of hints, or ``{"hints": [...]}``."""
    if isinstance(obj, dict) and "hints" in obj:
        obj = obj["hints"]
    if not isinstance(obj, list):
        raise HintError('hints must be a JSON list of hint objects (or {"hints": [...]})')
    if len(obj) > MAX_HINTS:
        raise HintError(f"too many hints: {len(obj)} (at most {MAX_HINTS})")
    return [parse_hint(item, f"hint {i}") for i, item in enumerate(obj)]


def load_hints_file(path: Path) -> list[Hint]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise HintError(f"cannot read hints file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError:
        raise HintError(f"hints file {path} is not UTF-8 text") from None
    try:
        data = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and numbers longer than Python converts
        raise HintError(f"hints file {path} is not valid JSON: {exc}") from exc
    except RecursionError:
        raise HintError(f"hints file {path} nests lists or objects too deeply") from None
    return parse_hints(data)


def rasterize(hints: Sequence[Hint] | Iterable[Hint], height: int, width: int) -> np.ndarray:
    """The network's ``hints`` input ``[3, height, width]``: discs of a/AB_SCALE, b/AB_SCALE and a mask.

    Later hints overwrite earlier ones where discs overlap, so a user's newest click wins.
    """
    out = np.zeros((3, height, width), dtype=np.float32)
    short = min(height, width)
    for h in hints:
        r = max(h.radius * short, 0.75)
        cx, cy = h.x * (width - 1), h.y * (height - 1)
        x0, x1 = max(math.floor(cx - r), 0), min(math.ceil(cx + r) + 1, width)
        y0, y1 = max(math.floor(cy - r), 0), min(math.ceil(cy + r) + 1, height)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        region = out[:, y0:y1, x0:x1]
        region[0][disc] = h.a / spec.AB_SCALE
        region[1][disc] = h.b / spec.AB_SCALE
        region[2][disc] = 1.0
    return out
