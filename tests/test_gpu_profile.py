"""The GPU profile benchmark: its trace parsing and categories on a real CPU profile of the colorizer, its
RESULTS.md section (or the line saying it has not been measured), the CUDA run where a GPU is present, and
the CUDA MPS option of the serve benchmark (refused clearly without the MPS control program)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from benchmarks import gpu_profile, report, serve_throughput
from benchmarks.gpu_profile import (
    CATEGORIES,
    CONV,
    COPY,
    D2H,
    ELEMENTWISE,
    H2D,
    MODULE_PREFIX,
    NORM,
    OTHER,
    RECURRENT,
    categorize,
)

torch = pytest.importorskip("torch", reason="the GPU profile runs the colorizer in torch")

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
SMOKE = ["--batch", "2", "--size", "64", "--warmup", "1", "--iterations", "2", "--profile-batches", "2"]


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("gpu-profile-cpu")
    assert (
        gpu_profile.main(
            ["--device", "cpu", *SMOKE, "--trace-dir", str(out / "traces"), "--out-dir", str(out)]
        )
        == 0
    )
    return out, json.loads((out / "gpu_profile_cpu.json").read_text())


def _shares(profile: dict[str, Any]) -> dict[str, float]:
    return {c["category"]: c["share"] for c in profile["categories"]}


def test_cpu_profile_of_the_colorizer(cpu_run: tuple[Path, dict[str, Any]]) -> None:
    """A real profile on the CPU: the network's convolutions, its ConvGRU (by module range), two batches,
    top operators with shapes; written to gpu_profile_cpu.json, never as the GPU file."""
    out, data = cpu_run
    assert not (out / "gpu_profile.json").exists()
    assert data["device"] == "cpu" and data["smoke"] is True and data["complete"] is True
    assert data["gpu"] is None and data["config"]["batch"] == 2 and data["config"]["height"] == 64
    served, eager = data["profiles"]["served"], data["profiles"]["eager"]
    for profile in (served, eager):
        assert profile["batches"] == 2
        assert [c["category"] for c in profile["categories"]] == list(CATEGORIES)
        assert sum(_shares(profile).values()) == pytest.approx(1.0)
        assert _shares(profile)[CONV] > 0.3  # a convolutional network spends most of its time in convolutions
        assert _shares(profile)[ELEMENTWISE] > 0
        line = profile["timeline"]
        assert 0 < line["busy_ms"] <= line["span_ms"] * 1.001 and 0 <= line["idle_fraction"] < 1
        top = profile["top_kernels"]
        assert 1 <= len(top) <= 15 and all(k["name"].startswith("aten::") for k in top)
        assert top[0]["share"] >= top[-1]["share"]
        assert Path(profile["trace"]).is_file()
    assert _shares(served)[RECURRENT] == 0  # replayed by name: no module ranges there
    assert _shares(eager)[RECURRENT] > 0  # the ConvGRU's kernels, known by the range around `gru`
    modules = {m["module"]: m["share"] for m in eager["modules"]}
    assert {"encoder", "gru", "propagate", "dec2"} <= set(modules)
    assert sum(modules.values()) == pytest.approx(1.0)
    convolution = next(k for k in served["top_kernels"] if k["name"] == "aten::mkldnn_convolution")
    assert convolution["category"] == CONV and convolution["shapes"]


def test_cpu_variants_and_findings(cpu_run: tuple[Path, dict[str, Any]]) -> None:
    _, data = cpu_run
    rows = {r["name"]: r for r in data["variants"]}
    assert rows["served: backend.run (numpy in and out)"]["fps"] > 0
    assert rows["eager, NCHW"]["fps"] > 0 and rows["eager, channels-last"]["fps"] > 0
    assert (
        rows["CUDA graph, NCHW"]["skipped"] == "CUDA graphs need CUDA"
        and "fps" not in rows["CUDA graph, NCHW"]
    )
    assert not any(r.get("compile") for r in data["variants"])  # no torch.compile on the CPU unless asked
    found = data["findings"]
    assert found == gpu_profile.findings(data)
    assert any("ConvGRU memory takes" in f and "CPU time" in f for f in found)
    assert any(f.startswith("channels-last: x") for f in found)
    assert not any("GPU" in f for f in found)  # a CPU run says nothing about a GPU


def test_report_shows_the_cpu_run_as_a_smoke_run_and_asks_for_the_gpu_one(
    cpu_run: tuple[Path, dict[str, Any]],
) -> None:
    out, data = cpu_run
    section = "\n".join(gpu_profile.report_section(data))
    assert "CPU smoke run (`--device cpu`)" in section and "not a GPU figure" in section
    assert "| convolution/GEMM |" in section and "| recurrent (ConvGRU) |" in section
    assert "`aten::mkldnn_convolution`" in section and "CUDA graphs need CUDA" in section
    for finding in data["findings"]:
        assert f"- {finding}" in section
    text = report.render(out, out / "RESULTS.md")
    gpu = text[text.index("## GPU profile") :]
    assert gpu.startswith(
        "## GPU profile (where the model's time goes)\n\n"
        "Not measured yet: run `make gpu-check` on a CUDA machine."
    )


def test_report_renders_a_gpu_file(cpu_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """gpu_profile.json gets the full section (here the CPU run's numbers under the GPU file's name, to
    check the layout only), and an unfinished run is marked."""
    _, data = cpu_run
    gpu = {**data, "device": "cuda", "complete": False, "gpu": {"name": "Some GPU", "capability": "9.0"}}
    (tmp_path / "gpu_profile.json").write_text(json.dumps(gpu))
    text = report.render(tmp_path, tmp_path / "RESULTS.md")
    assert "Not measured yet" not in text and "GPU: Some GPU (compute capability 9.0" in text
    assert "Incomplete run" in text and "CPU smoke run" not in text
    assert "`gpu_profile.json`" not in text  # not listed again among the other files


def test_categories_of_cuda_kernel_names() -> None:
    """The category rules on names as CUDA traces spell them (names only; the CUDA profile itself runs in
    the gpu test below)."""
    conv = (
        "sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x64x64_warpgroupsize1x1x1"
    )
    assert categorize(conv, ("aten::cudnn_convolution",)) == CONV
    assert (
        categorize("void cudnn::engines_precompiled::nchwToNhwcKernel<__half, __half, float, false>") == COPY
    )
    assert categorize("void at::native::(anonymous namespace)::CatArrayBatchedCopy_contig<...>") == COPY
    copy_kernel = "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(...)>"
    assert categorize(copy_kernel, ("aten::copy_", "aten::_to_copy")) == COPY
    sigmoid = "void at::native::vectorized_elementwise_kernel<4, at::native::sigmoid_kernel_cuda(...)>"
    assert categorize(sigmoid, ("aten::sigmoid",)) == ELEMENTWISE
    assert categorize(sigmoid, ("aten::sigmoid",), (MODULE_PREFIX + "gru",)) == RECURRENT
    assert categorize("void cudnn::bn_fw_inf_1C11_kernel_NCHW<__half, float, true, 1>") == NORM
    assert categorize("void at::native::upsample_bilinear2d_nhwc_out_frame<c10::Half, float>") == OTHER
    assert categorize("triton_poi_fused_add_relu_0") == ELEMENTWISE
    assert categorize("Memcpy HtoD (Pageable -> Device)", kind="memcpy") == H2D
    assert categorize("Memcpy DtoH (Device -> Pageable)", kind="memcpy") == D2H
    assert categorize("Memcpy DtoD (Device -> Device)", kind="memcpy") == COPY
    assert categorize("Memset (Device)", kind="memset") == OTHER
    assert categorize("aten::hardtanh", kind="cpu_op") == ELEMENTWISE
    assert categorize("aten::empty", ("aten::mkldnn_convolution",), kind="cpu_op") == CONV


def test_cuda_refused_without_a_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("checks the message where there is no CUDA device")
    assert gpu_profile.main(["--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "--device cpu" in err and "make gpu-check" in err
    assert not list(tmp_path.iterdir())


@pytest.mark.gpu
@needs_cuda
def test_cuda_profile_of_the_served_backend(tmp_path: Path) -> None:
    """The CUDA path end to end, small: real kernels tied to their batches, the upload and download in the
    served profile, graphs and layouts timed, the card named."""
    assert gpu_profile.main([*SMOKE, "--no-compile", "--out-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "gpu_profile.json").read_text())
    assert data["device"] == "cuda" and data["complete"] and data["gpu"]["name"]
    served, eager = data["profiles"]["served"], data["profiles"]["eager"]
    assert served["unattributed_share"] < 0.05 and eager["unattributed_share"] < 0.05
    assert _shares(served)[CONV] > 0 and _shares(served)[H2D] > 0 and _shares(served)[D2H] > 0
    assert served["memcpy"]["h2d"]["bytes_per_batch"] > 0
    assert _shares(eager)[RECURRENT] > 0
    assert not any(k["name"].startswith("aten::") for k in served["top_kernels"])
    assert served["timeline"]["busy_ms"] > 0 and served["timeline"]["launches"] >= 1
    rows = {r["name"]: r for r in data["variants"]}
    for name in ("served: backend.forward (device tensors)", "CUDA graph, channels-last", "eager, NCHW"):
        assert rows[name]["fps"] > 0, rows[name]
    text = "\n".join(gpu_profile.report_section(data))
    assert "CPU smoke run" not in text and data["gpu"]["name"] in text


# ----------------------------------------------------------------------------------- CUDA MPS (serve)


def test_mps_is_refused_clearly_without_the_control_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-cuda-mps-control on it
    args = ["--mps", "--quick", "--modes", "limit", "--out-dir", str(tmp_path)]
    assert serve_throughput.main(args) == 2
    err = capsys.readouterr().err
    assert "--mps needs nvidia-cuda-mps-control" in err and "run without --mps" in err
    assert not list(tmp_path.glob("*.json"))
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ


@pytest.mark.gpu
@pytest.mark.skipif(shutil.which("nvidia-cuda-mps-control") is None, reason="needs nvidia-cuda-mps-control")
def test_mps_daemon_runs_in_private_folders_and_stops() -> None:
    before = os.environ.get("CUDA_MPS_PIPE_DIRECTORY")
    with serve_throughput.mps_daemon() as folder:
        pipe = Path(os.environ["CUDA_MPS_PIPE_DIRECTORY"])
        assert pipe.parent == folder and Path(os.environ["CUDA_MPS_LOG_DIRECTORY"]).parent == folder
        assert serve_throughput.mps_server_pids() == []  # the daemon answers; no client has started a server
        assert pipe.is_dir()
    assert not folder.exists() and os.environ.get("CUDA_MPS_PIPE_DIRECTORY") == before


STAND_IN = """#!/bin/sh
# Stand-in for nvidia-cuda-mps-control: records what it was asked, with the pipe folder it was asked in.
log="{log}"
if [ "$1" = "-d" ]; then
    echo "start $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY" >> "$log"
    echo 0 > "$CUDA_MPS_PIPE_DIRECTORY/nvidia-cuda-mps-control.pid"
    exit 0
