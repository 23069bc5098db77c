"""TensorRT FP16 backend: a strongly typed engine built from the FP16 ONNX, cached on disk, run on torch's
CUDA memory and streams.

Build. TensorRT 10 deprecates weakly typed precision (``BuilderFlag.FP16`` lets the builder pick layer
precisions); the current way is a strongly typed network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``,
always on in TensorRT 11) whose types come from the ONNX file. So the engine is built from the FP16 copy
of the model (:mod:`chromastream.models.runtime.onnx_fp16`, float16 inside, float32 inputs and outputs), with
one optimization profile covering the batch sizes and working resolutions of the config
(:class:`~chromastream.models.runtime.engine_cache.ProfileShapes`) and a timing cache on disk. Engines are
cached by ONNX hash, profile, precision, GPU and TensorRT version
(:mod:`chromastream.models.runtime.engine_cache`): the first start on a machine builds (minutes), later starts
load.

Run. There is no pycuda and no cuda-python here: torch owns the CUDA context, the device memory and the
streams. Inputs are copied into torch CUDA tensors, outputs are torch CUDA tensors allocated for the
shapes the context reports, and TensorRT only receives their addresses (``set_tensor_address(name,
tensor.data_ptr())``) and the handle of this backend's torch stream (``execute_async_v3``). One allocator,
one context, and the tensors live exactly as long as torch says.

Where it ran: nowhere yet. TensorRT cannot be installed on the project's development machines (no GPU),
so this module is written against the documented TensorRT 10 Python API (``Builder.create_network``,
``OnnxParser``, ``IBuilderConfig.add_optimization_profile``, ``create_timing_cache``/``set_timing_cache``,
``build_serialized_network``, ``IExecutionContext.set_input_shape``/``set_tensor_address``/
``execute_async_v3``) and its tests skip where ``import tensorrt`` fails. The engine cache it relies on is
tested everywhere.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from chromastream.models.runtime.base import (
    F32,
    BackendError,
    BackendUnavailable,
    ModelFormatError,
    ModelInfo,
)
from chromastream.models.runtime.engine_cache import EngineCache, EngineKey, ProfileShapes, file_sha256

logger = logging.getLogger(__name__)

TENSORRT_EXTRA = "pip install 'chromastream[tensorrt,gpu]' on a machine with an NVIDIA GPU"
PRECISION = "fp16"
WORKSPACE_BYTES = 4 << 30


class EngineBuildError(BackendError):
    """TensorRT could not parse the model or build an engine; the message carries TensorRT's reasons."""


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(f"TensorRT is not installed: {TENSORRT_EXTRA}") from exc
    return trt


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
    except BackendUnavailable:
        return False
    return True


def _gpu(torch: Any) -> tuple[str, tuple[int, int]]:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return str(props.name), (int(props.major), int(props.minor))


def fp16_model_bytes(model_path: Path) -> bytes:
    """The FP16 ONNX to build from: the file itself when it is FP16 already, else a converted copy."""
    from chromastream.models.runtime.onnx_fp16 import convert_to_fp16, is_fp16, load_onnx

    proto = load_onnx(model_path)
    if not is_fp16(proto):
        proto = convert_to_fp16(proto)
    data: bytes = proto.SerializeToString()
    return data


def build_engine(
    trt: Any, onnx_bytes: bytes, info: ModelInfo, profile: ProfileShapes, timing_cache: bytes
) -> tuple[bytes, bytes]:
    """A serialized engine for ``onnx_bytes`` and the updated timing cache."""
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT cannot parse the model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    cache = config.create_timing_cache(timing_cache)
    config.set_timing_cache(cache, ignore_mismatch=False)
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.input_shapes(info).items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError("TensorRT could not build an engine (see its log above)")
    return bytes(serialized), bytes(config.get_timing_cache().serialize())


