"""Train the deepfake classifier on self-blended images (SBI), resumably, on the CPU.

``python -m chromastream.models.detector.train --run runs/detector`` first detects and aligns every real face
once (``<run>/faces.npz``), then trains the classifier on balanced batches: each sampled real face appears as
itself and as its own self-blended fake, both through the same input augmentations (grey, low light,
compression, down-up scaling, noise), so the only difference the network can learn is the blending.
Identities in the held-out split (:func:`chromastream.models.detector.data.split_of`) are never trained on;
their fixed views (real and SBI fake, seeded by file name) are scored every ``--eval-every`` steps, and the
EMA weights with the best calibration-half AUC are kept in ``<run>/best.pt``.

Checkpoints are atomic (``<run>/last.pt`` every ``--save-every`` steps and on SIGINT/SIGTERM); running
the same command again resumes. Losses and held-out metrics go to ``<run>/log.jsonl``. Then run
``python -m chromastream.models.detector.calibration --run <run>`` and ``python -m
chromastream.models.detector.export``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from chromastream.models.colorizer.train import ema_update, save_atomic, stop_on_signal
from chromastream.models.detector.classifier import INPUT_SIZE, DeepfakeNet, build_classifier, parameter_count
from chromastream.models.detector.data import FaceBank, build_bank, input_crop, real_face_paths, split_of
from chromastream.models.detector.faces import FaceDetector
from chromastream.models.detector.metrics import log_loss, roc_auc, sigmoid
from chromastream.models.detector.sbi import augment_input, self_blend
from chromastream.models.shared_data import shared_root


def load_bank(run: Path, shared: Path, limit: int = 0) -> FaceBank:
    """The aligned faces of the run, detected once and cached in ``<run>/faces.npz``."""
    cache = run / "faces.npz"
    if cache.exists():
        return FaceBank.load(cache)
    paths = real_face_paths(shared)
    if limit:
        # Smoke runs: a few faces from each split, so every code path has data.
        by_split: dict[str, list[Path]] = {"train": [], "calib": [], "eval": []}
        for p in paths:
            by_split[split_of(p)].append(p)
        paths = [p for group in by_split.values() for p in group[:limit]]
    t0 = time.time()
    bank, missed = build_bank(paths, FaceDetector())
    info = {"faces": len(bank), "no_face_found": missed, "seconds": round(time.time() - t0, 1)}
    print(json.dumps({"face_cache": info}), flush=True)
    (run / "faces_missed.json").write_text(json.dumps(info, indent=1))
    bank.save(cache)
    return bank


def split_bank(bank: FaceBank) -> dict[str, FaceBank]:
    groups: dict[str, list[int]] = {"train": [], "calib": [], "eval": []}
    for i, name in enumerate(bank.names):
        groups[split_of(Path(name))].append(i)
    return {k: bank.subset(v) for k, v in groups.items()}


def make_pair(bank: FaceBank, i: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One real input crop and its self-blended fake, each augmented independently."""
    fake_ctx, _ = self_blend(bank.images[i], bank.landmarks[i], bank.boxes[i], rng)
    real = augment_input(input_crop(bank.images[i], size, rng), rng)
    fake = augment_input(input_crop(fake_ctx, size, rng), rng)
    return real, fake


