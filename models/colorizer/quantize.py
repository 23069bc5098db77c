"""INT8 colorizer: ONNX Runtime static quantization (QDQ format) calibrated on training frames.

On a small CPU the colorizer is most of a live frame's budget. This module writes an INT8 copy of an
exported colorizer that runs through the same ONNX Runtime ``InferenceSession`` as the float file (QDQ:
``QuantizeLinear``/``DequantizeLinear`` pairs around float operators, which ONNX Runtime fuses into integer
kernels), keeps the tensor contract (float32 inputs and outputs) and the file's ``chromastream.*``
metadata, with ``chromastream.version`` marked ``<version>-int8`` and ``chromastream.precision`` ``int8``.

What is quantized, and why (each exclusion was measured: mean |Δab| against the float model on 60
held-out training photographs at 192x256, a third with hints):
- The encoder and the decoder body (convolutions, residual adds, concatenations, upsampling): weights per
  output channel (INT8, symmetric), activations per tensor (UINT8, the fast u8 x s8 path of x86 VNNI).
- Kept in float32:
  - the input conversion (a gamma curve), the stem convolution and the first inverted-residual block:
    they see the lightness itself and their rounding reaches every later layer; keeping them float took
    the error from 0.91 to 0.62 Lab units for 0.1 ms of a 10 ms call;
  - the ConvGRU, and ``dec16``, which reads the concatenation of features and state: one activation scale
    for both crushed the state's [-1, 1] under the features' range, and the colours lost a third of their
    chroma (error 3.6 Lab units); the state also feeds back frame after frame, so it is never rounded;
  - the hint pooling and the two small hint convolutions (a user's colour arrives unrounded);
  - everything from the last decoder layer to ``ab`` (the hint convolution at 1/2, the head, the chroma
    gain, the upsampling, the hint propagation): the colours themselves are not rounded to 256 levels.
- Before quantizing, each constant zero ``Pad`` in front of a convolution (the encoder's TensorFlow
  "SAME" padding, 18 of them) is folded into that convolution's own ``pads`` (:func:`fold_pads`, exact).
  ONNX Runtime 1.32 leaves these ``Pad`` nodes in place, each one a copy of a whole feature map: in a
  profile at 192x256 they took 3.9 of 27 ms. The fold alone makes the float graph 1.47x faster, INT8 on
  top of it 1.28x (``benchmarks/results/int8_vs_fp32.json``); ``--float-output`` keeps the folded float
  graph, so a comparison can tell the two gains apart.

Calibration (``--frames``, default 32) uses training data only, never ``eval/`` folders nor the held-out
DAVIS sequences (:data:`chromastream.models.colorizer.spec.DAVIS_EVAL_SEQUENCES`): half the frames are
training photographs outside the model-selection hold-out, half frames of the DAVIS training sequences,
all at serve's working shape for a 640x480 camera (192x256). Each frame is fed with the recurrent state the
float model reaches after the frames before it (a still camera for a photograph, real motion for DAVIS;
some at zero, as a stream starts), and about a quarter carry random user hints whose colours come from the
picture itself. Ranges are the observed min/max: with more frames the rare extremes widen them and every
value is rounded more coarsely (error 0.62 with 32 frames, 0.70 with 96, 0.77-0.90 with 64 at two seeds;
0.56-0.64 at three seeds of 32), and 99.999th-percentile ranges measured no better while their histograms
took 3 GB for 32 frames.

    python -m chromastream.models.colorizer.quantize      # writes models/weights/colorizer-int8.onnx
    python -m chromastream.models.colorizer.quantize --frames 8 --output /tmp/q.onnx   # smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from chromastream.errors import ChromastreamError
from chromastream.kernels.lab_numpy import rgb_to_lab
from chromastream.models.colorizer import spec
from chromastream.models.colorizer.hints import Hint, rasterize
from chromastream.models.runtime.base import F32, BackendUnavailable, ModelFormatError
from chromastream.models.runtime.engine_cache import file_sha256
from chromastream.models.shared_data import shared_root

if TYPE_CHECKING:
    import onnx

QUANTIZE_EXTRA = "pip install 'chromastream[train]' (onnx)"
DEFAULT_FRAMES = 32
CALIBRATION_SHAPE = (192, 256)
"""Serve's working shape for a 640x480 camera (short side 192, ``PipelineConfig.size``)."""
WARM_FRAMES = 3
"""A calibration frame follows up to this many frames of the same stream, so its state is a carried one."""
HINT_SHARE = 0.25
MAX_HINTS = 16
QUANTIZED_OPS = ("Conv", "Add", "Concat", "Resize", "Relu", "Clip")
FLOAT_MODULES = ("/blocks.0/", "/gru/", "/dec16/", "/hint2/", "/head/", "/propagate/")
"""Exported node-name prefixes (the torch modules of :mod:`chromastream.models.colorizer.network`) kept in
float32; see the module docstring."""
VERSION_SUFFIX = "-int8"


