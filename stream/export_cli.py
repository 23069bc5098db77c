"""``chromastream export``: model files for deployment — ONNX FP32, ONNX FP16 and the TensorRT engine.

The source is the shipped model (or ``--model FILE``), or a training checkpoint (``--checkpoint``, exported
through :mod:`chromastream.models.colorizer.export`, which needs torch). The FP16 file is float16 inside with
float32 inputs and outputs (:mod:`chromastream.models.runtime.onnx_fp16`), checked against the FP32 model with
ONNX Runtime on a probe input before it is written. Each file is written beside its target and renamed, so a
failed export never leaves half a model; an existing file is replaced only with ``--overwrite``. Files get
the permissions any new file gets (``0666`` less the umask), so a model meant for deployment is readable
by the service that loads it. ``--engine`` builds the TensorRT engine into the engine cache, where TensorRT
is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from chromastream.stream.errors import InputError, OutputError, UsageError

FP16_ATOL_AB = 1e-2
"""Largest |ab difference| accepted between the FP16 and FP32 files (network units; 1.1 Lab units)."""

_EPILOG = """\
forms:
  chromastream export --fp16 colorizer-fp16.onnx                  FP16 copy of the shipped model
  chromastream export --checkpoint ckpt.pt --fp32 a.onnx --fp16 b.onnx
  chromastream export --model a.onnx --engine                      TensorRT engine into the cache"""


def add_export(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write ONNX FP32/FP16 model files and build the TensorRT engine",
        description="Export the colorizer for deployment: ONNX FP32, ONNX FP16 (float32 I/O), "
        "TensorRT engine.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--model", type=Path, metavar="PATH", help="source ONNX file (default: shipped model)"
    )
    source.add_argument(
        "--checkpoint", type=Path, metavar="PT", help="source training checkpoint (needs torch)"
    )
    parser.add_argument("--fp32", type=Path, metavar="OUT", help="write the FP32 ONNX here")
    parser.add_argument("--fp16", type=Path, metavar="OUT", help="write the FP16 ONNX here")
    parser.add_argument("--engine", action="store_true", help="build the TensorRT FP16 engine into the cache")
    parser.add_argument("--version", help="model version stored in a file exported from a checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("-q", "--quiet", action="store_true", help="no summary line")
    parser.set_defaults(handler=run_export)


def _check_target(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give a file name ending in .onnx")
    if path.suffix.lower() != ".onnx":
        raise OutputError(f"{path}: an ONNX model file name must end in .onnx")
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise OutputError(f"cannot write {path}: folder {path.parent} is not writable")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} exists; pass --overwrite to replace it")


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a hidden file beside ``path`` and rename it into place.

    The temporary is created with ``os.open(..., 0o666)`` so the umask applies as for any file a tool
    writes (``tempfile.mkstemp`` would make it readable by its owner only, and the rename keeps that)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def _source_model(args: argparse.Namespace) -> Iterator[Path]:
    """The FP32 ONNX to start from: the given or shipped file, or a temporary export of a checkpoint."""
    if args.checkpoint is None:
        from chromastream.models.runtime.registry import default_model_path

        path: Path = args.model or default_model_path()
        if not path.is_file():
            raise InputError(f"model file not found: {path}")
        yield path
        return
    if not args.checkpoint.is_file():
        raise InputError(f"checkpoint not found: {args.checkpoint}")
    try:
        import torch

        from chromastream.models.colorizer.export import export_onnx
        from chromastream.models.colorizer.network import Colorizer
    except ImportError as exc:
        raise UsageError(
            f"exporting a checkpoint needs torch: pip install 'chromastream[train]' ({exc})"
        ) from exc
    try:
        ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        model = Colorizer()
        model.load_state_dict(ckpt["ema"] if "ema" in ckpt else ckpt["model"])
    except Exception as exc:  # torch.load and load_state_dict raise many types
        raise InputError(f"cannot load checkpoint {args.checkpoint}: {exc}") from exc
    version = args.version or f"colorizer-{ckpt.get('step', 0)}"
    with tempfile.TemporaryDirectory(prefix="chromastream-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, path, version)
        yield path


def fp16_error(fp32_path: Path, fp16_bytes: bytes) -> dict[str, float]:
    """Largest differences between the two files on the probe input (ONNX Runtime, CPU)."""
    import onnxruntime as ort

    from chromastream.models.runtime.base import ModelInfo
    from chromastream.models.runtime.onnx_to_torch import probe_inputs
    from chromastream.models.runtime.onnxruntime_backend import ort_log_severity

    options = ort.SessionOptions()
    options.log_severity_level = ort_log_severity()
    sessions = [
        ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])
        for src in (str(fp32_path), fp16_bytes)
    ]
    meta = dict(sessions[0].get_modelmeta().custom_metadata_map)
    L, hints, state = probe_inputs(ModelInfo.from_metadata(meta))
    feeds = {"L": L, "hints": hints, "state": state}
    (ab32, st32), (ab16, st16) = (s.run(["ab", "state_out"], feeds) for s in sessions)
    return {
        "ab_max_abs": float(np.abs(ab32 - ab16).max()),
        "state_mean_abs": float(np.abs(st32 - st16).mean()),
    }


def run_export(args: argparse.Namespace) -> int:
    if args.fp32 is None and args.fp16 is None and not args.engine:
        raise UsageError("nothing to export: give --fp32 OUT, --fp16 OUT and/or --engine")
    targets = [p for p in (args.fp32, args.fp16) if p is not None]
    if args.fp32 is not None and args.fp16 is not None and args.fp32.resolve() == args.fp16.resolve():
        raise UsageError("--fp32 and --fp16 name the same file")
    for target in targets:
        _check_target(target, args.overwrite)
    from chromastream.models.runtime.onnx_fp16 import convert_to_fp16, load_onnx

    summary: dict[str, Any] = {}
    with _source_model(args) as source:
        proto = load_onnx(source)
        summary["version"] = next(
            (p.value for p in proto.metadata_props if p.key == "chromastream.version"), "unknown"
        )
        if args.fp32 is not None:
            write_atomically(args.fp32, source.read_bytes())
            summary["fp32"] = str(args.fp32)
        if args.fp16 is not None:
            with warnings.catch_warnings():
                # The converter warns about each tiny weight it rounds to FP16's range; the check just
                # below measures what matters, the FP16 model's output against FP32's.
                if not getattr(args, "verbose", False):
                    warnings.simplefilter("ignore", UserWarning)
                data = convert_to_fp16(proto).SerializeToString()
            error = fp16_error(source, data)
            if not error["ab_max_abs"] <= FP16_ATOL_AB:
                raise OutputError(
                    f"the FP16 model differs from FP32 by {error['ab_max_abs']:.3g} in ab (limit "
                    f"{FP16_ATOL_AB}); not written"
                )
            write_atomically(args.fp16, data)
            summary["fp16"] = str(args.fp16)
            summary["fp16_error"] = error
        if args.engine:
            from chromastream.models.runtime.tensorrt_backend import TensorRTBackend

            backend = TensorRTBackend(source)
            summary["engine"] = str(backend.cache.engine_path(backend.key))
    if not args.quiet:
        print(json.dumps(summary))
    return 0