class TensorRTBackend:
    """Runs the cached (or freshly built) FP16 engine on torch CUDA tensors."""

    def __init__(
        self, model_path: Path, profile: ProfileShapes | None = None, cache: EngineCache | None = None
    ):
        trt = import_tensorrt()
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailable(
                f"the TensorRT backend runs on torch's CUDA memory: {TENSORRT_EXTRA}"
            ) from exc
        if not torch.cuda.is_available():
            raise BackendUnavailable(f"TensorRT needs a CUDA device: {TENSORRT_EXTRA}")
        if not model_path.is_file():
            raise ModelFormatError(f"model file not found: {model_path}")
        from chromastream.models.runtime.onnx_fp16 import load_onnx

        self.info = ModelInfo.from_metadata({p.key: p.value for p in load_onnx(model_path).metadata_props})
        self.name = "tensorrt"
        self.profile = profile or ProfileShapes()
        self.cache = cache or EngineCache()
        self._trt, self._torch = trt, torch
        gpu_name, capability = _gpu(torch)
        self.key = EngineKey(
            onnx_sha256=file_sha256(model_path),
            profile=self.profile,
            precision=PRECISION,
            gpu_name=gpu_name,
            compute_capability=capability,
            tensorrt_version=str(trt.__version__),
        )
        engine_bytes = self.cache.load(self.key) or self._build(model_path)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(engine_bytes)
        if self._engine is None:
            raise EngineBuildError(f"cannot load the cached engine {self.cache.engine_path(self.key)}")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        if set(self._inputs) != {"L", "hints", "state"} or set(self._outputs) != {"ab", "state_out"}:
            raise ModelFormatError(f"the engine's tensors {names} do not follow the colorizer contract")
        self.device = torch.device("cuda", torch.cuda.current_device())
        self._stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]  # this backend's inference stream
        self._lock = threading.Lock()  # one execution context: one call at a time

    def _build(self, model_path: Path) -> bytes:
        started = time.monotonic()
        logger.info(
            "building a TensorRT engine for %s (once per model, GPU and TensorRT version)", model_path
        )
        timing_path = self.cache.timing_cache_path(
            self.key.gpu_name, self.key.compute_capability, self.key.tensorrt_version
        )
        engine, timing = build_engine(
            self._trt,
            fp16_model_bytes(model_path),
            self.info,
            self.profile,
            self.cache.load_timing_cache(timing_path),
        )
        self.cache.store_timing_cache(timing_path, timing)
        path = self.cache.store(self.key, engine)
        logger.info("built %s in %.0f s", path, time.monotonic() - started)
        return engine

    def forward(self, L: Any, hints: Any, state: Any) -> tuple[Any, Any]:
        """float32 CUDA tensors (contiguous) -> float32 CUDA ``(ab, state_out)``, enqueued on this
        backend's stream; the caller synchronizes (``.cpu()`` does) before reading them."""
        torch = self._torch
        batch, _, height, width = L.shape
        if not self.profile.accepts(batch, height, width):
            raise BackendUnavailable(
                f"batch {batch} at {height}x{width} is outside the engine's profile {self.profile}: "
                "widen the profile in the config"
            )
        with self._lock, torch.cuda.stream(self._stream):
            for name, tensor in (("L", L), ("hints", hints), ("state", state)):
                self._context.set_input_shape(name, tuple(tensor.shape))
                self._context.set_tensor_address(name, tensor.data_ptr())
            outputs = {}
            for name in self._outputs:
                shape = tuple(self._context.get_tensor_shape(name))
                outputs[name] = torch.empty(shape, dtype=torch.float32, device=self.device)
                self._context.set_tensor_address(name, outputs[name].data_ptr())
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise EngineBuildError("TensorRT failed to enqueue the inference")
        return outputs["ab"], outputs["state_out"]

    def run(self, L: F32, hints: F32, state: F32) -> tuple[F32, F32]:
        torch = self._torch
        with torch.cuda.stream(self._stream):
            inputs = [
                torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
                for x in (L, hints, state)
            ]
            ab, state_out = self.forward(*inputs)
            # .cpu() on this stream waits for the engine; the inputs stay alive until then.
            return ab.cpu().numpy(), state_out.cpu().numpy()
