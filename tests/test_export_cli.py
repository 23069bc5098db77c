"""``chromastream export``: FP32/FP16 files written whole, and one clear error line for bad paths."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from chromastream.models.runtime.registry import default_model_path
from chromastream.stream.cli import main

pytest.importorskip("onnxconverter_common", reason="FP16 export needs onnxconverter-common (train extra)")


def test_writes_fp32_and_fp16(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnx

    fp32, fp16 = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert main(["export", "--fp32", str(fp32), "--fp16", str(fp16)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert fp32.read_bytes() == default_model_path().read_bytes()
    weights = {i.data_type for i in onnx.load(str(fp16)).graph.initializer}
    assert onnx.TensorProto.FLOAT16 in weights and onnx.TensorProto.FLOAT not in weights
    assert summary["fp16_error"]["ab_max_abs"] < 1e-2
    assert fp16.stat().st_size < 0.6 * fp32.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx"]  # no temporaries left


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fp16", "{tmp}/missing/x.onnx"], "folder {tmp}/missing does not exist"),
        (["--fp16", "{tmp}"], "is a folder"),
        (["--fp16", "{tmp}/x.txt"], "must end in .onnx"),
        (["--fp16", "{tmp}/existing.onnx"], "exists; pass --overwrite"),
        (["--model", "{tmp}/nope.onnx", "--fp32", "{tmp}/y.onnx"], "model file not found"),
        ([], "nothing to export"),
    ],
)
def test_bad_paths_give_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    (tmp_path / "existing.onnx").write_bytes(b"keep")
    status = main(["export", *(a.format(tmp=tmp_path) for a in args)])
    err = capsys.readouterr().err
    assert status != 0
    assert err.count("\n") == 1 and err.startswith("chromastream: error:")
    assert message.format(tmp=tmp_path) in err
    assert (tmp_path / "existing.onnx").read_bytes() == b"keep"


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask-022", "umask-027"])
def test_files_get_the_permissions_of_any_new_file(tmp_path: Path, umask: int) -> None:
    """A model exported for deployment must be readable by the service that loads it (not owner-only)."""
    previous = os.umask(umask)
    try:
        assert main(["export", "--fp32", str(tmp_path / "a.onnx"), "-q"]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.onnx").stat().st_mode) == 0o666 & ~umask


def test_fp16_export_prints_only_its_summary(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """No converter warnings and no ONNX Runtime warnings (printed from C++, hence ``capfd``)."""
    assert main(["export", "--fp16", str(tmp_path / "b.onnx")]) == 0
    out, err = capfd.readouterr()
    assert err == ""
    assert json.loads(out)["fp16"] == str(tmp_path / "b.onnx")
    assert stat.S_IMODE((tmp_path / "b.onnx").stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
