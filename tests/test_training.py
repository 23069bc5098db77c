"""Smoke run of the training stages and the export: a few steps on a few real photographs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from chromastream.models.colorizer import spec  # noqa: E402
from chromastream.models.colorizer.data import training_images  # noqa: E402
from chromastream.models.colorizer.export import export_onnx  # noqa: E402
from chromastream.models.colorizer.network import Colorizer, zero_state  # noqa: E402
from chromastream.models.colorizer.train import main as train_main  # noqa: E402
from chromastream.models.runtime.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from chromastream.models.shared_data import shared_root  # noqa: E402

SHARED = shared_root()
needs_shared = pytest.mark.skipif(
    not (SHARED / "data").is_dir() and os.environ.get("CI") != "true",
    reason=f"shared data not found at {SHARED}",
)


@needs_shared
def test_training_set_never_reads_eval() -> None:
    paths = training_images(SHARED)
    assert len(paths) > 1000
    assert all("/eval/" not in str(p) for p in paths)


@needs_shared
def test_generator_smoke_resumes_and_exports(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # fmt: off
    tiny = ["--batch", "2", "--size", "64", "--limit-images", "6", "--holdout", "2",
            "--log-every", "1", "--eval-every", "2", "--save-every", "1"]
    # fmt: on
    # Three-frame clips, half of them real DAVIS motion, starting from the shipped network's weights.
    video = ["--frames", "3", "--video-share", "0.5", "--limit-sequences", "1"]
    shipped = Path(__file__).resolve().parents[1] / "models" / "weights" / "colorizer.onnx"
    # Colour rebalancing and the colourfulness loss on, selecting by colourfulness as the GAN phase does.
    rebalance = ["--rebalance", "0.5", "--w-cf", "1", "--select", "dcf", "--max-psnr-drop", "100"]
    common = ["generator", "--run", str(run), *tiny, *video, *rebalance, "--init", str(shipped)]
    train_main([*common, "--steps", "2"])
    first = torch.load(run / "last.pt", weights_only=False)
    assert first["step"] == 2
    train_main([*common, "--steps", "3"])  # picks up at step 2
    ckpt = torch.load(run / "last.pt", weights_only=False)
    assert ckpt["step"] == 3
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in log if "loss" in r)
    assert any("holdout" in r for r in log)
    assert (run / "ab_histogram.npy").exists() and (run / "best.pt").exists()
    # Decoder weights moved; the frozen encoder did not.
    before, after = first["model"], ckpt["model"]
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert torch.equal(before["encoder.stem.weight"], after["encoder.stem.weight"])

    # Stages 2 and 3 of the NoGAN schedule start from the generator's selected weights.
    small = [*tiny, "--steps", "2"]
    train_main(["critic", "--run", str(tmp_path / "critic"), "--generator", str(run / "best.pt"), *small])
    critic_log = [json.loads(line) for line in (tmp_path / "critic" / "log.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["critic_acc"] <= 1.0 for r in critic_log if "critic_acc" in r)
    train_main(
        [
            "gan",
            "--run",
            str(tmp_path / "gan"),
            "--generator",
            str(run / "best.pt"),
            "--critic",
            str(tmp_path / "critic" / "best.pt"),
            "--max-psnr-drop",
            "100",
            *small,
        ]
    )
    gan_log = [json.loads(line) for line in (tmp_path / "gan" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in gan_log if "adv" in r] == [1, 2]
    assert (tmp_path / "gan" / "best.pt").exists()

    tuned = tmp_path / "tuned.pt"
    train_main(["gain", str(run / "last.pt"), str(tuned), "--holdout", "2"])
    gain = torch.load(tuned, weights_only=False)["gain"]
    assert 0.6 <= gain <= 2.0


def test_onnx_export_matches_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Colorizer().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = tmp_path / "m.onnx"
    export_onnx(model, path, "test-1", size=64)
    backend = OnnxRuntimeBackend(path, threads=1)
    assert backend.info.version == "test-1"
    assert backend.info.state_channels == spec.STATE_CHANNELS
    rng = np.random.default_rng(0)
    L = rng.random((2, 1, 96, 128), dtype=np.float32)
    hints = np.zeros((2, 3, 96, 128), np.float32)
    hints[:, :, 40:44, 60:64] = np.array([0.3, -0.2, 1.0], np.float32)[:, None, None]
    state = rng.standard_normal((2, spec.STATE_CHANNELS, 6, 8)).astype(np.float32) * 0.1
    ab, state_out = backend.run(L, hints, state)
    with torch.no_grad():
        ab_t, state_t = model(torch.from_numpy(L), torch.from_numpy(hints), torch.from_numpy(state))
    np.testing.assert_allclose(ab, ab_t.numpy(), atol=1e-4)
    np.testing.assert_allclose(state_out, state_t.numpy(), atol=1e-4)
    assert state_out.shape == zero_state(2, 96, 128).shape
