"""FP16 copies of a colorizer ONNX file, for TensorRT's strongly typed builds and for smaller downloads.

TensorRT 10 deprecates the weakly typed precision flags (``BuilderFlag.FP16``): precision belongs in the
network, so the engine is built from an ONNX file whose tensors already are float16. The conversion uses
``onnxconverter-common``'s ``float16`` converter (maintained with ONNX Runtime) on the graph itself, so no
torch is needed and any exported colorizer converts, whatever network version it came from.

Inputs and outputs stay float32 (``keep_io_types``): every model file keeps the contract's types
(docs/ARCHITECTURE.md, Contracts), so any backend loads either file and callers never convert; the casts at
the edges cost nothing next to the convolutions. One converter pitfall is handled here: an output that the
graph also reads internally (``state_out`` feeds the decoder) would get its float32 cast while its internal
readers expected float16, so such outputs are first routed through an ``Identity``.

Accuracy (measured on the shipped model, ONNX Runtime CPU, 256x448): ``ab`` within 3e-3 of float32
(0.3 Lab units); the recurrent state differs by up to ~1.4 on a few hundred of 57k elements, where a GRU
gate sits at its switch point and the float16 rounding of its large (|x| ~ 50) inputs tips it, 99.9 % of
elements within 0.35. Keeping the GRU itself in float32 does not change this (the rounding happens before
it), so the whole graph is converted.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from chromastream.models.runtime.base import BackendUnavailable, ModelFormatError

if TYPE_CHECKING:
    import onnx

FP16_EXTRA = "pip install 'chromastream[train]' (onnx, onnxconverter-common)"


def _detach_outputs(model: onnx.ModelProto) -> None:
    """Make every graph output a tensor that no node reads (see the module docstring)."""
    from onnx import helper

    outputs = {o.name for o in model.graph.output}
    read = {name for node in model.graph.node for name in node.input}
    for name in sorted(outputs & read):
        inner = f"{name}__inner"
        for node in model.graph.node:
            for i, value in enumerate(node.output):
                if value == name:
                    node.output[i] = inner
            for i, value in enumerate(node.input):
                if value == name:
                    node.input[i] = inner
        model.graph.node.append(helper.make_node("Identity", [inner], [name], name=f"{name}__output"))


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of ``model`` with float32 inputs and outputs and the same metadata."""
    try:
        import onnx
        from onnxconverter_common import float16
    except ImportError as exc:
        raise BackendUnavailable(f"FP16 conversion needs {exc.name}: {FP16_EXTRA}") from exc
    work = onnx.ModelProto()
    work.CopyFrom(model)
    _detach_outputs(work)
    converted: onnx.ModelProto = float16.convert_float_to_float16(work, keep_io_types=True)
    try:
        onnx.checker.check_model(converted)
    except onnx.checker.ValidationError as exc:  # pragma: no cover - a converter bug
        raise ModelFormatError(f"the FP16 conversion produced an invalid model: {exc}") from exc
    entry = converted.metadata_props.add()
    entry.key, entry.value = "chromastream.precision", "fp16"
    return converted


def load_onnx(path: Path) -> onnx.ModelProto:
    try:
        import onnx
    except ImportError as exc:
        raise BackendUnavailable(f"reading ONNX files needs onnx: {FP16_EXTRA}") from exc
    if not path.is_file():
        raise ModelFormatError(f"model file not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # onnx raises protobuf's DecodeError and others
        raise ModelFormatError(f"cannot read {path}: {exc}") from exc


def is_fp16(model: onnx.ModelProto) -> bool:
    """Whether the file's weights are float16 (the input to a strongly typed FP16 engine build)."""
    from onnx import TensorProto

    kinds = {init.data_type for init in model.graph.initializer}
    return TensorProto.FLOAT16 in kinds and TensorProto.FLOAT not in kinds
