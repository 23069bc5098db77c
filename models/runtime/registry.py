"""Backend selection: by name, or ``auto`` for the best one available here.

``auto`` follows a short fixed ranking, tried in order until one can run (a missing library or device
raises :class:`BackendUnavailable` and the next is tried):

- with a CUDA device: ``tensorrt`` > ``torch-cuda`` > ``onnxruntime`` (CUDA provider). TensorRT's fused
  FP16 kernels beat torch's per-layer ones, and both beat ONNX Runtime's CUDA provider, which runs FP32.
- on the CPU: :data:`CPU_RANKING`, the order measured by ``python -m benchmarks.throughput`` on the
  development machines (``benchmarks/results/throughput_cpu.json``, batch 1 and 4 at 256x256 and at the
  1080p working size): ONNX Runtime first. torch eager is slower on every configuration measured and
  ``torch-compile`` costs minutes of compilation per shape on a small CPU, so neither is picked
  automatically; name them to use them. ``tests/test_registry.py`` checks the ranking against that file.

Which model file runs when none is named (``--model`` unset, no ``CHROMASTREAM_MODEL``) depends on where it
runs: ONNX Runtime on the CPU runs the INT8 copy (:data:`CPU_PRECISION`), every other backend the float
model (TensorRT builds its own FP16 engine from it, torch cannot read a quantized graph, ONNX Runtime's
CUDA provider gains nothing from INT8). A named model always runs as named.

Deciding costs nothing where no GPU can be: torch is imported (about 1.4 s and 200 MB) only when a cheap
probe finds an NVIDIA device (:func:`nvidia_device_visible`), so a CPU machine with torch installed
starts ONNX Runtime as fast as one without it.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import shutil
import sys
from importlib import resources
from pathlib import Path

from chromastream.models.runtime.base import Backend, BackendUnavailable

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "torch", "torch-compile", "torch-cuda", "tensorrt")
CUDA_RANKING = ("tensorrt", "torch-cuda", "onnxruntime")
CPU_RANKING = ("onnxruntime",)
MODEL_FILES = {"fp32": "colorizer.onnx", "int8": "colorizer-int8.onnx"}
DEFAULT_MODEL_NAME = MODEL_FILES["fp32"]
CPU_PRECISION = "int8"
"""The model ONNX Runtime runs on the CPU when none is named: the INT8 copy
(:mod:`chromastream.models.colorizer.quantize`), measured faster than the float model at serve's working
size with image quality within tolerance (``benchmarks/results/int8_vs_fp32.json``, written by
``python -m benchmarks.precision``; ``tests/test_registry.py`` checks the choice against that file)."""


def shipped_model_path(precision: str = "fp32") -> Path:
    """Where the package keeps the colorizer of ``precision`` (``fp32`` or ``int8``)."""
    return Path(str(resources.files("chromastream.models") / "weights" / MODEL_FILES[precision]))


def default_model_path() -> Path:
    """The shipped float model, overridable with ``CHROMASTREAM_MODEL``."""
    override = os.environ.get("CHROMASTREAM_MODEL")
    if override:
        return Path(override)
    return shipped_model_path("fp32")


def unnamed_model_path(backend: str, cuda: bool) -> Path:
    """The model ``backend`` runs when none is named (module docstring): ``CHROMASTREAM_MODEL`` where set,
    else the INT8 copy for ONNX Runtime on the CPU (where it is shipped), else the float model."""
    if backend == "onnxruntime" and not cuda and not os.environ.get("CHROMASTREAM_MODEL"):
        path = shipped_model_path(CPU_PRECISION)
        if path.is_file():
            return path
    return default_model_path()


def _ort_has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def nvidia_device_visible() -> bool:
    """Whether an NVIDIA GPU can be here at all, asked without loading any CUDA library: the driver's
    device nodes on Linux (``/dev/nvidia0``..., ``/dev/dxg`` under WSL2), ``nvidia-smi`` elsewhere.

    A False here is final; a True only means the real check (torch or ONNX Runtime) is worth its cost."""
    if sys.platform.startswith("linux"):
        return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/dxg")
    return shutil.which("nvidia-smi") is not None


def cuda_device_present() -> bool:
    """A CUDA device usable from torch, or ONNX Runtime's CUDA provider when torch is not installed.
    Neither is loaded when no NVIDIA device is visible (:func:`nvidia_device_visible`)."""
    if not nvidia_device_visible():
        return False
    if importlib.util.find_spec("torch") is not None:
        from chromastream.models.runtime.torch_backend import cuda_available

        return cuda_available()
    return _ort_has_cuda()


def auto_ranking() -> tuple[str, ...]:
    """The names ``auto`` tries here, best first."""
    return CUDA_RANKING if cuda_device_present() else CPU_RANKING


def _create_named(name: str, model_path: Path | None) -> Backend:
    if name == "onnxruntime":
        from chromastream.models.runtime.onnxruntime_backend import OnnxRuntimeBackend

        use_cuda = _ort_has_cuda() and cuda_device_present()
        path = model_path or unnamed_model_path(name, use_cuda)
        return OnnxRuntimeBackend(path, device="cuda" if use_cuda else "cpu")
    path = model_path or default_model_path()
    if name in ("torch", "torch-compile"):
        from chromastream.models.runtime.torch_backend import TorchBackend

        return TorchBackend(path, compile=name == "torch-compile")
    if name == "torch-cuda":
        from chromastream.models.runtime.torch_backend import TorchCudaBackend

        return TorchCudaBackend(path)
    if name == "tensorrt":
        from chromastream.models.runtime.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(path)
    raise BackendUnavailable(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")


def create_backend(name: str = "auto", model_path: Path | None = None) -> Backend:
    """Create a backend. ``auto`` picks the fastest available for this machine, and without
    ``model_path`` the backend runs its model of choice (module docstring)."""
    if name != "auto":
        return _create_named(name, model_path)
    reasons = []
    for candidate in auto_ranking():
        try:
            backend = _create_named(candidate, model_path)
        except BackendUnavailable as exc:
            reasons.append(f"{candidate}: {exc}")
            continue
        if reasons:
            logger.info("auto backend: %s (skipped %s)", backend.name, "; ".join(reasons))
        return backend
    raise BackendUnavailable("no backend can run here: " + "; ".join(reasons))
