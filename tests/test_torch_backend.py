"""The torch backends run the ONNX file's weights and agree with ONNX Runtime.

The model under test is exported here from the current network code with seeded random weights (every
branch non-zero, the hint branch included), so the tests hold whatever the shipped file's training state.
CUDA tests are marked ``gpu`` and skip without a CUDA device; torch.compile is slow to compile on a small
CPU (minutes), so its test runs only with CHROMASTREAM_SLOW_TESTS=1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch backends need torch (the train or gpu extra)")
onnx = pytest.importorskip("onnx", reason="reading ONNX initializers needs onnx (the train extra)")

from chromastream.models.colorizer.export import export_onnx  # noqa: E402
from chromastream.models.colorizer.network import Colorizer  # noqa: E402
from chromastream.models.runtime.base import BackendUnavailable, ModelFormatError  # noqa: E402
from chromastream.models.runtime.onnx_to_torch import (  # noqa: E402
    load_colorizer,
    map_initializers,
    probe_inputs,
    verify_against_onnxruntime,
)
from chromastream.models.runtime.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from chromastream.models.runtime.torch_backend import TorchBackend, TorchCudaBackend, bucket_for  # noqa: E402

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(7)
    net = Colorizer()
    with torch.no_grad():
        for p in net.parameters():
            if not p.abs().sum():  # zero-initialized branches get weights too, so they are tested
                p.normal_(0.0, 0.05)
    path = tmp_path_factory.mktemp("model") / "colorizer.onnx"
    export_onnx(net, path, "test-7", size=64)
    return path


@pytest.fixture(scope="module")
def reference(model_path: Path) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(model_path)


def _inputs(batch: int, height: int, width: int, seed: int = 1) -> tuple[np.ndarray, ...]:
    from chromastream.models.runtime.base import ModelInfo

    rng = np.random.default_rng(seed)
    L = rng.uniform(0, 1, (batch, 1, height, width)).astype(np.float32)
    hints = np.zeros((batch, 3, height, width), dtype=np.float32)
    hints[:, :2, 8:12, 8:12] = rng.uniform(-0.4, 0.4, (batch, 2, 1, 1))
    hints[:, 2, 8:12, 8:12] = 1.0
    state = rng.normal(0, 0.5, ModelInfo("t").state_shape(batch, height, width)).astype(np.float32)
    return L, hints, state


def test_eager_matches_onnxruntime(model_path: Path, reference: OnnxRuntimeBackend) -> None:
    backend = TorchBackend(model_path)
    assert backend.name == "torch" and backend.info == reference.info
    L, hints, state = _inputs(2, 64, 96)
    want_ab, want_state = reference.run(L, hints, state)
    ab, state_out = backend.run(L, hints, state)
    assert ab.dtype == np.float32 and ab.shape == want_ab.shape and state_out.shape == want_state.shape
    np.testing.assert_allclose(ab, want_ab, atol=1e-5)
    np.testing.assert_allclose(state_out, want_state, atol=1e-3)


def test_names_lost_are_mapped_by_shape_and_graph_order(model_path: Path) -> None:
    """An export whose initializers were renamed (as constant folding does) loads the same weights."""
    proto = onnx.load(str(model_path))
    renames = {init.name: f"onnx::Anon_{i}" for i, init in enumerate(reversed(proto.graph.initializer))}
    for init in proto.graph.initializer:
        init.name = renames[init.name]
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)
    expected = {k: tuple(v.shape) for k, v in Colorizer().state_dict().items()}
    by_order = map_initializers(proto, expected)
    by_name = map_initializers(onnx.load(str(model_path)), expected)
    assert by_order.keys() == by_name.keys()
    for key in expected:
        np.testing.assert_array_equal(by_order[key], by_name[key], err_msg=key)


def test_a_different_network_is_refused(model_path: Path) -> None:
    proto = onnx.load(str(model_path))
    expected = {k: tuple(v.shape) for k, v in Colorizer().state_dict().items()}
    with pytest.raises(ModelFormatError, match="no initializer fits"):
        map_initializers(proto, {**expected, "extra.weight": (5, 7, 3, 3)})
    del expected["head.weight"]
    with pytest.raises(ModelFormatError, match="weights the network does not know"):
        map_initializers(proto, expected)


def test_probe_catches_a_network_that_computes_otherwise(model_path: Path) -> None:
    model, info = load_colorizer(model_path)
    assert verify_against_onnxruntime(model, model_path, info) < 1e-3
    with torch.no_grad():
        model.dec2[0].bias.add_(0.5)  # same names and shapes, different computation
    with pytest.raises(ModelFormatError, match="computes something else"):
        verify_against_onnxruntime(model, model_path, info)


def test_fp16_weights_stay_within_fp16_tolerance(model_path: Path, reference: OnnxRuntimeBackend) -> None:
    """The arithmetic torch-cuda runs (FP16 weights and activations), checked on the CPU."""
    model, info = load_colorizer(model_path)
    L, hints, state = probe_inputs(info)
    with torch.inference_mode():
        ab16, _ = model.half()(*(torch.from_numpy(x).half() for x in (L, hints, state)))
    want_ab, _ = reference.run(L, hints, state)
    np.testing.assert_allclose(ab16.float().numpy(), want_ab, atol=1e-2)


def test_missing_torch_names_the_extra(monkeypatch: pytest.MonkeyPatch, model_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(BackendUnavailable, match=r"chromastream\[train\]"):
        TorchBackend(model_path)


def test_buckets() -> None:
    assert [bucket_for(n) for n in (1, 2, 3, 5, 8, 9, 32)] == [1, 2, 4, 8, 8, 16, 32]
    assert bucket_for(33) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where there is no CUDA")
def test_torch_cuda_without_cuda_is_unavailable(model_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="CUDA"):
        TorchCudaBackend(model_path)


@pytest.mark.skipif(
    os.environ.get("CHROMASTREAM_SLOW_TESTS") != "1",
    reason="torch.compile takes minutes on a 2-core CPU; set CHROMASTREAM_SLOW_TESTS=1",
)
def test_compiled_matches_onnxruntime(model_path: Path, reference: OnnxRuntimeBackend) -> None:
    backend = TorchBackend(model_path, compile=True)
    L, hints, state = _inputs(1, 64, 64)
    np.testing.assert_allclose(backend.run(L, hints, state)[0], reference.run(L, hints, state)[0], atol=1e-4)


@pytest.mark.gpu
@needs_cuda
def test_cuda_fp16_matches_onnxruntime(model_path: Path, reference: OnnxRuntimeBackend) -> None:
    backend = TorchCudaBackend(model_path)
    L, hints, state = _inputs(3, 64, 96)
    ab, state_out = backend.run(L, hints, state)
    want_ab, want_state = reference.run(L, hints, state)
    np.testing.assert_allclose(ab, want_ab, atol=1e-2)
    assert float(np.abs(state_out - want_state).mean()) < 2e-2
    assert backend.captured == [(4, 64, 96)]  # batch 3 padded to the bucket of 4


@pytest.mark.gpu
@needs_cuda
def test_cuda_graph_replay_equals_eager_rows(model_path: Path) -> None:
    """Padded rows do not leak into real ones, and replays give what a fresh call gives."""
    graphs = TorchCudaBackend(model_path)
    eager = TorchCudaBackend(model_path, cuda_graphs=False, verify=False)
    L, hints, state = _inputs(3, 64, 64)
    first = graphs.run(L, hints, state)
    again = graphs.run(L, hints, state)
    alone = graphs.run(L[1:2], hints[1:2], state[1:2])
    plain = eager.run(L, hints, state)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_allclose(first[0][1:2], alone[0], atol=2e-3)
    np.testing.assert_allclose(first[0], plain[0], atol=2e-3)
    assert graphs.captured == [(4, 64, 64), (1, 64, 64)]
