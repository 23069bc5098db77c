"""Runtime: backend selection and loading, the shipped model's contract, and the per-stream session.

The shipped network may be untrained, so nothing here judges colours: only shapes, types, errors, and
that state and hints reach the network the way the contract says.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from chromastream.models.colorizer import spec
from chromastream.models.colorizer.hints import Hint, rasterize
from chromastream.models.runtime.base import (
    F32,
    Backend,
    BackendError,
    BackendUnavailable,
    ModelFormatError,
    ModelInfo,
)
from chromastream.models.runtime.onnxruntime_backend import OnnxRuntimeBackend
from chromastream.models.runtime.registry import BACKENDS, create_backend, default_model_path
from chromastream.models.runtime.session import MAX_SIZE, MIN_SIZE, ColorizerSession, working_shape


@pytest.fixture(scope="module")
def backend() -> Backend:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("CHROMASTREAM_MODEL", raising=False)
        return create_backend("auto")


class SpyBackend:
    """Passes calls to a real backend and keeps copies of what went in and came out."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.info = inner.info
        self.calls: list[dict[str, F32]] = []

    def run(self, L: F32, hints: F32, state: F32) -> tuple[F32, F32]:
        ab, state_out = self.inner.run(L, hints, state)
        self.calls.append(
            {
                "L": L.copy(),
                "hints": hints,
                "state": state.copy(),
                "ab": ab.copy(),
                "state_out": state_out.copy(),
            }
        )
        return ab, state_out


