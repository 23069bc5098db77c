"""Train the colorizer the way the project's paper gives it (NoGAN), stage by stage, resumably, on the CPU.

1. ``generator``: the generator alone, with a feature (perceptual) loss from the frozen ImageNet
   MobileNetV2, a Huber loss on ab and a temporal-consistency loss between the two frames of each
   synthetic clip (exact known motion). Randomized user hints are revealed on half of the samples.
2. ``critic``: a patch critic learns to tell the (frozen) generator's colours from real ones.
3. ``gan``: a short phase training both; it stops by itself at ``--steps`` and keeps the checkpoint with
   the best held-out colourfulness among those whose PSNR stays near the generator's.
Then ``gain`` tunes the chroma gain on held-out photographs and ``chromastream.models.colorizer.export``
writes ONNX.

Every stage checkpoints atomically every ``--save-every`` steps and on SIGINT/SIGTERM (``<run>/last.pt``):
running the same command again resumes where it stopped. Losses and held-out metrics are logged to
``<run>/log.jsonl`` (the training curve); the selected weights are ``<run>/best.pt``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from chromastream.kernels.lab_torch import lab_to_rgb, rgb_to_lab
from chromastream.models.colorizer import spec
from chromastream.models.colorizer.critic import Critic, adversarial_loss, critic_loss
from chromastream.models.colorizer.data import (
    Clip,
    ImageBank,
    VideoBank,
    davis_training_sequences,
    is_holdout,
    load_rgb,
    random_hints,
    training_images,
)
from chromastream.models.colorizer.mobilenet import MobileNetV2, load_tflite
from chromastream.models.colorizer.network import Colorizer, zero_state
from chromastream.models.colorizer.rebalance import ab_histogram, pixel_weights, rebalance_weights
from chromastream.models.shared_data import shared_root

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


def colourfulness_loss(pred_rgb: torch.Tensor, true_rgb: torch.Tensor) -> torch.Tensor:
    """Mean |CF(pred) - CF(true)| / 100 per picture, with CF the Hasler–Süsstrunk colourfulness
    (docs/ARCHITECTURE.md, Measures) of RGB ``[N, 3, H, W]`` in [0, 1]. The pixel losses are minimized by the
    average of the plausible colours, which is greyer than any of them; this term asks for the picture's
    overall colourfulness instead, and leaves it to the other losses to say where the colour goes (as
    DDColor's colourfulness loss does, but matched to the truth rather than maximized)."""

    def cf(rgb: torch.Tensor) -> torch.Tensor:
        x = rgb.float() * 255.0
        rg = x[:, 0] - x[:, 1]
        yb = 0.5 * (x[:, 0] + x[:, 1]) - x[:, 2]
        std = torch.sqrt(rg.flatten(1).var(1, unbiased=False) + yb.flatten(1).var(1, unbiased=False) + 1e-6)
        mean = torch.sqrt(rg.flatten(1).mean(1) ** 2 + yb.flatten(1).mean(1) ** 2 + 1e-6)
        return std + 0.3 * mean

    return (cf(pred_rgb) - cf(true_rgb)).abs().mean() / 100.0


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler–Süsstrunk colourfulness of an RGB image in 0..255 (docs/ARCHITECTURE.md, Measures)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


@torch.no_grad()
def evaluate(
    model: Colorizer, images: list[np.ndarray], size: int, gains: tuple[float, ...] = (1.0,)
) -> dict[float, dict[str, float]]:
    """Held-out PSNR / colourfulness error at each chroma gain (model's own gain times ``gain``)."""
    was_training = model.training
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
            psnr = 10 * math.log10(255.0**2 / max(float(mse), 1e-10))
            rows[g].append((psnr, abs(colourfulness(out) - cf_true)))
    model.train(was_training)
    model.encoder.eval()
    return {
        g: {"psnr": float(np.mean([r[0] for r in v])), "dcf": float(np.mean([r[1] for r in v]))}
        for g, v in rows.items()
    }


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


@dataclass
class Batch:
    """One training batch of T-frame clips in network units."""

    L: torch.Tensor  # [B, T, 1, S, S]
    ab: torch.Tensor  # [B, T, 2, S, S]
    rgb_last: torch.Tensor  # [B, 3, S, S]
    hints: torch.Tensor  # [B, 3, S, S], the same hints for every frame (a user's hints persist)
    flow_grid: torch.Tensor  # [B, T-1, S, S, 2]: frame t+1 pixels in frame t grid_sample coordinates
    valid: torch.Tensor  # [B, T-1, 1, S, S]: where that motion is trusted


class Banks:
    """Where clips come from: still photographs with synthetic motion, and DAVIS video when loaded."""

    def __init__(self, images: ImageBank, video: VideoBank | None, video_share: float):
        self.images, self.video, self.video_share = images, video, video_share

    def sample(self, rng: np.random.Generator, batch: int, size: int, frames: int) -> Clip:
        n_video = round(batch * self.video_share) if self.video is not None else 0
        parts = [self.images.sample(rng, batch - n_video, size, frames)] if batch > n_video else []
        if self.video is not None and n_video:
            parts.append(self.video.sample(rng, n_video, size, frames))
        return Clip.cat(parts)


def make_batch(banks: Banks, rng: np.random.Generator, batch: int, size: int, frames: int = 2) -> Batch:
    clip = banks.sample(rng, batch, size, frames)
    b, t = clip.frames.shape[:2]
    L, ab = to_lab(clip.frames.flatten(0, 1))
    L, ab = L.unflatten(0, (b, t)), ab.unflatten(0, (b, t))
    return Batch(L, ab, clip.frames[:, -1], random_hints(ab[:, 0], rng), clip.flow_grid, clip.valid)


def generator_losses(
    model: Colorizer, batch: Batch, args: argparse.Namespace, ab_weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """The stage-1 objective; returns (loss, its parts, the last frame's predicted ab). With
    ``ab_weights`` (:mod:`chromastream.models.colorizer.rebalance`), each pixel's ab loss is weighed by the
    rarity of its true colour."""
    b = batch.L.shape[0]
    state = zero_state(b, batch.L.shape[-2], batch.L.shape[-1])
    preds = []
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp):
        for i in range(batch.L.shape[1]):
            pred, state = model(batch.L[:, i], batch.hints, state)
            preds.append(pred.float())
    pred_ab = torch.stack(preds, 1)
    if ab_weights is None:
        loss_ab = F.smooth_l1_loss(pred_ab, batch.ab, beta=0.05)
    else:
        per_pixel = F.smooth_l1_loss(pred_ab, batch.ab, beta=0.05, reduction="none")
        loss_ab = (per_pixel * pixel_weights(batch.ab, ab_weights)).mean()
    # The feature loss looks at the last frame only: it costs as much as the rest of the step.
    pred_rgb = to_rgb(batch.L[:, -1], pred_ab[:, -1])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp):
        loss_feat = feature_loss(model.encoder, pred_rgb, batch.rgb_last).float()
    loss_cf = colourfulness_loss(pred_rgb, batch.rgb_last) if args.w_cf > 0 else torch.zeros(())
    # Temporal consistency: each frame's colours against the previous frame's, moved by the known (or
    # DIS-estimated) motion, where that motion is trusted.
    loss_temp = torch.zeros(())
    for t in range(pred_ab.shape[1] - 1):
        grid, valid = batch.flow_grid[:, t], batch.valid[:, t]
        warped = F.grid_sample(pred_ab[:, t], grid, mode="bilinear", align_corners=False)
        loss_temp = loss_temp + ((warped - pred_ab[:, t + 1]).abs() * valid).sum() / (2 * valid.sum() + 1)
    loss_temp = loss_temp / max(pred_ab.shape[1] - 1, 1)
    loss = loss_ab + args.w_feat * loss_feat + args.w_temp * loss_temp + args.w_cf * loss_cf
    parts = {"ab": loss_ab.item(), "feat": loss_feat.item(), "temp": loss_temp.item(), "cf": loss_cf.item()}
    return loss, parts, pred_ab[:, -1]


