"""The backend interface: one colorizer network, run on some device, behind one small call.

A backend is stateless: the caller passes the recurrent state in and gets the next one out, so one engine
serves many streams and batches them together. Backends live one per module with their heavy imports
inside, so a missing optional dependency only matters when that backend is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from chromastream.errors import ChromastreamError
from chromastream.models.colorizer import spec

F32 = npt.NDArray[np.float32]


class BackendError(ChromastreamError):
    """A colorizer backend cannot load or run the model (base of the runtime room's errors)."""


class BackendUnavailable(BackendError):
    """The backend cannot run here; the message names the extra or the hardware it needs."""


class ModelFormatError(BackendError):
    """The model file is missing, unreadable or does not follow the colorizer contract."""


@dataclass(frozen=True)
class ModelInfo:
    """What a model file says about itself (stored in its ONNX metadata)."""

    version: str
    l_scale: float = spec.L_SCALE
    ab_scale: float = spec.AB_SCALE
    size_multiple: int = spec.SIZE_MULTIPLE
    state_channels: int = spec.STATE_CHANNELS
    state_stride: int = spec.STATE_STRIDE
    precision: str = "fp32"
    """How the file stores its weights: ``fp32``, ``fp16`` (a TensorRT build input) or ``int8`` (QDQ)."""

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> ModelInfo:
        def get(key: str, default: str) -> str:
            return meta.get(f"chromastream.{key}", default)

        return cls(
            version=get("version", "unknown"),
            l_scale=float(get("l_scale", str(spec.L_SCALE))),
            ab_scale=float(get("ab_scale", str(spec.AB_SCALE))),
            size_multiple=int(get("size_multiple", str(spec.SIZE_MULTIPLE))),
            state_channels=int(get("state_channels", str(spec.STATE_CHANNELS))),
            state_stride=int(get("state_stride", str(spec.STATE_STRIDE))),
            precision=get("precision", "fp32"),
        )

    def state_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        return (batch, self.state_channels, height // self.state_stride, width // self.state_stride)


class Backend(Protocol):
    """Runs the colorizer network on batched numpy arrays (the contract in
    :mod:`chromastream.models.colorizer.spec`)."""

    name: str
    info: ModelInfo

    def run(self, L: F32, hints: F32, state: F32) -> tuple[F32, F32]:
        """``L [B,1,H,W]``, ``hints [B,3,H,W]``, ``state`` -> ``(ab [B,2,H,W], state_out)``."""
        ...
