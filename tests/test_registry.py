"""Backend names, what ``auto`` picks here, and that the CPU ranking matches the committed benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from chromastream.models.runtime.base import BackendUnavailable
from chromastream.models.runtime.onnxruntime_backend import OnnxRuntimeBackend
from chromastream.models.runtime.registry import (
    BACKENDS,
    CPU_RANKING,
    CUDA_RANKING,
    auto_ranking,
    create_backend,
    default_model_path,
    nvidia_device_visible,
)
from chromastream.stream.cli import build_parser

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "throughput_cpu.json"


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def test_names() -> None:
    assert BACKENDS == ("auto", "onnxruntime", "torch", "torch-compile", "torch-cuda", "tensorrt")
    with pytest.raises(BackendUnavailable, match="unknown backend 'tpu'; choose one of: auto, onnxruntime"):
        create_backend("tpu")


def test_cli_offers_every_backend() -> None:
    parser = build_parser()
    args = parser.parse_args(["colorize", "in.png", "out.png", "--backend", "torch-cuda"])
    assert args.backend == "torch-cuda"
    with pytest.raises(SystemExit):
        parser.parse_args(["colorize", "in.png", "out.png", "--backend", "tpu"])


@pytest.mark.skipif(_cuda(), reason="checks the CPU choice")
def test_auto_on_cpu_is_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHROMASTREAM_MODEL", raising=False)
    assert auto_ranking() == CPU_RANKING
    backend = create_backend("auto")
    assert isinstance(backend, OnnxRuntimeBackend) and backend.name == "onnxruntime"


def test_cpu_ranking_matches_the_committed_benchmark() -> None:
    """``auto`` on a CPU picks what ``benchmarks/throughput.py`` measured fastest on this machine class."""
    if not RESULTS.is_file():
        pytest.skip(f"{RESULTS.name} not written yet: python -m benchmarks.throughput")
    data = json.loads(RESULTS.read_text())
    assert not data["smoke"]
    measured = {e["requested"]: e["fps_geomean"] for e in data["backends"] if e["available"]}
    assert max(measured, key=lambda name: measured[name]) == CPU_RANKING[0]


def test_gpu_ranking_agrees_with_the_committed_gpu_benchmark() -> None:
    """Of the GPU backends that ran on the committed GPU machine, ``auto``'s order puts the fastest first."""
    path = RESULTS.with_name("throughput_cuda_all_backends.json")
    if not path.is_file():
        pytest.skip(f"{path.name} not written yet: python -m benchmarks.throughput on a GPU")
    data = json.loads(path.read_text())
    measured = {e["requested"]: e["fps_geomean"] for e in data["backends"] if e["available"]}
    ranked = [name for name in CUDA_RANKING if name in measured]
    assert ranked and max(measured, key=lambda name: measured[name]) == ranked[0]


@pytest.mark.skipif(_cuda(), reason="checks the errors where there is no CUDA")
@pytest.mark.parametrize(("name", "needs"), [("torch-cuda", "CUDA"), ("tensorrt", "TensorRT|CUDA")])
def test_gpu_backends_are_unavailable_on_cpu(name: str, needs: str) -> None:
    with pytest.raises(BackendUnavailable, match=needs):
        create_backend(name, default_model_path())


@pytest.mark.skipif(nvidia_device_visible(), reason="checks a machine without an NVIDIA device")
def test_auto_on_a_machine_without_gpu_never_loads_torch(tmp_path: Path) -> None:
    """torch costs ~1.4 s and 200 MB to import; ``auto`` must not pay that just to learn there is no GPU."""
    import cv2
    import numpy as np

    source = tmp_path / "in.png"
    assert cv2.imwrite(str(source), np.full((32, 48), 120, np.uint8))
    script = (
        "import sys\n"
        "from chromastream.stream.cli import main\n"
        f"status = main(['colorize', {str(source)!r}, {str(tmp_path / 'out.png')!r}, '--size', '64', '-q'])\n"
        "from chromastream.models.runtime.registry import create_backend\n"
        "print(status, create_backend('auto').name, 'torch' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.stdout.split() == ["0", "onnxruntime", "False"], done.stderr
    assert (tmp_path / "out.png").is_file()
