"""Export a trained colorizer to ONNX with the contract's signature and dynamic batch and resolution.

The file carries its own description in ONNX metadata (units, state shape, version), so runtimes
never hard-code what a given model expects.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch

from chromastream.models.colorizer import spec
from chromastream.models.colorizer.network import Colorizer, zero_state


def model_metadata(version: str) -> dict[str, str]:
    return {
        "chromastream.version": version,
        "chromastream.l_scale": str(spec.L_SCALE),
        "chromastream.ab_scale": str(spec.AB_SCALE),
        "chromastream.size_multiple": str(spec.SIZE_MULTIPLE),
        "chromastream.state_channels": str(spec.STATE_CHANNELS),
        "chromastream.state_stride": str(spec.STATE_STRIDE),
    }


def export_onnx(model: Colorizer, path: Path, version: str, size: int = 256) -> None:
    import onnx

    model = model.eval().float()
    L = torch.rand(1, 1, size, size)
    hints = torch.zeros(1, 3, size, size)
    state = zero_state(1, size, size)
    dyn = {0: "batch", 2: "height", 3: "width"}
    dyn_state = {0: "batch", 2: "state_height", 3: "state_width"}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(
        model,
        (L, hints, state),
        str(tmp),
        input_names=list(spec.INPUT_NAMES),
        output_names=list(spec.OUTPUT_NAMES),
        dynamic_axes={"L": dyn, "hints": dyn, "state": dyn_state, "ab": dyn, "state_out": dyn_state},
        opset_version=17,
        dynamo=False,
    )
    proto = onnx.load(str(tmp))
    for key, value in model_metadata(version).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    tmp.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description="Export a colorizer checkpoint to ONNX.")
    parser.add_argument(
        "checkpoint", type=Path, help="a training checkpoint (.pt) or 'random' for an untrained net"
    )
    parser.add_argument("output", type=Path)
    parser.add_argument("--version", default=None, help="model version string stored in the file")
    parser.add_argument("--gain", type=float, default=None, help="override the chroma gain")
    args = parser.parse_args()
    model = Colorizer()
    version = args.version or "untrained"
    if str(args.checkpoint) != "random":
        ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["ema"] if "ema" in ckpt else ckpt["model"])
        if args.version is None:
            digest = hashlib.sha256(args.checkpoint.read_bytes()).hexdigest()[:8]
            version = f"colorizer-{ckpt.get('step', 0)}-{digest}"
    if args.gain is not None:
        model.ab_gain.fill_(args.gain)
    export_onnx(model, args.output, version)
    print(json.dumps({"output": str(args.output), "version": version, "gain": float(model.ab_gain)}))


if __name__ == "__main__":
    main()
