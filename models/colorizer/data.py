"""Training data: colour photographs from ``shared/data/images/train`` turned into short synthetic clips.

Every sample is a pair of frames cut from one photograph with a known small camera motion (pan, zoom,
rotation) between them. The motion is exact, so the temporal loss can warp frame 1's prediction onto frame
2 without estimating optical flow; this is how the recurrent memory learns to keep colours still on
static content while a single photograph still teaches the colours themselves.

Evaluation folders (``data/images/eval``) are never read here.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
HOLDOUT_EVERY = 20  # 1 image in 20 is held out for model selection and chroma-gain tuning


def shared_root() -> Path:
    """``CHROMASTREAM_SHARED``, else ``../shared`` beside the repository."""
    env = os.environ.get("CHROMASTREAM_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared"


def training_images(shared: Path) -> list[Path]:
    """All training photographs, minus the near-grayscale ones a folder lists in GRAYSCALE_IMAGES.txt."""
    root = shared / "data" / "images" / "train"
    if not root.is_dir():
        raise FileNotFoundError(f"training images not found at {root} (set CHROMASTREAM_SHARED)")
    files: list[Path] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        skip_list = folder / "GRAYSCALE_IMAGES.txt"
        skip = set()
        if skip_list.exists():
            skip = {
                ln.strip()
                for ln in skip_list.read_text().splitlines()
                if ln.strip() and not ln.startswith("#")
            }
        files += [
            p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in skip
        ]
    return files


def is_holdout(path: Path) -> bool:
    """A stable split by file name, so it never changes between runs or machines."""
    return int(hashlib.sha1(path.name.encode()).hexdigest(), 16) % HOLDOUT_EVERY == 0


def load_rgb(path: Path, short_side: int) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot read {path}")
    h, w = img.shape[:2]
    scale = short_side / min(h, w)
    if scale < 1.0:
        img = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@dataclass
class Clip:
    """A batch of two-frame clips and the exact motion between their frames."""

    frames: torch.Tensor  # [B, T, 3, S, S] RGB in [0, 1]
    flow_grid: (
        torch.Tensor
    )  # [B, S, S, 2]: for each frame-2 pixel, where it is in frame 1 (grid_sample units)


class ImageBank:
    """Photographs decoded once into memory (a few hundred MB), sampled into random clips."""

    def __init__(self, paths: list[Path], short_side: int = 288):
        self.images = [load_rgb(p, short_side) for p in paths]
        self.short_side = short_side

    def __len__(self) -> int:
        return len(self.images)

    def _canvas(self, rng: np.random.Generator, size: int) -> np.ndarray:
        img = self.images[int(rng.integers(len(self.images)))]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.55, 1.0))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = cv2.resize(img[y : y + side, x : x + side], (size, size), interpolation=cv2.INTER_AREA)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        return np.ascontiguousarray(crop)

    def sample(self, rng: np.random.Generator, batch: int, size: int, frames: int = 2) -> Clip:
        """``frames`` views of each canvas; view t+1 moves by a small random pan/zoom/rotation."""
        canvas_size = int(size * 1.25)
        canvas = np.stack([self._canvas(rng, canvas_size) for _ in range(batch)])
        canvas_t = torch.from_numpy(canvas).permute(0, 3, 1, 2).float() / 255.0
        # Affine maps from output normalized coords to canvas normalized coords, one per frame.
        thetas = []
        zoom = rng.uniform(0.72, 0.8, batch)
        angle = np.zeros(batch)
        shift = rng.uniform(-0.1, 0.1, (batch, 2))
        for _ in range(frames):
            c, s = np.cos(angle), np.sin(angle)
            theta = np.zeros((batch, 2, 3))
            theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = (
                zoom * c,
                -zoom * s,
                zoom * s,
                zoom * c,
            )
            theta[:, :, 2] = shift
            thetas.append(torch.from_numpy(theta).float())
            still = rng.random(batch) < 0.25  # a fixed camera is the common case
            move = ~still
            zoom = zoom * np.where(move, rng.uniform(0.96, 1.04, batch), 1.0)
            angle = angle + np.where(move, rng.uniform(-0.05, 0.05, batch), 0.0)
            shift = shift + np.where(move[:, None], rng.uniform(-0.05, 0.05, (batch, 2)), 0.0)
        views = []
        for affine in thetas:
            grid = F.affine_grid(affine, [batch, 3, size, size], align_corners=False)
            views.append(F.grid_sample(canvas_t, grid, mode="bilinear", align_corners=False).clamp(0, 1))
        # Frame-2 pixel p sits at canvas point A2 p, which frame 1 shows at A1^-1 A2 p.
        a1 = _homogeneous(thetas[0])
        a2 = _homogeneous(thetas[-1])
        rel = (torch.linalg.inv(a1) @ a2)[:, :2]
        flow_grid = F.affine_grid(rel, [batch, 3, size, size], align_corners=False)
        return Clip(torch.stack(views, 1), flow_grid)


def _homogeneous(theta: torch.Tensor) -> torch.Tensor:
    bottom = torch.tensor([0.0, 0.0, 1.0]).expand(theta.shape[0], 1, 3)
    return torch.cat([theta, bottom], 1)


def random_hints(ab: torch.Tensor, rng: np.random.Generator, p_none: float = 0.5) -> torch.Tensor:
    """Randomized user cues (Zhang et al. 2017): a geometric number of square patches revealing the
    mean ground-truth ab of the patch. ``ab`` is ``[B, 2, H, W]`` normalized; returns ``[B, 3, H, W]``."""
    batch, _, height, width = ab.shape
    hints = torch.zeros(batch, 3, height, width)
    for i in range(batch):
        if rng.random() < p_none:
            continue
        count = min(int(rng.geometric(1 / 8)), 50)
        for _ in range(count):
            half = int(rng.integers(0, 5))  # patch sides 1..9 pixels
            y, x = int(rng.integers(half, height - half)), int(rng.integers(half, width - half))
            ys, xs = slice(y - half, y + half + 1), slice(x - half, x + half + 1)
            hints[i, :2, ys, xs] = ab[i, :, ys, xs].mean(dim=(1, 2), keepdim=True)
            hints[i, 2, ys, xs] = 1.0
    return hints