def to_tensor(crops: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0


def heldout_set(bank: FaceBank, size: int, views: int) -> tuple[torch.Tensor, np.ndarray]:
    """Fixed views of held-out faces: per file and view, a seed from the name, so every run and every
    evaluation scores the very same pictures."""
    crops, labels = [], []
    for i, name in enumerate(bank.names):
        for v in range(views):
            seed = int(hashlib.sha1(f"{name}:{v}".encode()).hexdigest()[:8], 16)
            real, fake = make_pair(bank, i, size, np.random.default_rng(seed))
            crops += [real, fake]
            labels += [0, 1]
    return to_tensor(crops), np.asarray(labels, np.int64)


@torch.no_grad()
def predict_logits(model: DeepfakeNet, faces: torch.Tensor, batch: int = 64) -> np.ndarray:
    was = model.training
    model.eval()
    out = [model(faces[i : i + batch]) for i in range(0, len(faces), batch)]
    model.train(was)
    return torch.cat(out).numpy().astype(np.float64)


def heldout_logits(
    run: Path, checkpoint: Path, split: str, threads: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of a checkpoint on a held-out split (``calib`` or ``eval``)."""
    torch.set_num_threads(threads)
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    args = ckpt["args"]
    model = build_classifier(None)
    model.load_state_dict(ckpt["ema"])
    bank = split_bank(FaceBank.load(run / "faces.npz"))[split]
    faces, labels = heldout_set(bank, int(args["size"]), int(args["holdout_views"]))
    return predict_logits(model, faces), labels


def metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    p = sigmoid(logits)
    return {
        "auc": roc_auc(labels, logits),
        "log_loss": log_loss(labels, p),
        "acc": float(((p >= 0.5) == labels.astype(bool)).mean()),
    }


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    run_dir: Path = args.run
    run_dir.mkdir(parents=True, exist_ok=True)
    bank = split_bank(load_bank(run_dir, args.shared, args.limit_images))
    train_bank = bank["train"]
    print(f"faces: train {len(train_bank)}, calib {len(bank['calib'])}, eval {len(bank['eval'])}", flush=True)
    calib_x, calib_y = heldout_set(bank["calib"], args.size, args.holdout_views)
    eval_x, eval_y = heldout_set(bank["eval"], args.size, args.holdout_views)

    model = build_classifier(None if args.random_init else args.shared, args.train_from)
    model.train()
    ema = copy.deepcopy(model).eval()
    head = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    body = [p for n, p in model.named_parameters() if n.startswith("backbone.") and p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": head, "lr": args.lr}, {"params": body, "lr": args.lr * args.backbone_lr_scale}],
        weight_decay=1e-4,
    )
    rng = np.random.default_rng(args.seed)
    step, best = 0, -math.inf
    last = run_dir / "last.pt"
    if last.exists():
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["opt"])
        step, best = int(ckpt["step"]), float(ckpt["best"])
        rng.bit_generator.state = ckpt["rng"]
        torch.set_rng_state(ckpt["torch_rng"])
        print(f"resumed from {last} at step {step}", flush=True)
    arg_record = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}

    def checkpoint() -> None:
        save_atomic(
            {
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "best": best,
                "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "args": arg_record,
            },
            last,
        )

    log_file = (run_dir / "log.jsonl").open("a")

    def log(record: dict[str, Any]) -> None:
        print(json.dumps(record), flush=True)
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()

    if step == 0:
        sizes = {f"{k}_faces": len(v) for k, v in bank.items()}
        log(
            {
                "step": 0,
                "params": parameter_count(model),
                "trainable": sum(p.numel() for p in head + body),
                **sizes,
            }
        )
    bce = F.binary_cross_entropy_with_logits
    t_start, t0, wall = time.time(), time.time(), 0.0
    with stop_on_signal() as stopped:
        while step < args.steps and not stopped():
            lr_scale = min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
            opt.param_groups[0]["lr"] = args.lr * lr_scale
            opt.param_groups[1]["lr"] = args.lr * args.backbone_lr_scale * lr_scale
            idx = rng.integers(0, len(train_bank), args.batch // 2)
            crops: list[np.ndarray] = []
            for i in idx:
                crops += make_pair(train_bank, int(i), args.size, rng)
            x = to_tensor(crops)
            y = torch.tensor([0.0, 1.0] * len(idx))
            loss = bce(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head + body, 2.0)
            opt.step()
            ema_update(ema, model, step, args.ema)
            step += 1
            if step % args.log_every == 0:
                now = time.time()
                log(
                    {
                        "step": step,
                        "loss": loss.item(),
                        "lr": args.lr * lr_scale,
                        "sec_per_step": (now - t0) / args.log_every,
                    }
                )
                t0 = now
            if step % args.eval_every == 0 or step == args.steps:
                calib = metrics(predict_logits(ema, calib_x), calib_y)
                held = metrics(predict_logits(ema, eval_x), eval_y)
                improved = calib["auc"] > best
                if improved:
                    best = calib["auc"]
                    save_atomic(
                        {"ema": ema.state_dict(), "step": step, "calib": calib, "args": arg_record},
                        run_dir / "best.pt",
                    )
                log({"step": step, "calib": calib, "eval": held, "best": improved})
                t0 = time.time()
            if step % args.save_every == 0:
                checkpoint()
        checkpoint()
    wall = time.time() - t_start
    log({"step": step, "segment_wall_s": round(wall, 1), "stopped": step < args.steps})
    log_file.close()
    print(f"stopped at step {step}; checkpoint {last}", flush=True)


def plot_training_curve(log_path: Path, png: Path, width: int = 720, height: int = 360) -> None:
    """Training loss (smoothed) and held-out AUC against step, drawn with OpenCV (no plotting library)."""
    import cv2

    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["calib"]["auc"], r["eval"]["auc"]) for r in records if "calib" in r]
    if not losses:
        raise ValueError(f"{log_path}: no training records")
    last_step = max(s for s, _ in losses)
    pad = 50
    img = np.full((height + 2 * pad, width + 2 * pad, 3), 255, np.uint8)

    def xy(step: float, value: float, lo: float, hi: float) -> tuple[int, int]:
        return pad + round(step / last_step * width), pad + round((1 - (value - lo) / (hi - lo)) * height)

    cv2.rectangle(img, (pad, pad), (pad + width, pad + height), (0, 0, 0), 1)
    for k in range(5):
        y = pad + round(k / 4 * height)
        cv2.line(img, (pad, y), (pad + width, y), (230, 230, 230), 1)
        cv2.putText(img, f"{1.0 - k / 8:.2f}", (pad + width + 5, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, 0, 1)
        cv2.putText(img, f"{0.8 * (1 - k / 4):.1f}", (5, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, 0, 1)
    values = np.array([v for _, v in losses])
    csum = np.concatenate([[0.0], np.cumsum(values)])
    first = np.maximum(np.arange(len(values)) - 4, 0)
    smooth = (csum[1:] - csum[first]) / (np.arange(len(values)) + 1 - first)  # trailing mean of 5 records
    pts = [xy(s, min(v, 0.8), 0.0, 0.8) for (s, _), v in zip(losses, smooth, strict=True)]
    cv2.polylines(img, [np.array(pts, np.int32)], False, (40, 40, 220), 2, cv2.LINE_AA)
    for n, colour in ((1, (200, 110, 20)), (2, (30, 150, 30))):
        if evals:
            q = [xy(e[0], e[n], 0.5, 1.0) for e in evals]
            cv2.polylines(img, [np.array(q, np.int32)], False, colour, 2, cv2.LINE_AA)
            for c in q:
                cv2.circle(img, c, 3, colour, -1, cv2.LINE_AA)
    cv2.putText(
        img, "loss (left axis, smoothed)", (pad, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (40, 40, 220), 1
    )
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, "held-out AUC (right):", (pad + 260, 20), font, 0.45, (0, 0, 0), 1)
    cv2.putText(img, "calib", (pad + 440, 20), font, 0.45, (200, 110, 20), 1)
    cv2.putText(img, "eval", (pad + 490, 20), font, 0.45, (30, 150, 30), 1)
    cv2.putText(
        img,
        f"step (0..{last_step})",
        (pad + width // 2 - 50, height + 2 * pad - 15),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.45,
        0,
        1,
    )
    png.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(png), img):
        raise OSError(f"cannot write {png}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--run", type=Path, default=Path("runs/detector"), help="run folder (cache, checkpoints, logs)"
    )
    p.add_argument("--shared", type=Path, default=shared_root(), help="shared data folder")
    p.add_argument("--steps", type=int, default=1500, help="total steps (a resumed run may change it)")
    p.add_argument("--batch", type=int, default=32, help="crops per step: half real, half their SBI fakes")
    p.add_argument("--size", type=int, default=INPUT_SIZE, help="input crop side")
    p.add_argument("--lr", type=float, default=1e-3, help="head learning rate")
    p.add_argument("--backbone-lr-scale", type=float, default=0.3, help="backbone lr = lr * this")
    p.add_argument("--train-from", type=int, default=4, help="first trainable MobileNetV2 block (0..16)")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.995, help="EMA decay of the evaluated/exported weights")
    p.add_argument("--threads", type=int, default=1, help="torch threads (other training shares the CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout-views", type=int, default=2, help="fixed views per held-out face")
    p.add_argument("--limit-images", type=int, default=0, help="faces per split (smoke runs; 0: all)")
    p.add_argument("--random-init", action="store_true", help="skip the pretrained backbone (tests)")
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--eval-every", type=int, default=150)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--plot", type=Path, default=None, help="only draw <run>/log.jsonl as a PNG here and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.plot is not None:
        plot_training_curve(args.run / "log.jsonl", args.plot)
        return
    train(args)


if __name__ == "__main__":
    main()
