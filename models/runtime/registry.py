"""Backend selection: by name, or ``auto`` for the best one available here."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from models.runtime.base import Backend, BackendUnavailable

BACKENDS = ("auto", "onnxruntime")
DEFAULT_MODEL_NAME = "colorizer.onnx"


def default_model_path() -> Path:
    """The shipped model, overridable with ``CHROMASTREAM_MODEL``."""
    override = os.environ.get("CHROMASTREAM_MODEL")
    if override:
        return Path(override)
    return Path(str(resources.files("models") / "weights" / DEFAULT_MODEL_NAME))


def create_backend(name: str = "auto", model_path: Path | None = None) -> Backend:
    """Create a backend. ``auto`` picks the fastest available for this machine (ONNX Runtime on CPU)."""
    path = model_path or default_model_path()
    if name in ("auto", "onnxruntime"):
        from models.runtime.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path)
    raise BackendUnavailable(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