def _frame(seed: int, height: int = 96, width: int = 128) -> F32:
    """A smooth synthetic lightness picture (gradients and a disc), not noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
    disc = ((xx - cx) ** 2 + (yy - cy) ** 2 < (0.2 * min(height, width)) ** 2) * 40.0
    out: F32 = (20.0 + 30.0 * xx / width + 10.0 * yy / height + disc).astype(np.float32)
    return out


def _inputs(batch: int, height: int, width: int, info: ModelInfo) -> tuple[F32, F32, F32]:
    rng = np.random.default_rng(batch * 1000 + height + width)
    L = rng.uniform(0, 1, (batch, 1, height, width)).astype(np.float32)
    hints = np.zeros((batch, 3, height, width), dtype=np.float32)
    state = np.zeros(info.state_shape(batch, height, width), dtype=np.float32)
    return L, hints, state


# ---------------------------------------------------------------- backend and model


def test_auto_loads_the_shipped_model(backend: Backend) -> None:
    assert isinstance(backend, OnnxRuntimeBackend)
    assert backend.name == "onnxruntime"
    assert default_model_path().is_file()
    assert default_model_path().name == "colorizer.onnx"


def test_model_path_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CHROMASTREAM_MODEL", str(tmp_path / "other.onnx"))
    assert default_model_path() == tmp_path / "other.onnx"
    with pytest.raises(ModelFormatError, match="not found"):
        create_backend("auto")


def test_metadata(backend: Backend) -> None:
    """The model describes itself, and what it says matches the contract the session is built on."""
    info = backend.info
    assert isinstance(info.version, str) and info.version and info.version != "unknown"
    assert info.l_scale == spec.L_SCALE and info.ab_scale == spec.AB_SCALE
    assert info.size_multiple == spec.SIZE_MULTIPLE
    assert info.state_channels == spec.STATE_CHANNELS and info.state_stride == spec.STATE_STRIDE


def test_model_info_from_metadata() -> None:
    assert ModelInfo.from_metadata({}) == ModelInfo(version="unknown")
    info = ModelInfo.from_metadata(
        {"chromastream.version": "v7", "chromastream.state_channels": "32", "chromastream.ab_scale": "100"}
    )
    assert (info.version, info.state_channels, info.ab_scale, info.state_stride) == ("v7", 32, 100.0, 16)
    assert info.state_shape(3, 256, 352) == (3, 32, 16, 22)


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 64, 64), (2, 64, 96), (2, 256, 352)])
def test_output_shapes(backend: Backend, batch: int, height: int, width: int) -> None:
    L, hints, state = _inputs(batch, height, width, backend.info)
    ab, state_out = backend.run(L, hints, state)
    assert ab.shape == (batch, 2, height, width) and ab.dtype == np.float32
    assert state_out.shape == backend.info.state_shape(batch, height, width) and state_out.dtype == np.float32
    assert np.isfinite(ab).all() and np.isfinite(state_out).all()


def test_batch_items_are_independent(backend: Backend) -> None:
    """Frames of different streams batched together get what each would get alone."""
    L, hints, state = _inputs(2, 64, 96, backend.info)
    ab, state_out = backend.run(L, hints, state)
    ab1, state1 = backend.run(L[1:], hints[1:], state[1:])
    np.testing.assert_allclose(ab[1:], ab1, atol=1e-4)
    np.testing.assert_allclose(state_out[1:], state1, atol=1e-4)


def test_state_input_reaches_the_network(backend: Backend) -> None:
    L, hints, state = _inputs(1, 64, 64, backend.info)
    ab0, _ = backend.run(L, hints, state)
    ab0_again, _ = backend.run(L, hints, state)
    np.testing.assert_array_equal(ab0, ab0_again)
    other = np.random.default_rng(5).normal(0, 1, state.shape).astype(np.float32)
    ab1, _ = backend.run(L, hints, other)
    assert not np.array_equal(ab0, ab1)


def test_missing_model_raises(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="not found"):
        create_backend("onnxruntime", tmp_path / "nope.onnx")


def test_non_onnx_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "colorizer.onnx"
    path.write_bytes(b"this is not a protobuf\x00\xff" * 10)
    with pytest.raises(ModelFormatError, match="cannot load"):
        create_backend("auto", path)


def test_onnx_model_that_is_not_a_colorizer_raises(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "identity.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelFormatError, match="is not a colorizer"):
        OnnxRuntimeBackend(path)


def test_unknown_backend_names_the_choices() -> None:
    with pytest.raises(
        BackendUnavailable, match="unknown backend 'tensorflow'; choose one of: auto, onnxruntime"
    ):
        create_backend("tensorflow")
    assert "auto" in BACKENDS
    assert issubclass(BackendUnavailable, BackendError) and issubclass(ModelFormatError, BackendError)


# ---------------------------------------------------------------- session


@pytest.mark.parametrize(
    ("height", "width", "size", "expected"),
    [
        (480, 640, 256, (256, 352)),  # 341.3 -> 352
        (640, 480, 256, (352, 256)),
        (1080, 1920, 256, (256, 448)),  # 455.1 -> 448
        (720, 1280, 384, (384, 672)),  # 682.7 -> 672
        (256, 256, 256, (256, 256)),
        (100, 100, 256, (256, 256)),  # upscaling is allowed
        (600, 1000, 100, (96, 160)),  # the short side itself snaps to the multiple
        (1000, 40, 64, (1600, 64)),
    ],
)
def test_working_shape(height: int, width: int, size: int, expected: tuple[int, int]) -> None:
    wh, ww = working_shape(height, width, size, 32)
    assert (wh, ww) == expected
    assert wh % 32 == 0 and ww % 32 == 0
    # Aspect kept to within the rounding of one side.
    assert abs(ww / wh - width / height) * wh <= 32


def test_working_shape_never_collapses() -> None:
    assert working_shape(10, 1000, 64, 32)[0] >= 32


@pytest.mark.parametrize("size", [MIN_SIZE - 1, 0, -256, MAX_SIZE + 1])
def test_invalid_size(backend: Backend, size: int) -> None:
    with pytest.raises(ValueError, match="working size must be in"):
        ColorizerSession(backend, size=size)


def test_predict_ab_shape_and_units(backend: Backend) -> None:
    spy = SpyBackend(backend)
    session = ColorizerSession(spy, size=64)
    ab = session.predict_ab(_frame(0, 96, 128))
    assert ab.shape == (2, 64, 96) and ab.dtype == np.float32 and np.isfinite(ab).all()
    call = spy.calls[0]
    assert call["L"].shape == (1, 1, 64, 96) and call["L"].dtype == np.float32
    assert call["L"].min() >= 0.0 and call["L"].max() <= 1.0, "L goes in divided by l_scale"
    np.testing.assert_allclose(ab, call["ab"][0] * backend.info.ab_scale, rtol=1e-6)
    assert call["hints"].shape == (1, 3, 64, 96) and not call["hints"].any()


def test_memory_carries_state_between_calls(backend: Backend) -> None:
    spy = SpyBackend(backend)
    session = ColorizerSession(spy, size=64, memory=True)
    frame = _frame(1)
    first = session.predict_ab(frame)
    second = session.predict_ab(frame)
    assert not spy.calls[0]["state"].any(), "a new session starts from a zero state"
    np.testing.assert_array_equal(spy.calls[1]["state"], spy.calls[0]["state_out"])
    assert spy.calls[1]["state"].shape == backend.info.state_shape(1, 64, 96)
    assert not np.array_equal(first, second), "the remembered state changes the next prediction"

    session.reset()
    third = session.predict_ab(frame)
    assert not spy.calls[2]["state"].any()
    np.testing.assert_array_equal(third, first)


def test_memory_off_is_stateless(backend: Backend) -> None:
    spy = SpyBackend(backend)
    session = ColorizerSession(spy, size=64, memory=False)
    frame = _frame(2)
    outs = [session.predict_ab(frame) for _ in range(3)]
    assert all(not c["state"].any() for c in spy.calls)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


def test_resolution_change_restarts_the_state(backend: Backend) -> None:
    """A camera switching resolution must not feed the old-shaped state to the network."""
    spy = SpyBackend(backend)
    session = ColorizerSession(spy, size=64)
    session.predict_ab(_frame(3, 96, 128))
    session.predict_ab(_frame(3, 128, 96))
    assert spy.calls[1]["state"].shape == backend.info.state_shape(1, 96, 64)
    assert not spy.calls[1]["state"].any()


def test_hints_reach_the_network_and_the_cache_follows_them(backend: Backend) -> None:
    spy = SpyBackend(backend)
    session = ColorizerSession(spy, size=64, memory=False)
    frame = _frame(4)
    plain = session.predict_ab(frame)
    session.predict_ab(frame)
    assert spy.calls[0]["hints"] is spy.calls[1]["hints"], "unchanged hints are rasterized once"

    red = Hint(x=0.5, y=0.5, a=70.0, b=50.0, radius=0.2)
    session.set_hints([red])
    hinted = session.predict_ab(frame)
    np.testing.assert_array_equal(spy.calls[2]["hints"], rasterize([red], 64, 96)[None])
    assert spy.calls[2]["hints"][0, 2].any()
    assert not np.array_equal(plain, hinted), "the hint input is used by the network"

    blue = Hint(x=0.1, y=0.9, a=20.0, b=-60.0, radius=0.1)
    session.set_hints([red, blue])
    session.predict_ab(frame)
    np.testing.assert_array_equal(spy.calls[3]["hints"], rasterize([red, blue], 64, 96)[None])

    session.predict_ab(_frame(4, 128, 96))  # new working size: re-rasterized at that size
    np.testing.assert_array_equal(spy.calls[4]["hints"], rasterize([red, blue], 96, 64)[None])

    session.set_hints([])
    session.predict_ab(frame)
    assert not spy.calls[5]["hints"].any()