class QuantizeError(ChromastreamError):
    """The INT8 copy cannot be made (no calibration data, a model that is not a colorizer)."""


# ------------------------------------------------------------------------------------------- graph


def fold_pads(model: onnx.ModelProto) -> int:
    """Fold every zero ``Pad`` with constant spatial pads whose only reader is a ``Conv`` into that
    convolution's ``pads`` attribute; returns how many were folded. Exact: a convolution's own padding is
    zero padding. Needs the pads as initializers (run constant folding first, as
    ``quant_pre_process`` does)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    folded = []
    for node in graph.node:
        if node.op_type != "Pad" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        mode = next((a.s for a in node.attribute if a.name == "mode"), b"constant")
        value = node.input[2] if len(node.input) > 2 else ""
        if mode != b"constant" or (value and not _is_zero(constants.get(value))):
            continue
        if len(node.input) > 3 and node.input[3]:
            continue  # explicit axes: not the exporter's form
        users = readers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "Conv" or node.output[0] in outputs:
            continue
        pads = [int(p) for p in constants[node.input[1]]]
        if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:
            continue  # batch/channel padding or cropping cannot move into a convolution
        conv = users[0]
        if any(a.name == "auto_pad" and a.s not in (b"", b"NOTSET") for a in conv.attribute):
            continue
        own = next((list(a.ints) for a in conv.attribute if a.name == "pads"), [0, 0, 0, 0])
        merged = [own[0] + pads[2], own[1] + pads[3], own[2] + pads[6], own[3] + pads[7]]
        for attr in [a for a in conv.attribute if a.name in ("pads", "auto_pad")]:
            conv.attribute.remove(attr)
        conv.attribute.append(helper.make_attribute("pads", merged))
        conv.input[0] = node.input[0]
        folded.append(node)
    for node in folded:
        graph.node.remove(node)
    return len(folded)


def _is_zero(value: np.ndarray | None) -> bool:
    return value is not None and not np.any(value)


def nodes_to_quantize(model: onnx.ModelProto) -> list[str]:
    """The encoder and decoder body: nodes of :data:`QUANTIZED_OPS` downstream of the stem (the first
    convolution on ``L``'s path, kept in float32 with its activation) and upstream of the head, outside
    :data:`FLOAT_MODULES`, and none that reads the recurrent state (quantizing a reader of ``state_out``
    would round the output state itself)."""
    nodes = list(model.graph.node)  # ONNX keeps nodes in topological order
    on_l = _downstream(nodes, {spec.INPUT_NAMES[0]})
    stems = [n for n in nodes if n.op_type == "Conv" and n.name in on_l]
    heads = [n for n in nodes if n.op_type == "Conv" and n.name.startswith("/head/")]
    if not stems or len(heads) != 1:
        raise QuantizeError("no stem and single '/head/' convolution in the graph: not an exported colorizer")
    stem = stems[0]
    stem_activation = {n.name for n in nodes if set(stem.output) & set(n.input)}
    after_stem = _downstream(nodes, set(stem.output)) - stem_activation
    after_head = _downstream(nodes, set(heads[0].output)) | {heads[0].name}
    state = {spec.INPUT_NAMES[2], spec.OUTPUT_NAMES[1]}
    return [
        n.name
        for n in nodes
        if n.op_type in QUANTIZED_OPS
        and n.name in after_stem
        and n.name not in after_head
        and not n.name.startswith(FLOAT_MODULES)
        and not state.intersection(n.input)
    ]


def _downstream(nodes: Sequence[onnx.NodeProto], values: set[str]) -> set[str]:
    """Names of the nodes that read, directly or not, any of ``values`` (``nodes`` in topological order)."""
    reached: set[str] = set()
    values = set(values)
    for node in nodes:
        if any(name in values for name in node.input):
            reached.add(node.name)
            values.update(node.output)
    return reached


# ------------------------------------------------------------------------------------------- calibration


@dataclass
class CalibrationSet:
    """The calibration inputs (``L``, ``hints``, ``state`` per frame) and where they came from."""

    frames: list[dict[str, F32]]
    photos: int
    video_frames: int
    sequences: list[str]

    def describe(self) -> dict[str, Any]:
        states = [f["state"] for f in self.frames]
        return {
            "frames": len(self.frames),
            "photos": self.photos,
            "video_frames": self.video_frames,
            "davis_sequences": self.sequences,
            "with_hints": sum(bool(f["hints"][:, 2].any()) for f in self.frames),
            "zero_state": sum(not s.any() for s in states),
            "shape": list(self.frames[0]["L"].shape[2:]) if self.frames else [],
        }


def _fit(rgb: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Centre crop to ``shape``'s aspect ratio, then resize (area) to it."""
    h, w = rgb.shape[:2]
    th, tw = shape
    if w * th > h * tw:
        cw = round(h * tw / th)
        rgb = rgb[:, (w - cw) // 2 : (w - cw) // 2 + cw]
    else:
        ch = round(w * th / tw)
        rgb = rgb[(h - ch) // 2 : (h - ch) // 2 + ch]
    return np.asarray(cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_AREA))


def _lab(rgb: np.ndarray) -> F32:
    return np.asarray(rgb_to_lab(rgb.astype(np.float32) / 255.0), dtype=np.float32)


def _random_hints(lab: F32, rng: np.random.Generator) -> F32:
    """``[1, 3, H, W]``: 1..MAX_HINTS clicks at random points, each with the picture's own colour there."""
    height, width = lab.shape[:2]
    hints = []
    for _ in range(int(rng.integers(1, MAX_HINTS + 1))):
        x, y = float(rng.random()), float(rng.random())
        px, py = round(x * (width - 1)), round(y * (height - 1))
        a, b = lab[py, px, 1:]
        hints.append(Hint(x, y, float(a), float(b), radius=float(rng.uniform(0.01, 0.04))))
    return rasterize(hints, height, width)[None]


class _FloatModel:
    """The float model, run frame after frame to give each calibration frame a carried state."""

    def __init__(self, path: Path):
        from chromastream.models.runtime.onnxruntime_backend import OnnxRuntimeBackend

        self.backend = OnnxRuntimeBackend(path)
        self.info = self.backend.info

    def states(self, labs: Sequence[F32], hints: F32) -> list[F32]:
        """The state each frame of ``labs`` is fed with: zeros for the first, then the float model's."""
        state = np.zeros(self.info.state_shape(1, *labs[0].shape[:2]), dtype=np.float32)
        states = []
        for lab in labs:
            states.append(state)
            _, state = self.backend.run(_l_input(lab), hints, state)
        return states


def _l_input(lab: F32) -> F32:
    return np.asarray(lab[None, None, :, :, 0] / spec.L_SCALE, dtype=np.float32)


def calibration_set(
    model: Path,
    shared: Path,
    count: int = DEFAULT_FRAMES,
    shape: tuple[int, int] = CALIBRATION_SHAPE,
    seed: int = 0,
) -> CalibrationSet:
    """``count`` calibration frames from the training photographs and DAVIS training sequences (module
    docstring); the same ``seed`` gives the same frames."""
    from chromastream.models.colorizer.data import (
        IMAGE_SUFFIXES,
        davis_training_sequences,
        is_holdout,
        load_rgb,
        training_images,
    )

    if count < 1:
        raise QuantizeError(f"calibration needs at least 1 frame, got {count}")
    rng = np.random.default_rng(seed)
    try:
        photos = [p for p in training_images(shared) if not is_holdout(p)]
        sequences = davis_training_sequences(shared, spec.DAVIS_EVAL_SEQUENCES)
    except FileNotFoundError as exc:
        raise QuantizeError(str(exc)) from exc
    if not photos or not sequences:
        raise QuantizeError(f"no training photographs or DAVIS training sequences under {shared}")
    float_model = _FloatModel(model)
    short = min(shape)
    frames: list[dict[str, F32]] = []
    n_photos = min((count + 1) // 2, len(photos))
    for i in rng.choice(len(photos), size=n_photos, replace=False):
        lab = _lab(_fit(load_rgb(photos[int(i)], short), shape))
        hints = _hint_input(lab, rng, shape)
        warm = int(rng.integers(0, WARM_FRAMES + 1))  # 0: the first frame of a stream
        state = float_model.states([lab] * (warm + 1), hints)[-1]
        frames.append({"L": _l_input(lab), "hints": hints, "state": state})
    used: set[str] = set()
    while len(frames) < count:
        folder = sequences[int(rng.integers(len(sequences)))]
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        warm = int(rng.integers(0, WARM_FRAMES + 1))
        start = int(rng.integers(0, max(len(files) - warm, 1)))
        labs = [_lab(_fit(load_rgb(p, short), shape)) for p in files[start : start + warm + 1]]
        hints = _hint_input(labs[-1], rng, shape)
        state = float_model.states(labs, hints)[-1]
        frames.append({"L": _l_input(labs[-1]), "hints": hints, "state": state})
        used.add(folder.name)
    return CalibrationSet(frames, n_photos, count - n_photos, sorted(used))


def _hint_input(lab: F32, rng: np.random.Generator, shape: tuple[int, int]) -> F32:
    if rng.random() < HINT_SHARE:
        return _random_hints(lab, rng)
    return np.zeros((1, 3, *shape), dtype=np.float32)


class _Reader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over a list of input dicts."""

    def __init__(self, frames: Iterable[dict[str, F32]]):
        self._frames = iter(frames)

    def get_next(self) -> dict[str, F32] | None:
        return next(self._frames, None)


# ------------------------------------------------------------------------------------------- quantizing


def quantize(
    model: Path, output: Path, calibration: CalibrationSet, float_output: Path | None = None
) -> dict[str, Any]:
    """Write the INT8 copy of ``model`` to ``output``; returns a summary for the log. ``float_output``
    also keeps the float graph it was quantized from (pads folded, nothing rounded), which tells the
    fold's gain from INT8's in a benchmark. Files are written whole or not at all."""
    try:
        import onnx
        import onnxruntime as ort
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise BackendUnavailable(f"quantization needs {exc.name}: {QUANTIZE_EXTRA}") from exc
    from chromastream.models.runtime.onnxruntime_backend import ort_log_severity

    if not model.is_file():
        raise ModelFormatError(f"model file not found: {model}")
    if not calibration.frames:
        raise QuantizeError("no calibration frames")
    metadata = {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}
    if "chromastream.version" not in metadata:
        raise QuantizeError(f"{model} carries no chromastream metadata: not an exported colorizer")
    version = metadata["chromastream.version"] + VERSION_SUFFIX
    ort.set_default_logger_severity(ort_log_severity())  # the optimizer's notes on unused initializers
    with tempfile.TemporaryDirectory(prefix="chromastream-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference and ONNX Runtime's basic optimizations (constant folding makes the pads
        # initializers). Symbolic shape inference is skipped: the graph computes its resize sizes at run time.
        quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared))
        folded = fold_pads(graph)
        _set_metadata(graph, metadata)
        onnx.save(graph, str(prepared))
        selected = nodes_to_quantize(graph)
        quantized = Path(tmp) / "int8.onnx"
        quantize_static(
            str(prepared),
            str(quantized),
            _Reader(calibration.frames),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_quantize=selected,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        result = onnx.load(str(quantized))
        _set_metadata(
            result,
            {
                **metadata,
                "chromastream.version": version,
                "chromastream.precision": "int8",
                "chromastream.source_sha256": file_sha256(model),
                "chromastream.calibration": json.dumps(calibration.describe(), sort_keys=True),
            },
        )
        onnx.checker.check_model(result)
        _save(result, output)
        if float_output is not None:
            _save(graph, float_output)
    return {
        "output": str(output),
        "version": version,
        "pads_folded": folded,
        "nodes_quantized": len(selected),
        "calibration": calibration.describe(),
        "bytes": output.stat().st_size,
        "float_output": None if float_output is None else str(float_output),
    }


def _set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Set ``metadata`` in ``model``, replacing those keys and keeping the others (the optimizer's own mark
    that pre-processing ran)."""
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    for key, value in [*kept, *metadata.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _save(model: onnx.ModelProto, path: Path) -> None:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    onnx.save(model, str(partial))
    partial.replace(path)


def main(argv: list[str] | None = None) -> int:
    from chromastream.models.runtime.registry import default_model_path, shipped_model_path

    parser = argparse.ArgumentParser(
        prog="python -m chromastream.models.colorizer.quantize",
        description="Write an INT8 (QDQ) copy of the colorizer, calibrated on training frames.",
    )
    parser.add_argument("--model", type=Path, default=default_model_path(), help="float ONNX file")
    parser.add_argument(
        "--output", type=Path, default=shipped_model_path("int8"), help="INT8 file (default: the shipped one)"
    )
    parser.add_argument(
        "--float-output",
        type=Path,
        default=None,
        help="also write the float graph it quantizes (pads folded): the float side of a fair comparison",
    )
    parser.add_argument(
        "--frames", type=int, default=DEFAULT_FRAMES, help=f"calibration frames (default {DEFAULT_FRAMES})"
    )
    parser.add_argument("--shared", type=Path, default=shared_root(), help="shared data folder")
    parser.add_argument("--seed", type=int, default=0, help="which training frames calibrate")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        calibration = calibration_set(args.model, args.shared, args.frames, seed=args.seed)
        summary = quantize(args.model, args.output, calibration, args.float_output)
    except ChromastreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