def ema_update(ema: nn.Module, model: nn.Module, step: int, decay: float) -> None:
    with torch.no_grad():
        d = min(decay, (1 + step) / (10 + step))
        for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
            if pm.requires_grad:
                pe.lerp_(pm, 1 - d)


@contextmanager
def stop_on_signal() -> Iterator[Callable[[], bool]]:
    """SIGINT/SIGTERM ask the loop to stop after the current step (and checkpoint); handlers restored."""
    stop = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield lambda: stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Run:
    """A run folder: data, held-out set, the objects to checkpoint, the log."""

    def __init__(self, args: argparse.Namespace, objects: dict[str, Any]):
        torch.set_num_threads(args.threads)
        self.args = args
        self.dir: Path = args.run
        self.dir.mkdir(parents=True, exist_ok=True)
        paths = training_images(args.shared)
        train_paths = [p for p in paths if not is_holdout(p)]
        holdout_paths = [p for p in paths if is_holdout(p)][: args.holdout]
        print(f"training images: {len(train_paths)}, held out: {len(holdout_paths)}", flush=True)
        if args.limit_images:
            train_paths = train_paths[: args.limit_images]
        images = ImageBank(train_paths)
        video = None
        if args.video_share > 0:
            sequences = davis_training_sequences(args.shared, spec.DAVIS_EVAL_SEQUENCES)
            video = VideoBank(sequences[: args.limit_sequences] if args.limit_sequences else sequences)
            print(f"training video: {', '.join(p.name for p in sequences)} ({len(video)} frames)", flush=True)
        self.bank = Banks(images, video, args.video_share)
        self.holdout = [load_rgb(p, 256) for p in holdout_paths]
        self.ab_weights = self._ab_weights(train_paths) if args.rebalance > 0 else None
        self.objects = objects
        self.rng = np.random.default_rng(args.seed)
        self.step = 0
        self.best = -math.inf
        self.extra: dict[str, Any] = {}
        last = self.dir / "last.pt"
        if last.exists():
            ckpt = torch.load(last, map_location="cpu", weights_only=False)
            for key, obj in objects.items():
                obj.load_state_dict(ckpt[key])
            self.step, self.best = ckpt["step"], ckpt["best"]
            self.extra = ckpt.get("extra", {})
            self.rng.bit_generator.state = ckpt["rng"]
            print(f"resumed from {last} at step {self.step}", flush=True)
        self._log = (self.dir / "log.jsonl").open("a")

    def _ab_weights(self, train_paths: list[Path]) -> torch.Tensor:
        """Colour-rebalancing weights from the training photographs' ab histogram (cached in the run)."""
        cache = self.dir / "ab_histogram.npy"
        if cache.exists():
            hist = np.load(cache)
        else:
            hist = ab_histogram(load_rgb(p, 64) for p in train_paths)
            np.save(cache, hist)
        weights = rebalance_weights(hist, self.args.rebalance)
        print(
            f"colour rebalancing: lambda {self.args.rebalance}, weights {weights[weights > 0].min():.2f}"
            f"..{weights.max():.2f}",
            flush=True,
        )
        return torch.from_numpy(weights).float()

    def keep_if_better(self, ema: nn.Module, metrics: dict[str, float]) -> None:
        """Keep ``best.pt`` by the held-out metrics: the highest PSNR (``--select psnr``), or the smallest
        colourfulness error among checkpoints within ``--max-psnr-drop`` dB of where the stage started
        (``--select dcf``): livelier colour, bought with a bounded, measured loss of PSNR."""
        if self.args.select == "psnr":
            score, eligible = metrics["psnr"], True
        else:
            score = -metrics["dcf"]
            eligible = metrics["psnr"] >= self.extra["start"]["psnr"] - self.args.max_psnr_drop
        if eligible and score > self.best:
            self.best = score
            best = {"ema": ema.state_dict(), "step": self.step, "holdout": metrics}
            save_atomic(best, self.dir / "best.pt")

    def log_start(self, ema: Colorizer) -> None:
        """Measure the held-out start point once per run (the reference of ``--select dcf``)."""
        if "start" not in self.extra:
            self.extra["start"] = evaluate(ema, self.holdout, 256)[1.0]
            self.log({"step": self.step, "holdout": self.extra["start"]})

    def checkpoint(self) -> None:
        state = {key: obj.state_dict() for key, obj in self.objects.items()}
        state.update(step=self.step, best=self.best, extra=self.extra, rng=self.rng.bit_generator.state)
        state["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.args).items()}
        save_atomic(state, self.dir / "last.pt")

    def log(self, record: dict[str, Any]) -> None:
        print(json.dumps(record), flush=True)
        self._log.write(json.dumps(record) + "\n")
        self._log.flush()

    def lr(self, base: float) -> float:
        a = self.args
        return (
            base * min(1.0, (self.step + 1) / a.warmup) * 0.5 * (1 + math.cos(math.pi * self.step / a.steps))
        )

    def loop(self, train_step: Callable[[], dict[str, float]], on_eval: Callable[[], None]) -> None:
        a = self.args
        with stop_on_signal() as stopped:
            t0 = time.time()
            while self.step < a.steps and not stopped():
                parts = train_step()
                self.step += 1
                if self.step % a.log_every == 0:
                    self.log({"step": self.step, **parts, "sec_per_step": (time.time() - t0) / a.log_every})
                    t0 = time.time()
                if self.step % a.eval_every == 0 or self.step == a.steps:
                    on_eval()
                    t0 = time.time()
                if self.step % a.save_every == 0:
                    self.checkpoint()
            self.checkpoint()
        self._log.close()
        print(f"stopped at step {self.step}; checkpoint {self.dir / 'last.pt'}", flush=True)


def _load_generator(model: Colorizer, path: Path) -> None:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(ckpt["ema"])


def load_initial_weights(model: Colorizer, path: Path) -> None:
    """Start from earlier weights: a training checkpoint (its EMA) or a shipped ONNX file (whose
    initializers carry the module's parameter names). The chroma gain is folded into the output layer, so
    training continues from the same colours with a gain of 1; layers the earlier network lacked keep their
    (neutral, zero) initialization."""
    if path.suffix == ".onnx":
        import onnx
        from onnx import numpy_helper

        proto = onnx.load(str(path))
        state = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in proto.graph.initializer}
        state = {k: v for k, v in state.items() if k in model.state_dict()}
    else:
        state = torch.load(path, map_location="cpu", weights_only=False)["ema"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("hint2.") for k in missing):
        raise ValueError(f"{path} does not fit the network: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        gain = float(model.ab_gain)
        for param in model.head.parameters():
            param.mul_(gain)
        model.ab_gain.fill_(1.0)
    print(f"initialized from {path} (chroma gain {gain:g} folded in; new: {missing or 'none'})", flush=True)


def train_generator(args: argparse.Namespace) -> None:
    model = build_model(args.shared)
    if args.init is not None and not (args.run / "last.pt").exists():
        load_initial_weights(model, args.init)
    model.train()
    model.encoder.eval()
    params = model.decoder_parameters()
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    ema = copy.deepcopy(model)
    run = Run(args, {"model": model, "ema": ema, "opt": opt})
    if args.select == "dcf":
        run.log_start(ema)

    def train_step() -> dict[str, float]:
        lr = run.lr(args.lr)
        for group in opt.param_groups:
            group["lr"] = lr
        loss, parts, _ = generator_losses(
            model, make_batch(run.bank, run.rng, args.batch, args.size, args.frames), args, run.ab_weights
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_update(ema, model, run.step, args.ema)
        return {"lr": lr, "loss": loss.item(), **parts}

    def on_eval() -> None:
        metrics = evaluate(ema, run.holdout, 256)[1.0]
        run.log({"step": run.step, "holdout": metrics})
        run.keep_if_better(ema, metrics)

    run.loop(train_step, on_eval)


def train_critic(args: argparse.Namespace) -> None:
    generator = build_model(args.shared)
    _load_generator(generator, args.generator)
    generator.eval()
    critic = Critic()
    opt = torch.optim.Adam(critic.parameters(), lr=args.lr, betas=(0.0, 0.9))
    run = Run(args, {"critic": critic, "opt": opt})

    def train_step() -> dict[str, float]:
        batch = make_batch(run.bank, run.rng, args.batch, args.size, args.frames)
        with torch.no_grad():
            fake_ab, _ = generator(batch.L[:, -1], batch.hints, zero_state(args.batch, args.size, args.size))
        real, fake = critic(batch.L[:, -1], batch.ab[:, -1]), critic(batch.L[:, -1], fake_ab)
        loss = critic_loss(real, fake)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc = 0.5 * ((real > 0).float().mean() + (fake < 0).float().mean())
        return {"critic_loss": loss.item(), "critic_acc": acc.item()}

    def on_eval() -> None:
        save_atomic({"critic": critic.state_dict(), "step": run.step}, run.dir / "best.pt")

    run.loop(train_step, on_eval)


def train_gan(args: argparse.Namespace) -> None:
    model = build_model(args.shared)
    _load_generator(model, args.generator)
    model.train()
    model.encoder.eval()
    critic = Critic()
    critic.load_state_dict(torch.load(args.critic, map_location="cpu", weights_only=False)["critic"])
    params = model.decoder_parameters()
    g_opt = torch.optim.Adam(params, lr=args.lr, betas=(0.0, 0.9))
    c_opt = torch.optim.Adam(critic.parameters(), lr=args.lr, betas=(0.0, 0.9))
    ema = copy.deepcopy(model)
    run = Run(args, {"model": model, "ema": ema, "critic": critic, "g_opt": g_opt, "c_opt": c_opt})
    run.log_start(ema)

    def train_step() -> dict[str, float]:
        batch = make_batch(run.bank, run.rng, args.batch, args.size, args.frames)
        loss, parts, fake_ab = generator_losses(model, batch, args, run.ab_weights)
        adv = adversarial_loss(critic(batch.L[:, -1], fake_ab))
        g_opt.zero_grad(set_to_none=True)
        (loss + args.w_adv * adv).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        g_opt.step()
        ema_update(ema, model, run.step, args.ema)
        real, fake = critic(batch.L[:, -1], batch.ab[:, -1]), critic(batch.L[:, -1], fake_ab.detach())
        c_loss = critic_loss(real, fake)
        c_opt.zero_grad(set_to_none=True)
        c_loss.backward()
        c_opt.step()
        return {"loss": loss.item(), **parts, "adv": adv.item(), "critic_loss": c_loss.item()}

    def on_eval() -> None:
        # The GAN phase trades a little PSNR for livelier colour (--select dcf by default).
        metrics = evaluate(ema, run.holdout, 256)[1.0]
        run.log({"step": run.step, "holdout": metrics})
        run.keep_if_better(ema, metrics)

    run.loop(train_step, on_eval)


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
    gains = tuple(round(0.6 + 0.1 * i, 2) for i in range(15))
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


def _common(
    p: argparse.ArgumentParser, run: str, steps: int, lr: float, batch: int, select: str = "psnr"
) -> None:
    p.add_argument("--run", type=Path, default=Path(run), help="run folder (checkpoints, logs)")
    p.add_argument("--shared", type=Path, default=shared_root(), help="shared data folder")
    p.add_argument("--steps", type=int, default=steps, help="total steps (a resumed run may change it)")
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--size", type=int, default=192, help="training crop side (multiple of 32)")
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--w-feat", type=float, default=0.5, help="feature-loss weight")
    p.add_argument("--w-temp", type=float, default=1.0, help="temporal-consistency weight")
    p.add_argument(
        "--w-cf", type=float, default=0.0, help="colourfulness-loss weight (match the truth's colourfulness)"
    )
    p.add_argument("--ema", type=float, default=0.998, help="EMA decay of the evaluated/exported weights")
    p.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=cpu_has_bf16(),
        help="bf16 autocast (default: on where the CPU computes bf16 natively, AVX512-BF16 or AMX; on CPUs "
        "without it PyTorch emulates bf16 and a step is several times slower than in fp32)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--frames", type=int, default=2, help="frames per training clip (the memory unrolls over them)"
    )
    p.add_argument(
        "--video-share", type=float, default=0.0, help="share of each batch cut from DAVIS training video"
    )
    p.add_argument("--limit-sequences", type=int, default=0, help="use only the first N DAVIS sequences")
    p.add_argument(
        "--rebalance",
        type=float,
        default=0.0,
        metavar="LAMBDA",
        help="weigh each pixel's ab loss by the rarity of its true colour (Zhang et al. 2016; 0.5 as in the "
        "paper, 0: off)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout", type=int, default=60, help="held-out images evaluated during training")
    p.add_argument("--limit-images", type=int, default=0, help="use only the first N images (smoke runs)")
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument(
        "--select",
        choices=("psnr", "dcf"),
        default=select,
        help="best.pt: highest held-out PSNR, or smallest colourfulness error within --max-psnr-drop of "
        "the start",
    )
    p.add_argument("--max-psnr-drop", type=float, default=0.3, help="PSNR --select dcf may give up (dB)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="stage", required=True)
    gen = sub.add_parser("generator", help="stage 1: generator with feature + ab + temporal losses")
    _common(gen, "runs/generator", 3000, 2e-3, 8)
    gen.add_argument(
        "--init", type=Path, default=None, help="start from these weights (.pt checkpoint or .onnx)"
    )
    crit = sub.add_parser("critic", help="stage 2: critic against the frozen generator")
    _common(crit, "runs/critic", 500, 2e-4, 8)
    crit.add_argument("--generator", type=Path, required=True, help="generator checkpoint (best.pt)")
    gan = sub.add_parser("gan", help="stage 3: short GAN phase, generator and critic together")
    _common(gan, "runs/gan", 500, 5e-5, 8, select="dcf")
    gan.add_argument("--generator", type=Path, required=True, help="generator checkpoint (best.pt)")
    gan.add_argument("--critic", type=Path, required=True, help="critic checkpoint (best.pt)")
    gan.add_argument("--w-adv", type=float, default=0.02, help="adversarial-loss weight")
    gain = sub.add_parser("gain", help="tune the chroma gain of a checkpoint on held-out photographs")
    gain.add_argument("checkpoint", type=Path)
    gain.add_argument("output", type=Path)
    gain.add_argument("--shared", type=Path, default=shared_root())
    gain.add_argument("--max-psnr-drop", type=float, default=0.3)
    gain.add_argument("--holdout", type=int, default=0, help="use only the first N held-out images (0: all)")
    args = parser.parse_args(argv)
    stages: dict[str, Callable[[argparse.Namespace], None]] = {
        "generator": train_generator,
        "critic": train_critic,
        "gan": train_gan,
        "gain": tune_gain,
    }
    stages[args.stage](args)


if __name__ == "__main__":
    main()
