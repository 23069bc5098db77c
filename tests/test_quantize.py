"""The INT8 colorizer: what the quantizer writes, what ships, and how it is chosen and compared.

A small calibration (a few training frames) runs in seconds; its file must load through the ONNX Runtime
backend like the float one and colour a real picture close to the float model. The shipped INT8 file must
keep the contract (inputs, outputs, metadata) and come from the shipped float file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from chromastream.kernels.lab_numpy import rgb_to_lab
from chromastream.models.colorizer import spec
from chromastream.models.runtime import registry
from chromastream.models.runtime.base import ModelInfo
from chromastream.models.runtime.engine_cache import file_sha256
from chromastream.models.runtime.onnxruntime_backend import OnnxRuntimeBackend
from chromastream.models.shared_data import shared_root

onnx = pytest.importorskip("onnx", reason="quantization needs onnx (train extra)")

from chromastream.models.colorizer import quantize  # noqa: E402

SHARED = shared_root()
needs_shared = pytest.mark.skipif(
    not (SHARED / "data").is_dir() and os.environ.get("CI") != "true",
    reason=f"shared data not found at {SHARED}",
)
FLOAT = registry.shipped_model_path("fp32")
INT8 = registry.shipped_model_path("int8")
shipped = pytest.mark.skipif(not INT8.is_file(), reason="no INT8 colorizer shipped")
RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "int8_vs_fp32.json"
SMOKE_FRAMES = 4
SMOKE_TOLERANCE_AB = 2.5
"""Mean |Δab| (Lab units) allowed between a 4-frame INT8 calibration and the float model on one picture at
192x256: measured 0.85 (the shipped 32-frame file: 0.63); a ΔE of 2.3 is a just-noticeable difference."""


def _picture_inputs(height: int = 192, width: int = 256) -> dict[str, np.ndarray]:
    """A real photograph (set5 butterfly) at serve's working shape as network inputs."""
    path = SHARED / "data" / "images" / "eval" / "set5" / "butterfly.png"
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None
    rgb = cv2.cvtColor(cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    L = rgb_to_lab(rgb.astype(np.float32) / 255.0)[..., 0]
    return {
        "L": (L / spec.L_SCALE).astype(np.float32)[None, None],
        "hints": np.zeros((1, 3, height, width), np.float32),
        "state": np.zeros(ModelInfo("x").state_shape(1, height, width), np.float32),
    }


def _run(backend: OnnxRuntimeBackend, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return backend.run(inputs["L"], inputs["hints"], inputs["state"])


# ------------------------------------------------------------------------------------------- the graph pass


def _pad_conv_model(pad_value: float) -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    pads = numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64), "pads")
    value = numpy_helper.from_array(np.array(pad_value, np.float32), "value")
    graph = helper.make_graph(
        [
            helper.make_node("Pad", ["x", "pads", "value"], ["padded"], name="pad", mode="constant"),
            helper.make_node("Conv", ["padded", "w"], ["y"], name="conv", strides=[2, 2]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight, pads, value],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _evaluate(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(None, {"x": x})[0]
    return out


def test_fold_pads_moves_tf_same_padding_into_the_convolution_exactly() -> None:
    model = _pad_conv_model(0.0)
    x = np.random.default_rng(1).normal(size=(1, 3, 8, 8)).astype(np.float32)
    before = _evaluate(model, x)
    assert quantize.fold_pads(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Conv"]
    conv_pads = next(a.ints for a in model.graph.node[0].attribute if a.name == "pads")
    assert list(conv_pads) == [0, 0, 1, 1]  # top, left, bottom, right: all on the bottom/right
    np.testing.assert_allclose(_evaluate(model, x), before, atol=1e-5)


def test_fold_pads_leaves_padding_with_a_value_alone() -> None:
    model = _pad_conv_model(1.0)
    assert quantize.fold_pads(model) == 0
    assert [n.op_type for n in model.graph.node] == ["Pad", "Conv"]


# ------------------------------------------------------------------------------------------- a small run


@pytest.fixture(scope="module")
def small_int8(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    """An INT8 copy calibrated on a few training frames (seconds, not minutes)."""
    out = tmp_path_factory.mktemp("int8") / "small-int8.onnx"
    calibration = quantize.calibration_set(FLOAT, SHARED, SMOKE_FRAMES)
    summary = quantize.quantize(FLOAT, out, calibration)
    return out, summary


@needs_shared
def test_small_calibration_loads_and_colours_close_to_float(
    small_int8: tuple[Path, dict[str, object]],
) -> None:
    path, summary = small_int8
    int8 = OnnxRuntimeBackend(path)
    fp32 = OnnxRuntimeBackend(FLOAT)
    assert int8.info.precision == "int8" and int8.info.version == fp32.info.version + "-int8"
    assert summary["pads_folded"] == 18
    inputs = _picture_inputs()
    ab_float, state_float = _run(fp32, inputs)
    ab_int8, state_int8 = _run(int8, inputs)
    assert ab_int8.shape == ab_float.shape and state_int8.shape == state_float.shape
    error = float(np.abs(ab_int8 - ab_float).mean()) * spec.AB_SCALE
    assert error < SMOKE_TOLERANCE_AB, f"mean |Δab| {error:.2f} Lab units"
    chroma = float(np.abs(ab_int8).mean() / np.abs(ab_float).mean())
    assert 0.85 < chroma < 1.15, f"INT8 chroma is {chroma:.2f}x the float model's"


@needs_shared
def test_calibration_reads_training_frames_only(small_int8: tuple[Path, dict[str, object]]) -> None:
    path, _ = small_int8
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    described = json.loads(meta["chromastream.calibration"])
    assert described["frames"] == SMOKE_FRAMES and described["shape"] == [192, 256]
    assert described["davis_sequences"]
    assert not set(described["davis_sequences"]) & set(spec.DAVIS_EVAL_SEQUENCES)


def test_a_file_without_colorizer_metadata_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "plain.onnx"
    onnx.save(_pad_conv_model(0.0), str(other))
    frame = {"L": np.zeros((1, 1, 32, 32), np.float32)}
    calibration = quantize.CalibrationSet([frame], 1, 0, [])
    with pytest.raises(quantize.QuantizeError, match="no chromastream metadata"):
        quantize.quantize(other, tmp_path / "out.onnx", calibration)
    assert not (tmp_path / "out.onnx").exists()


# ------------------------------------------------------------------------------------------- the shipped file


@shipped
def test_shipped_int8_keeps_the_contract_and_comes_from_the_shipped_float_model() -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(INT8), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(str(FLOAT), providers=["CPUExecutionProvider"])
    assert [t.name for t in session.get_inputs()] == list(spec.INPUT_NAMES)
    assert [t.name for t in session.get_outputs()] == list(spec.OUTPUT_NAMES)
    for mine, theirs in zip(session.get_inputs(), reference.get_inputs(), strict=True):
        assert mine.type == theirs.type == "tensor(float)"
        assert mine.shape == theirs.shape  # the same dynamic batch and resolution
    meta = session.get_modelmeta().custom_metadata_map
    float_meta = reference.get_modelmeta().custom_metadata_map
    assert meta["chromastream.version"] == float_meta["chromastream.version"] + "-int8"
    assert meta["chromastream.precision"] == "int8"
    for key in ("l_scale", "ab_scale", "size_multiple", "state_channels", "state_stride"):
        assert meta[f"chromastream.{key}"] == float_meta[f"chromastream.{key}"], key
    assert meta["chromastream.source_sha256"] == file_sha256(FLOAT), (
        "the shipped float model changed: python -m chromastream.models.colorizer.quantize"
    )


@shipped
def test_shipped_int8_rounds_neither_the_state_nor_the_colours() -> None:
    graph = onnx.load(str(INT8)).graph
    producer = {out: node for node in graph.node for out in node.output}
    assert producer["state_out"].op_type != "DequantizeLinear"
    assert producer["ab"].op_type != "DequantizeLinear"
    float_weights = {init.name for init in graph.initializer if init.data_type == onnx.TensorProto.FLOAT}
    head = next(n for n in graph.node if n.name.startswith("/head/") and n.op_type == "Conv")
    assert head.input[1] in float_weights
    quantized = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    assert len(quantized) > 100  # the encoder and decoder body are INT8


@shipped
def test_shipped_int8_runs_in_a_session_like_the_float_model() -> None:
    from chromastream.models.runtime.session import ColorizerSession

    session = ColorizerSession(OnnxRuntimeBackend(INT8), size=64)
    plane = np.tile(np.linspace(10, 90, 96, dtype=np.float32), (72, 1))
    ab = session.predict_ab(plane)
    again = session.predict_ab(plane)  # with the carried state
    assert ab.shape == again.shape == (2, 64, 96) and np.isfinite(again).all()


# ------------------------------------------------------------------------------------------- choice


@shipped
def test_auto_on_the_cpu_runs_int8_unless_a_model_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if registry.cuda_device_present():
        pytest.skip("checks the CPU choice")
    monkeypatch.delenv("CHROMASTREAM_MODEL", raising=False)
    assert registry.create_backend("auto").info.precision == registry.CPU_PRECISION == "int8"
    assert registry.create_backend("auto", FLOAT).info.precision == "fp32"
    monkeypatch.setenv("CHROMASTREAM_MODEL", str(FLOAT))
    assert registry.create_backend("auto").info.precision == "fp32"


@shipped
def test_cpu_choice_matches_the_committed_comparison() -> None:
    """``auto`` runs INT8 on the CPU only because the committed comparison found it within the quality
    tolerance and faster than every float file at serve's working shape."""
    if not RESULTS.is_file():
        pytest.skip(f"{RESULTS.name} not written yet: python -m benchmarks.precision")
    data = json.loads(RESULTS.read_text())
    assert not data["quick"]
    models = data["models"]
    int8 = [m for m in models if m["precision"] == "int8"]
    floats = [m for m in models if m["precision"] == "fp32"]
    assert int8 and floats and models[0]["precision"] == "fp32"
    assert int8[0]["sha256"] == file_sha256(INT8)[:16], "the comparison measured another INT8 file"
    assert int8[0]["acceptance"]["quality_pass"]
    p50 = {m["label"]: m["speed"]["serve 192x256"]["latency_ms"]["p50"] for m in models}
    assert all(p50[int8[0]["label"]] < p50[m["label"]] for m in floats)


# ------------------------------------------------------------------------------------------- comparison


@needs_shared
@shipped
def test_comparison_runs_both_files_on_the_same_inputs_and_reports(tmp_path: Path) -> None:
    from benchmarks import precision, report

    argv = ["--quick", "--models", str(FLOAT), str(INT8), "--out-dir", str(tmp_path), "--shared", str(SHARED)]
    assert precision.main(argv) == 0
    data = json.loads((tmp_path / "int8_vs_fp32.json").read_text())
    first, second = data["models"]
    assert (first["precision"], second["precision"]) == ("fp32", "int8")
    assert first["quality"]["n"] == second["quality"]["n"] > 0
    assert first["video"]["frames"] == second["video"]["frames"] > 0
    assert set(second["acceptance"]) >= {"psnr_diff_db", "dcf_diff", "quality_pass", "speedup_serve_p50"}
    text = report.render(tmp_path, tmp_path / "RESULTS.md")
    assert "## Reduced precision (INT8 against float)" in text and "Smoke run" in text
    assert f"| `{INT8.stem}` (`{second['version']}`) | int8 |" in text
