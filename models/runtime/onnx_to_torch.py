"""The torch :class:`~chromastream.models.colorizer.network.Colorizer` filled with the weights of a colorizer
ONNX file.

The project ships one weights file, the ONNX model; the torch backends run the same weights by loading its
initializers into the torch module the file was exported from. The exporter (``torch.onnx.export`` with
``dynamo=False``) keeps parameter names, so initializers map onto ``Colorizer().state_dict()`` by name. A
file whose names were lost (constant folding renames folded tensors ``onnx::Conv_123``) is mapped by shape
and by the order in which the graph first uses each initializer, which is the order the module registers
its parameters in: the forward pass walks the submodules in the order ``__init__`` creates them.

Names and shapes can fit while the computation does not: the network code may have changed since the
file was exported (a pooling rule, a new zero-initialized branch). :func:`verify_against_onnxruntime` runs
both on one probe input with hints and a non-zero state and raises if they disagree, so a backend never
serves colours that differ from the shipped model's.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from chromastream.models.runtime.base import F32, ModelFormatError, ModelInfo

if TYPE_CHECKING:
    import onnx
    import torch

    from chromastream.models.colorizer.network import Colorizer

PROBE_SIZE = (64, 96)
PROBE_ATOL = 2e-3
"""Largest |difference| accepted between ONNX Runtime and torch in float32 (``ab`` and state units). Both
compute in float32 with different kernels and summation orders; observed differences are ~1e-6 on ``ab``
and ~1e-4 on the state (which is unbounded before the GRU's tanh)."""


def _first_use_order(model: onnx.ModelProto) -> dict[str, int]:
    """Initializer name -> index of the first graph node (in topological order) that reads it."""
    order: dict[str, int] = {}
    for index, node in enumerate(model.graph.node):
        for name in node.input:
            order.setdefault(name, index)
    return order


def map_initializers(model: onnx.ModelProto, expected: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """State-dict key -> array for every key of ``expected`` (key -> shape, in registration order).

    Exact names first; the rest are paired by shape, in order of first use in the graph against order of
    registration. Raises :class:`ModelFormatError` when a key finds no tensor or a tensor no key, since a
    partial load would run with untrained weights.
    """
    from onnx import numpy_helper

    tensors = {init.name: init for init in model.graph.initializer}
    mapped: dict[str, np.ndarray] = {}
    for key, shape in expected.items():
        init = tensors.get(key)
        if init is not None:
            if tuple(init.dims) != shape:
                raise ModelFormatError(
                    f"initializer {key} has shape {tuple(init.dims)}, the network expects {shape}: "
                    "the file was exported from a different version of the network"
                )
            mapped[key] = numpy_helper.to_array(init)
    left_keys = [k for k in expected if k not in mapped]
    used = set(mapped)
    first_use = _first_use_order(model)
    left_tensors = sorted(
        (t for name, t in tensors.items() if name not in used and name in first_use),
        key=lambda t: first_use[t.name],
    )
    by_shape: dict[tuple[int, ...], list[onnx.TensorProto]] = {}
    for t in left_tensors:
        by_shape.setdefault(tuple(t.dims), []).append(t)
    for key in left_keys:
        candidates = by_shape.get(expected[key])
        if not candidates:
            raise ModelFormatError(
                f"no initializer fits {key} {expected[key]}: the file was exported from a different "
                "version of the network (re-export it, or use the onnxruntime backend)"
            )
        mapped[key] = numpy_helper.to_array(candidates.pop(0))
    extra = [t.name for ts in by_shape.values() for t in ts if t.dims and _is_weight(t)]
    if extra:
        raise ModelFormatError(
            f"the file has weights the network does not know ({', '.join(extra[:4])}"
            f"{', ...' if len(extra) > 4 else ''}): it was exported from a different version of the network"
        )
    return mapped


def _is_weight(t: onnx.TensorProto) -> bool:
    """Large float tensors are weights; small ones the exporter leaves behind are shape constants."""
    from onnx import TensorProto

    size = int(np.prod(t.dims)) if t.dims else 1
    return t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16) and size > 8


def load_colorizer(path: Path) -> tuple[Colorizer, ModelInfo]:
    """A float32 ``Colorizer`` in eval mode with the file's weights, and what the file says about itself."""
    try:
        import onnx
        import torch

        from chromastream.models.colorizer.network import Colorizer
    except ImportError as exc:
        from chromastream.models.runtime.base import BackendUnavailable

        raise BackendUnavailable(
            f"the torch backends need torch and onnx ({exc.name} is missing): "
            "pip install 'chromastream[train]'"
        ) from exc
    if not path.is_file():
        raise ModelFormatError(f"model file not found: {path}")
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ModelFormatError(f"cannot read {path}: {exc}") from exc
    info = ModelInfo.from_metadata({p.key: p.value for p in proto.metadata_props})
    model = Colorizer().eval()
    state = model.state_dict()
    expected = {key: tuple(value.shape) for key, value in state.items()}
    arrays = map_initializers(proto, expected)
    with torch.no_grad():
        model.load_state_dict(
            {key: torch.from_numpy(np.array(arrays[key], dtype=np.float32)) for key in expected}
        )
    return model, info


def probe_inputs(info: ModelInfo, batch: int = 1, seed: int = 0) -> tuple[F32, F32, F32]:
    """A deterministic input that exercises every path: varied lightness, two hints and a non-zero state."""
    height, width = PROBE_SIZE
    rng = np.random.default_rng(seed)
    L = rng.uniform(0.0, 1.0, (batch, 1, height, width)).astype(np.float32)
    hints = np.zeros((batch, 3, height, width), dtype=np.float32)
    for y, x, a, b in ((10, 20, 0.3, -0.2), (40, 70, -0.25, 0.35)):
        hints[:, 0, y : y + 3, x : x + 3] = a
        hints[:, 1, y : y + 3, x : x + 3] = b
        hints[:, 2, y : y + 3, x : x + 3] = 1.0
    state = rng.normal(0.0, 0.5, info.state_shape(batch, height, width)).astype(np.float32)
    return L, hints, state


def run_float32(model: torch.nn.Module, L: F32, hints: F32, state: F32) -> tuple[F32, F32]:
    """One CPU float32 call of ``model`` on numpy arrays."""
    import torch

    with torch.inference_mode():
        ab, state_out = model(torch.from_numpy(L), torch.from_numpy(hints), torch.from_numpy(state))
    return ab.numpy().astype(np.float32), state_out.numpy().astype(np.float32)


def verify_against_onnxruntime(model: torch.nn.Module, path: Path, info: ModelInfo) -> float:
    """Run the probe through ONNX Runtime (the reference) and ``model``; return the largest difference, or
    raise :class:`ModelFormatError` when it exceeds :data:`PROBE_ATOL`."""
    from chromastream.models.runtime.onnxruntime_backend import OnnxRuntimeBackend

    reference = OnnxRuntimeBackend(path, threads=1)
    L, hints, state = probe_inputs(info)
    want = reference.run(L, hints, state)
    got = run_float32(model, L, hints, state)
    error = max(float(np.abs(w - g).max()) for w, g in zip(want, got, strict=True))
    if not error <= PROBE_ATOL:
        raise ModelFormatError(
            f"{path.name} computes something else than this version of the network (max difference "
            f"{error:.3g} on a probe input): re-export it, or use the onnxruntime backend"
        )
    return error
