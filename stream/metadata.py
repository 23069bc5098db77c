"""The per-frame metadata object (docs/ARCHITECTURE.md, Contracts): one JSON-serializable dict per output
frame.

Clients match it to the video they decode by stream id and ``pts`` (in the source's ``time_base``), so
the same object can travel on a WebRTC data channel, over SSE/WebSocket or as a JSON line beside a file,
and arrive in any order relative to the picture. Only plain ``str``/``int``/``float``/``bool``/``None``,
lists and dicts go in, so ``json.dumps`` needs no custom encoder anywhere.

Shape::

    {"stream": "gate", "index": 41, "pts": 369000, "time_base": "1/90000", "time": 4.1,
     "colorizer": {"model": "v3", "backend": "onnxruntime", "size": [256, 448], "latency_ms": 11.2,
                   "memory": true, "hints": 2, "reset": null},
     "latency_ms": 38.5,
     "deepfake": {"label": "off", "probability": null, "faces": [], "sampled_pts": null, "detector": null}}

``colorizer.reset`` names why the recurrent state started fresh at this frame: ``start`` (the stream's
first frame), ``reconnect``, ``loop``, ``scene_cut``, ``request``, ``resize`` (the frame size changed), or
``null`` when the frame continued from the previous one's state. ``latency_ms`` at the top is end to end
(the source handing the frame over -> the output frame published); ``colorizer.latency_ms`` is the batched
inference call alone. ``deepfake`` is the latest verdict of the stream's detector; with no detector it says
``"off"`` rather than inventing a number.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

METADATA_KEYS = ("stream", "index", "pts", "time_base", "time", "colorizer", "latency_ms", "deepfake")
COLORIZER_KEYS = ("model", "backend", "size", "latency_ms", "memory", "hints", "reset")
DEEPFAKE_KEYS = ("label", "probability", "faces", "sampled_pts", "detector")


def deepfake_off() -> dict[str, Any]:
    """The ``deepfake`` entry while no detector runs on the stream."""
    return {"label": "off", "probability": None, "faces": [], "sampled_pts": None, "detector": None}


@dataclass(frozen=True, slots=True)
class ColorizerInfo:
    """What the colorizer did for one frame."""

    model: str
    backend: str
    size: tuple[int, int]
    latency_ms: float
    memory: bool
    hints: int
    reset: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "backend": self.backend,
            "size": [int(self.size[0]), int(self.size[1])],
            "latency_ms": round(float(self.latency_ms), 3),
            "memory": bool(self.memory),
            "hints": int(self.hints),
            "reset": self.reset,
        }


def frame_metadata(
    stream_id: str,
    index: int,
    pts: int | None,
    time_base: Fraction,
    colorizer: ColorizerInfo,
    latency_ms: float,
    deepfake: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The metadata object of one output frame."""
    return {
        "stream": stream_id,
        "index": int(index),
        "pts": None if pts is None else int(pts),
        "time_base": f"{time_base.numerator}/{time_base.denominator}",
        "time": None if pts is None else float(pts * time_base),
        "colorizer": colorizer.to_json(),
        "latency_ms": round(float(latency_ms), 3),
        "deepfake": deepfake if deepfake is not None else deepfake_off(),
    }
