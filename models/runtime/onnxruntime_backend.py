"""ONNX Runtime backend (CPU; CUDA when onnxruntime-gpu is installed and a GPU is present).

Its worker threads sleep between operators instead of spinning (ONNX Runtime spins by default). The
colorizer shares the CPU with decoding, pre/post-processing and encoding; threads that spin while
waiting burn exactly the cycles those stages need. Measured on 2 cores with other work running: a
352x256 frame took a median 97 ms and 67 ms of CPU without spinning against 163 ms and 80 ms with it.
``spin=True`` restores the default for a machine that does nothing else.

The INT8 colorizer (:mod:`chromastream.models.colorizer.quantize`) loads here like the float one: its
QDQ graph keeps float32 inputs and outputs, and the full graph optimization fuses each
DequantizeLinear -> operator -> QuantizeLinear group into an integer kernel when the session is created.

ONNX Runtime's own logger prints straight to the terminal, in colour; at its default level an FP16 model
makes it warn on every start about nodes its optimizer cannot fold, which says nothing about the user's
input. Sessions therefore log errors only, unless this package logs at DEBUG (``chromastream --verbose``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from chromastream.models.runtime.base import F32, BackendUnavailable, ModelFormatError, ModelInfo

_REQUIRED_INPUTS = {"L", "hints", "state"}
#: ONNX Runtime's log severities (0 verbose ... 4 fatal).
ORT_WARNING = 2
ORT_ERROR = 3

logger = logging.getLogger(__name__)


def ort_log_severity() -> int:
    """Severity for new ONNX Runtime sessions: warnings at ``--verbose`` (DEBUG), otherwise errors only."""
    return ORT_WARNING if logger.isEnabledFor(logging.DEBUG) else ORT_ERROR


def _usable_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count), where the OS says."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class OnnxRuntimeBackend:
    def __init__(self, model_path: Path, device: str = "cpu", threads: int | None = None, spin: bool = False):
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - onnxruntime is a core dependency
            raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime") from exc
        if not model_path.is_file():
            raise ModelFormatError(f"model file not found: {model_path}")
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable("onnxruntime has no CUDA provider here: pip install onnxruntime-gpu")
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = ort_log_severity()
        options.intra_op_num_threads = threads or _usable_cores()
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spin else "0")
        try:
            self._session = ort.InferenceSession(str(model_path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelFormatError(f"cannot load {model_path}: {exc}") from exc
        names = {i.name for i in self._session.get_inputs()}
        if not _REQUIRED_INPUTS.issubset(names):
            raise ModelFormatError(f"{model_path} is not a colorizer: inputs {sorted(names)}")
        meta = self._session.get_modelmeta().custom_metadata_map
        self.info = ModelInfo.from_metadata(dict(meta))
        self.name = "onnxruntime-cuda" if device == "cuda" else "onnxruntime"

    def run(self, L: F32, hints: F32, state: F32) -> tuple[F32, F32]:
        ab, state_out = self._session.run(
            ["ab", "state_out"],
            {
                "L": np.ascontiguousarray(L, dtype=np.float32),
                "hints": np.ascontiguousarray(hints, dtype=np.float32),
                "state": np.ascontiguousarray(state, dtype=np.float32),
            },
        )
        return ab, state_out