fi
read -r command
echo "$command $CUDA_MPS_PIPE_DIRECTORY" >> "$log"
[ "$command" = quit ] && rm -f "$CUDA_MPS_PIPE_DIRECTORY/nvidia-cuda-mps-control.pid"
exit 0
"""


def test_mps_run_asks_its_own_daemon_and_marks_the_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``--mps`` asks of the control program, seen through a stand-in that records it (the real
    program runs in the gpu test above): a daemon in private folders started before the rows, asked for its
    servers during each row, told to quit at the end; the rows say "mps", the file and section say so."""
    bin_dir, log = tmp_path / "bin", tmp_path / "mps.log"
    bin_dir.mkdir()
    stand_in = bin_dir / "nvidia-cuda-mps-control"
    stand_in.write_text(STAND_IN.format(log=log))
    stand_in.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "out"
    assert serve_throughput.main(["--mps", "--quick", "--modes", "limit", "--out-dir", str(out)]) == 0
    data = json.loads((out / "serve_throughput_mps.json").read_text())
    assert data["mps"] is True and not (out / "serve_throughput.json").exists()
    assert [(r["workers"], r["mps"], r["mps_servers"]) for r in data["rows"]] == [
        (1, True, []),
        (2, True, []),
    ]
    calls = log.read_text().splitlines()
    start, *asked, quit_call = calls
    pipe, log_dir = start.split()[1:]
    assert start.startswith("start ") and Path(pipe).name == "pipe" and Path(log_dir).name == "log"
    assert asked == [f"get_server_list {pipe}"] * 2 and quit_call == f"quit {pipe}"
    assert not Path(pipe).exists() and "CUDA_MPS_PIPE_DIRECTORY" not in os.environ
    section = "\n".join(serve_throughput.report_section(data))
    assert section.startswith("## Serve throughput (worker processes), under CUDA MPS")
    # RESULTS.md sets the rows of a run without MPS beside these (the same numbers here: layout only).
    plain = {**data, "mps": False, "rows": [{**r, "mps": False} for r in data["rows"]]}
    (out / "serve_throughput.json").write_text(json.dumps(plain))
    text = report.render(out, out / "RESULTS.md")
    table = text[text.index("## Serve on one GPU without and with CUDA MPS") :]
    assert "| 320x240 | 1 | limit | 2 |" in table and "| x1.00 |" in table
