"""Train the colorizer, stage by stage, resumably, on the CPU.

Stage ``generator`` (the paper's first phase): the generator alone, with a feature (perceptual) loss from
the frozen ImageNet MobileNetV2 plus a Huber loss on ab and a temporal-consistency loss between the two
frames of each synthetic clip. Randomized user hints are revealed on half of the samples.

Everything needed to continue is checkpointed atomically every ``--save-every`` steps and on SIGINT/SIGTERM
(``<run>/last.pt``); starting the same command again resumes where it stopped. Held-out metrics are logged
to ``<run>/log.jsonl`` and the best weights by held-out PSNR are kept in ``<run>/best.pt``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kernels.lab_torch import lab_to_rgb, rgb_to_lab
from models.colorizer import spec
from models.colorizer.data import ImageBank, is_holdout, load_rgb, random_hints, shared_root, training_images
from models.colorizer.mobilenet import MobileNetV2, load_tflite
from models.colorizer.network import Colorizer, zero_state

TFLITE_PATH = Path("weights/coral-tflite/mobilenet_v2_1.0_224_quant.tflite")


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (Linux /proc/cpuinfo flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def build_model(shared: Path) -> Colorizer:
    encoder = load_tflite(shared / TFLITE_PATH)
    for p in encoder.parameters():
        p.requires_grad_(False)
    return Colorizer(encoder)


def to_lab(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB ``[N, 3, H, W]`` -> (L / L_SCALE ``[N, 1, H, W]``, ab / AB_SCALE ``[N, 2, H, W]``)."""
    lab = rgb_to_lab(rgb)
    return lab[:, :1] / spec.L_SCALE, lab[:, 1:] / spec.AB_SCALE


