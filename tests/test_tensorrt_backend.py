"""TensorRT: the engine cache and the FP16 ONNX it builds from are tested everywhere; building and running
an engine needs TensorRT and a CUDA device: those tests are marked ``gpu`` and skip with the reason where
either is missing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from chromastream.models.runtime.base import BackendUnavailable, ModelInfo
from chromastream.models.runtime.engine_cache import EngineCache, EngineKey, ProfileShapes
from chromastream.models.runtime.onnxruntime_backend import OnnxRuntimeBackend
from chromastream.models.runtime.registry import default_model_path
from chromastream.models.runtime.tensorrt_backend import TensorRTBackend, tensorrt_available

KEY = EngineKey(
    onnx_sha256="ab" * 32,
    profile=ProfileShapes(),
    precision="fp16",
    gpu_name="NVIDIA H200",
    compute_capability=(9, 0),
    tensorrt_version="10.13.0",
)


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


needs_tensorrt = pytest.mark.skipif(
    not (tensorrt_available() and _has_cuda()),
    reason="TensorRT is not installed here (import tensorrt fails) or there is no CUDA device",
)


# ------------------------------------------------------------------------------------------- engine cache


@pytest.mark.parametrize(
    "change",
    [
        {"onnx_sha256": "cd" * 32},
        {"profile": ProfileShapes(max_batch=16)},
        {"profile": ProfileShapes(opt_hw=(256, 256))},
        {"precision": "fp32"},
        {"gpu_name": "NVIDIA L4"},
        {"compute_capability": (8, 9)},
        {"tensorrt_version": "10.14.1"},
    ],
)
def test_every_key_field_changes_the_engine_file(change: dict[str, object]) -> None:
    other = dataclasses.replace(KEY, **change)  # type: ignore[arg-type]
    assert other.digest() != KEY.digest()
    assert EngineCache(Path("/c")).engine_path(other) != EngineCache(Path("/c")).engine_path(KEY)


def test_cache_round_trip_and_description(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "engines")
    assert cache.load(KEY) is None
    path = cache.store(KEY, b"engine-bytes")
    assert cache.load(KEY) == b"engine-bytes" and path.parent == tmp_path / "engines"
    description = path.with_suffix(".json").read_text()
    assert '"gpu_name": "NVIDIA H200"' in description and KEY.digest() in description
    assert not list((tmp_path / "engines").glob("*.tmp"))  # written beside and renamed


def test_timing_cache_is_per_gpu_and_version(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    a = cache.timing_cache_path("NVIDIA H200", (9, 0), "10.13.0")
    assert a != cache.timing_cache_path("NVIDIA L4", (8, 9), "10.13.0")
    assert a != cache.timing_cache_path("NVIDIA H200", (9, 0), "10.14.1")
    assert cache.load_timing_cache(a) == b""
    cache.store_timing_cache(a, b"timings")
    assert cache.load_timing_cache(a) == b"timings"


def test_profile_shapes_follow_the_model() -> None:
    shapes = ProfileShapes(1, 8, 32, (64, 64), (256, 448), (512, 1024)).input_shapes(ModelInfo("v"))
    assert shapes["L"] == ((1, 1, 64, 64), (8, 1, 256, 448), (32, 1, 512, 1024))
    assert shapes["hints"][1] == (8, 3, 256, 448)
    assert shapes["state"] == ((1, 64, 4, 4), (8, 64, 16, 28), (32, 64, 32, 64))
    with pytest.raises(ValueError, match="min <= opt <= max"):
        ProfileShapes(min_batch=4, opt_batch=2)
    with pytest.raises(ValueError, match="multiple of 32"):
        ProfileShapes(opt_hw=(250, 448)).input_shapes(ModelInfo("v"))
    profile = ProfileShapes()
    assert profile.accepts(8, 256, 448) and not profile.accepts(64, 256, 448)


# ------------------------------------------------------------------------------------------- FP16 ONNX


def test_fp16_onnx_matches_fp32_on_onnxruntime(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx", reason="needs onnx (the train extra)")
    pytest.importorskip("onnxconverter_common", reason="needs onnxconverter-common (the train extra)")
    from chromastream.models.runtime.onnx_fp16 import convert_to_fp16, is_fp16, load_onnx
    from chromastream.models.runtime.onnx_to_torch import probe_inputs

    source = default_model_path()
    converted = convert_to_fp16(load_onnx(source))
    assert is_fp16(converted)
    elem = {i.name: i.type.tensor_type.elem_type for i in [*converted.graph.input, *converted.graph.output]}
    assert set(elem.values()) == {onnx.TensorProto.FLOAT}  # float32 I/O, the contract's types
    path = tmp_path / "fp16.onnx"
    onnx.save(converted, str(path))
    fp32, fp16 = OnnxRuntimeBackend(source, threads=1), OnnxRuntimeBackend(path, threads=1)
    assert fp16.info.version == fp32.info.version
    L, hints, state = probe_inputs(fp32.info, batch=2)
    (ab32, st32), (ab16, st16) = fp32.run(L, hints, state), fp16.run(L, hints, state)
    np.testing.assert_allclose(ab16, ab32, atol=1e-2)  # 1.1 Lab units
    assert float(np.abs(st16 - st32).mean()) < 2e-2


# ------------------------------------------------------------------------------------------- TensorRT


def test_without_tensorrt_the_error_names_the_extra() -> None:
    if tensorrt_available() and _has_cuda():
        pytest.skip("TensorRT and CUDA are present: nothing is unavailable")
    with pytest.raises(BackendUnavailable, match=r"chromastream\[tensorrt"):
        TensorRTBackend(default_model_path())


@pytest.mark.gpu
@needs_tensorrt
def test_engine_builds_caches_and_matches_onnxruntime(tmp_path: Path) -> None:
    profile = ProfileShapes(1, 2, 4, (64, 64), (64, 96), (128, 128))
    cache = EngineCache(tmp_path)
    backend = TensorRTBackend(default_model_path(), profile=profile, cache=cache)
    assert cache.engine_path(backend.key).is_file()
    from chromastream.models.runtime.onnx_to_torch import probe_inputs

    reference = OnnxRuntimeBackend(default_model_path())
    L, hints, state = probe_inputs(reference.info, batch=2)
    ab, _ = backend.run(L, hints, state)
    np.testing.assert_allclose(ab, reference.run(L, hints, state)[0], atol=1e-2)
    again = TensorRTBackend(default_model_path(), profile=profile, cache=cache)  # loads, no build
    np.testing.assert_allclose(again.run(L, hints, state)[0], ab, atol=1e-3)
