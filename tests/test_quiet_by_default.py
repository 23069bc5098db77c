"""What a new user's terminal shows by default, and what ``--verbose`` adds back.

Each case runs the real command in a fresh process: the libraries in question (aioice, aiortc, ONNX
Runtime) decide what to print when they start, and ONNX Runtime prints from C++ straight to the terminal.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from aiohttp import ClientSession

from tests.test_webrtc import frames_at_least, whep

COMMAND = [sys.executable, "-m", "chromastream.stream.cli"]
#: How aioice reports each ICE step (nine or so lines for every viewer).
ICE_LINE = "Check CandidatePair"
#: How ONNX Runtime's own logger marks a warning.
ORT_WARNING = "[W:onnxruntime:"


def test_version_comes_from_the_package_metadata() -> None:
    from importlib import metadata

    done = subprocess.run([*COMMAND, "--version"], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == f"chromastream {metadata.version('chromastream')}"


async def _serve_one_viewer(*flags: str) -> str:
    """stderr of ``serve`` that had one WebRTC viewer for a few frames."""
    process = subprocess.Popen(
        [*COMMAND, *flags, "serve", "--port", "0", "--size", "64", "--source", "synthetic:"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "viewer at" in line, line
        base = line.split("viewer at", 1)[1].strip().rstrip("/")
        async with ClientSession() as session, whep(session, base, "cam1") as viewer:
            await frames_at_least(viewer, 5)
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.to_thread(process.communicate, timeout=30)
        assert process.returncode == 0, err
        return err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_keeps_the_webrtc_libraries_quiet_unless_verbose() -> None:
    quiet = asyncio.run(_serve_one_viewer())
    assert ICE_LINE not in quiet, quiet
    assert "serving streams: cam1" in quiet
    verbose = asyncio.run(_serve_one_viewer("--verbose"))
    assert ICE_LINE in verbose, verbose


@pytest.fixture(scope="module")
def fp16_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    pytest.importorskip("onnxconverter_common", reason="FP16 export needs onnxconverter-common (train extra)")
    path = tmp_path_factory.mktemp("fp16") / "colorizer-fp16.onnx"
    subprocess.run([*COMMAND, "export", "--fp16", str(path), "-q"], check=True, timeout=300)
    yield path


def test_fp16_model_starts_without_onnxruntime_warnings_unless_verbose(
    fp16_model: Path, tmp_path: Path
) -> None:
    source = tmp_path / "in.png"
    assert cv2.imwrite(str(source), np.full((32, 48), 120, np.uint8))

    model = ["--model", str(fp16_model), "--size", "64", "--backend", "onnxruntime"]

    def colorize(*flags: str) -> str:
        done = subprocess.run(
            [*COMMAND, "colorize", str(source), str(tmp_path / "out.png"), "--overwrite", *model, *flags],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stderr

    quiet = colorize()
    assert ORT_WARNING not in quiet, quiet
    assert [line for line in quiet.splitlines() if line.strip()] == [
        line for line in quiet.splitlines() if line.startswith("chromastream: ")
    ]
    assert ORT_WARNING in colorize("--verbose")  # after the command here; before it in the serve case