def to_rgb(L: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    return lab_to_rgb(torch.cat([L * spec.L_SCALE, ab * spec.AB_SCALE], 1))


def feature_loss(net: MobileNetV2, pred_rgb: torch.Tensor, true_rgb: torch.Tensor) -> torch.Tensor:
    """L1 between MobileNetV2 features at 1/4, 1/8 and 1/16: colours that make objects look like what
    they are, without forcing the one exact hue that plain regression averages into sepia."""

    def norm(x: torch.Tensor) -> torch.Tensor:
        return (x * 255.0 - 128.0) / 128.0

    pred = net.features(norm(pred_rgb), upto=12)[1:]
    with torch.no_grad():
        true = net.features(norm(true_rgb), upto=12)[1:]
    return sum((F.l1_loss(p, t) for p, t in zip(pred, true, strict=True)), torch.zeros(())) / len(pred)


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler–Süsstrunk colourfulness of an RGB image in 0..255 (GUIDE.md §4)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


@torch.no_grad()
def evaluate(
    model: Colorizer, images: list[np.ndarray], size: int, gains: tuple[float, ...] = (1.0,)
) -> dict[float, dict[str, float]]:
    """Held-out PSNR / colourfulness error at each chroma gain (model's own gain times ``gain``)."""
    model.eval()
    rows: dict[float, list[tuple[float, float]]] = {g: [] for g in gains}
    for img in images:
        rgb = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
        L, _ = to_lab(rgb)
        h, w = img.shape[:2]
        scale = size / min(h, w)
        wh, ww = (max(32, round(v * scale / 32) * 32) for v in (h, w))
        small = F.interpolate(L, size=(wh, ww), mode="area")
        ab, _ = model(small, torch.zeros(1, 3, wh, ww), zero_state(1, wh, ww))
        ab = F.interpolate(ab, size=(h, w), mode="bilinear", align_corners=False)
        cf_true = colourfulness(img)
        for g in gains:
            out = (to_rgb(L, ab * g)[0].permute(1, 2, 0).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
            mse = np.mean((out.astype(np.float64) - img.astype(np.float64)) ** 2)
            psnr = 10 * math.log10(255.0**2 / max(mse, 1e-10))
            rows[g].append((psnr, abs(colourfulness(out) - cf_true)))
    model.train()
    model.encoder.eval()
    return {
        g: {"psnr": float(np.mean([r[0] for r in v])), "dcf": float(np.mean([r[1] for r in v]))}
        for g, v in rows.items()
    }


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def train_generator(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    shared = args.shared
    run: Path = args.run
    run.mkdir(parents=True, exist_ok=True)
    paths = training_images(shared)
    train_paths = [p for p in paths if not is_holdout(p)]
    holdout_paths = [p for p in paths if is_holdout(p)][: args.holdout]
    print(f"training images: {len(train_paths)}, held out: {len(holdout_paths)}", flush=True)
    bank = ImageBank(train_paths[: args.limit_images] if args.limit_images else train_paths)
    holdout = [load_rgb(p, 256) for p in holdout_paths]

    model = build_model(shared)
    model.train()
    model.encoder.eval()
    params = model.decoder_parameters()
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    ema = copy.deepcopy(model)
    step, best = 0, -1.0
    rng = np.random.default_rng(args.seed)
    last = run / "last.pt"
    if last.exists():
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["opt"])
        step, best = ckpt["step"], ckpt["best"]
        rng.bit_generator.state = ckpt["rng"]
        print(f"resumed from {last} at step {step}", flush=True)

    def checkpoint() -> None:
        save_atomic(
            {
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "best": best,
                "rng": rng.bit_generator.state,
                "args": vars(args),
            },
            last,
        )

    stop = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        log = (run / "log.jsonl").open("a")
        t0 = time.time()
        while step < args.steps and not stop:
            lr = (
                args.lr
                * min(1.0, (step + 1) / args.warmup)
                * 0.5
                * (1 + math.cos(math.pi * step / args.steps))
            )
            for group in opt.param_groups:
                group["lr"] = lr
            clip = bank.sample(rng, args.batch, args.size, frames=2)
            b, t = clip.frames.shape[:2]
            L, ab = to_lab(clip.frames.flatten(0, 1))
            L, ab = L.unflatten(0, (b, t)), ab.unflatten(0, (b, t))
            hints = random_hints(ab[:, 0], rng)
            state = zero_state(b, args.size, args.size)
            preds = []
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp):
                for i in range(t):
                    pred, state = model(L[:, i], hints, state)
                    preds.append(pred.float())
            pred_ab = torch.stack(preds, 1)
            loss_ab = F.smooth_l1_loss(pred_ab, ab, beta=0.05)
            # The feature loss looks at the last frame only: it costs as much as the rest of the step.
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp):
                loss_feat = feature_loss(
                    model.encoder, to_rgb(L[:, -1], pred_ab[:, -1]), clip.frames[:, -1]
                ).float()
            warped = F.grid_sample(pred_ab[:, 0], clip.flow_grid, mode="bilinear", align_corners=False)
            valid = (clip.flow_grid.abs() <= 1).all(-1, keepdim=True).permute(0, 3, 1, 2).float()
            loss_temp = ((warped - pred_ab[:, -1]).abs() * valid).sum() / (2 * valid.sum() + 1)
            loss = loss_ab + args.w_feat * loss_feat + args.w_temp * loss_temp
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            with torch.no_grad():
                decay = min(args.ema, (1 + step) / (10 + step))
                for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                    if pm.requires_grad:
                        pe.lerp_(pm, 1 - decay)
            step += 1
            if step % args.log_every == 0:
                rec = {
                    "step": step,
                    "lr": lr,
                    "loss": loss.item(),
                    "ab": loss_ab.item(),
                    "feat": loss_feat.item(),
                    "temp": loss_temp.item(),
                    "sec_per_step": (time.time() - t0) / args.log_every,
                }
                t0 = time.time()
                print(json.dumps(rec), flush=True)
                log.write(json.dumps(rec) + "\n")
                log.flush()
            if step % args.eval_every == 0 or step == args.steps:
                metrics = evaluate(ema, holdout, 256)[1.0]
                rec = {"step": step, "holdout": metrics}
                print(json.dumps(rec), flush=True)
                log.write(json.dumps(rec) + "\n")
                log.flush()
                if metrics["psnr"] > best:
                    best = metrics["psnr"]
                    save_atomic({"ema": ema.state_dict(), "step": step, "holdout": metrics}, run / "best.pt")
                t0 = time.time()
            if step % args.save_every == 0:
                checkpoint()
        checkpoint()
        log.close()
        print(f"stopped at step {step}; checkpoint {last}", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def tune_gain(args: argparse.Namespace) -> None:
    """Pick the chroma gain on held-out photographs: among the gains whose PSNR stays within
    ``--max-psnr-drop`` dB of the best one, the one whose colourfulness is closest to the truth's.
    Regression leaves colours timid, which is what people notice; PSNR alone would keep them grey."""
    shared = args.shared
    paths = [p for p in training_images(shared) if is_holdout(p)][: args.holdout or None]
    holdout = [load_rgb(p, 256) for p in paths]
    model = build_model(shared)
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    model.load_state_dict(ckpt["ema"])
    gains = tuple(round(1.0 + 0.1 * i, 2) for i in range(11))
    results = evaluate(model, holdout, 256, gains)
    best_psnr = max(r["psnr"] for r in results.values())
    ok = [g for g in gains if results[g]["psnr"] >= best_psnr - args.max_psnr_drop]
    chosen = min(ok, key=lambda g: results[g]["dcf"])
    model.ab_gain.fill_(chosen)
    ckpt["ema"] = model.state_dict()
    ckpt["gain_sweep"] = {str(g): r for g, r in results.items()}
    ckpt["gain"] = chosen
    save_atomic(ckpt, args.output)
    print(json.dumps({"chosen_gain": chosen, "sweep": ckpt["gain_sweep"]}, indent=1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="stage", required=True)
    gen = sub.add_parser("generator", help="stage 1: generator with feature + ab + temporal losses")
    gen.add_argument(
        "--run", type=Path, default=Path("runs/generator"), help="run folder (checkpoints, logs)"
    )
    gen.add_argument("--shared", type=Path, default=shared_root())
    gen.add_argument("--steps", type=int, default=6000)
    gen.add_argument("--batch", type=int, default=8)
    gen.add_argument("--size", type=int, default=192, help="training crop side (multiple of 32)")
    gen.add_argument("--lr", type=float, default=2e-3)
    gen.add_argument("--warmup", type=int, default=200)
    gen.add_argument("--w-feat", type=float, default=0.5)
    gen.add_argument("--w-temp", type=float, default=1.0)
    gen.add_argument("--ema", type=float, default=0.998)
    gen.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=cpu_has_bf16(),
        help="bf16 autocast (default: on where the CPU computes bf16 natively, AVX512-BF16 or AMX; on CPUs "
        "without it PyTorch emulates bf16 and a step is several times slower than in fp32)",
    )
    gen.add_argument("--threads", type=int, default=2)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--holdout", type=int, default=60, help="held-out images used during training")
    gen.add_argument("--limit-images", type=int, default=0, help="use only the first N images (smoke runs)")
    gen.add_argument("--log-every", type=int, default=20)
    gen.add_argument("--eval-every", type=int, default=250)
    gen.add_argument("--save-every", type=int, default=100)
    gain = sub.add_parser("gain", help="tune the chroma gain of a checkpoint on held-out photographs")
    gain.add_argument("checkpoint", type=Path)
    gain.add_argument("output", type=Path)
    gain.add_argument("--shared", type=Path, default=shared_root())
    gain.add_argument("--max-psnr-drop", type=float, default=0.3)
    gain.add_argument("--holdout", type=int, default=0, help="use only the first N held-out images (0: all)")
    args = parser.parse_args(argv)
    if args.stage == "generator":
        train_generator(args)
    else:
        tune_gain(args)


if __name__ == "__main__":
    main()
