"""The deepfake classifier at inference time: the exported ONNX on ONNX Runtime, calibrated.

Only numpy, OpenCV and onnxruntime are needed (no torch), so the live pipeline carries no training
dependencies. Everything model-specific — crop size, temperature, operating point, version — is read
from the file's metadata (written by :mod:`chromastream.models.detector.export`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from chromastream.models.detector import DetectorInputError, DetectorModelError

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "weights" / "detector.onnx"
ENV_MODEL = "CHROMASTREAM_DETECTOR"


def default_model_path() -> Path:
    """``$CHROMASTREAM_DETECTOR`` if set, else the shipped ``models/weights/detector.onnx``."""
    env = os.environ.get(ENV_MODEL)
    return Path(env) if env else DEFAULT_MODEL


@dataclass(frozen=True)
class DetectorInfo:
    """What the model file says about itself."""

    version: str
    input_size: int
    temperature: float
    threshold: float
    uncertain_band: float

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: Path) -> DetectorInfo:
        def get(key: str) -> str:
            value = meta.get(f"chromastream.{key}")
            if value is None:
                raise DetectorModelError(
                    f"{path}: metadata lacks chromastream.{key} (not a detector export?)"
                )
            return value

        try:
            info = cls(
                version=get("version"),
                input_size=int(get("input_size")),
                temperature=float(get("temperature")),
                threshold=float(get("threshold")),
                uncertain_band=float(get("uncertain_band")),
            )
        except ValueError as exc:
            raise DetectorModelError(f"{path}: bad detector metadata: {exc}") from exc
        if info.temperature <= 0 or info.input_size < 8:
            raise DetectorModelError(f"{path}: bad detector metadata {info}")
        return info


class DeepfakeClassifier:
    """Calibrated P(fake) for eye-aligned face crops (``crop_face(image, face, info.input_size)``)."""

    info: DetectorInfo

    def __init__(self, model_path: Path | None = None, threads: int = 1) -> None:
        import onnxruntime as ort

        path = model_path if model_path is not None else default_model_path()
        if not path.is_file():
            raise DetectorModelError(f"detector model not found: {path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # one core: it shares the CPU with the colorizer
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise DetectorModelError(f"ONNX Runtime cannot load {path}: {exc}") from exc
        meta = self._session.get_modelmeta().custom_metadata_map
        self.info = DetectorInfo.from_metadata(dict(meta), path)
        self.model_path = path
        self._input = self._session.get_inputs()[0].name
        self._lock = threading.Lock()

    def _batch(self, crops: Sequence[np.ndarray]) -> npt.NDArray[np.float32]:
        s = self.info.input_size
        out = np.empty((len(crops), 3, s, s), np.float32)
        for i, crop in enumerate(crops):
            if crop.dtype != np.uint8:
                raise DetectorInputError(f"crop {i}: expected uint8, got {crop.dtype}")
            if crop.ndim == 2:
                crop = np.repeat(crop[:, :, None], 3, axis=2)
            if crop.ndim != 3 or crop.shape[2] != 3:
                raise DetectorInputError(f"crop {i}: expected [S,S,3] RGB or [S,S] grey, got {crop.shape}")
            if crop.shape[:2] != (s, s):
                interp = cv2.INTER_AREA if crop.shape[0] > s else cv2.INTER_LINEAR
                crop = cv2.resize(crop, (s, s), interpolation=interp)
            out[i] = crop.transpose(2, 0, 1) * np.float32(1.0 / 255.0)
        return out

    def logits(self, crops: Sequence[np.ndarray]) -> npt.NDArray[np.float64]:
        """Raw network logits (before temperature scaling), float64 ``[N]``."""
        if len(crops) == 0:
            return np.zeros(0, np.float64)
        batch = self._batch(crops)
        with self._lock:
            (logit,) = self._session.run(None, {self._input: batch})
        return np.asarray(logit, np.float64).reshape(len(crops))

    def probabilities(self, crops: Sequence[np.ndarray]) -> npt.NDArray[np.float64]:
        """Calibrated P(fake) per crop, float64 ``[N]``: ``sigmoid(logit / temperature)``."""
        z = self.logits(crops) / self.info.temperature
        return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)), np.float64)
