"""Training data: short clips, synthetic from still photographs and real from DAVIS video.

- :class:`ImageBank`: frames cut from one photograph (``shared/data/images/train``) with a known small
  camera motion (pan, zoom, rotation) between them. The motion is exact, so the temporal loss can warp one
  frame's prediction onto the next without estimating optical flow, while the photographs' variety teaches
  the colours themselves.
- :class:`VideoBank`: consecutive frames of the DAVIS training sequences (real camera and object motion,
  motion blur, occlusions), with OpenCV DIS optical flow and a forward-backward occlusion check computed
  once at load time.

Both yield a :class:`Clip`: T frames and, for each step, where every pixel of frame t+1 was in frame t
plus a mask of pixels whose motion is trusted. Evaluation folders (``data/images/eval``) and the DAVIS
sequences in :data:`chromastream.models.colorizer.spec.DAVIS_EVAL_SEQUENCES` are never read here.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
HOLDOUT_EVERY = 20  # 1 image in 20 is held out for model selection and chroma-gain tuning


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
    """A batch of T-frame clips and the motion between consecutive frames."""

    frames: torch.Tensor
    """``[B, T, 3, S, S]`` RGB in [0, 1]."""
    flow_grid: torch.Tensor
    """``[B, T-1, S, S, 2]``: for each pixel of frame t+1, where it is in frame t (grid_sample units)."""
    valid: torch.Tensor
    """``[B, T-1, 1, S, S]``: 1 where that motion is trusted (not occluded, inside frame t)."""

    @staticmethod
    def cat(clips: list[Clip]) -> Clip:
        return Clip(
            torch.cat([c.frames for c in clips]),
            torch.cat([c.flow_grid for c in clips]),
            torch.cat([c.valid for c in clips]),
        )


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
        # Pixel p of frame t+1 sits at canvas point A[t+1] p, which frame t shows at A[t]^-1 A[t+1] p.
        grids = []
        for a_prev, a_next in itertools.pairwise(thetas):
            rel = (torch.linalg.inv(_homogeneous(a_prev)) @ _homogeneous(a_next))[:, :2]
            grids.append(F.affine_grid(rel, [batch, 3, size, size], align_corners=False))
        flow_grid = torch.stack(grids, 1)
        valid = (flow_grid.abs() <= 1).all(-1).unsqueeze(2).float()
        return Clip(torch.stack(views, 1), flow_grid, valid)


def _homogeneous(theta: torch.Tensor) -> torch.Tensor:
    bottom = torch.tensor([0.0, 0.0, 1.0]).expand(theta.shape[0], 1, 3)
    return torch.cat([theta, bottom], 1)


def random_hints(
    ab: torch.Tensor, rng: np.random.Generator, p_none: float = 0.35, max_count: int = 160
) -> torch.Tensor:
    """Randomized user cues (Zhang et al. 2017): a log-uniform number (1..``max_count``) of small discs
    (radius 1-4 px, the size of a click at the working size), each revealing the mean ground-truth ab under
    it, drawn the way :func:`chromastream.models.colorizer.hints.rasterize` draws a user's hint. ``ab`` is
    ``[B, 2, H, W]`` normalized; returns ``[B, 3, H, W]``."""
    batch, _, height, width = ab.shape
    hints = torch.zeros(batch, 3, height, width)
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    for i in range(batch):
        if rng.random() < p_none:
            continue
        count = int(np.exp(rng.uniform(0.0, np.log(max_count + 1))))
        for _ in range(max(count, 1)):
            r = float(rng.uniform(1.0, 4.0))
            y, x = float(rng.uniform(0, height - 1)), float(rng.uniform(0, width - 1))
            y0, y1 = max(int(y - r), 0), min(int(y + r) + 2, height)
            x0, x1 = max(int(x - r), 0), min(int(x + r) + 2, width)
            disc = (yy[y0:y1, x0:x1] - y) ** 2 + (xx[y0:y1, x0:x1] - x) ** 2 <= r * r
            if not bool(disc.any()):
                continue
            mean = ab[i, :, y0:y1, x0:x1][:, disc].mean(dim=1)
            hints[i, 0, y0:y1, x0:x1][disc] = mean[0]
            hints[i, 1, y0:y1, x0:x1][disc] = mean[1]
            hints[i, 2, y0:y1, x0:x1][disc] = 1.0
    return hints


def davis_training_sequences(shared: Path, held_out: tuple[str, ...]) -> list[Path]:
    """The DAVIS sequence folders that are not held out for evaluation."""
    root = shared / "data" / "video" / "davis"
    if not root.is_dir():
        raise FileNotFoundError(f"DAVIS sequences not found at {root} (set CHROMASTREAM_SHARED)")
    return [p for p in sorted(root.iterdir()) if p.is_dir() and p.name not in held_out]


def _dis_flow(dis: cv2.DISOpticalFlow, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Flow ``[H, W, 2]`` (pixels): where each pixel of ``src`` is in ``dst``."""
    flow = np.zeros((*src.shape[:2], 2), np.float32)
    return np.asarray(dis.calc(src, dst, flow), dtype=np.float32)


def _flow_check(backward: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """Forward-backward consistency (Sundaram et al. 2010): a pixel of frame t+1 is trusted when going
    back to frame t and forward again returns close to where it started. ``backward`` maps t+1 -> t,
    ``forward`` maps t -> t+1; returns a uint8 mask on frame t+1."""
    h, w = backward.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    map_x, map_y = grid_x + backward[..., 0], grid_y + backward[..., 1]
    fwd_at = cv2.remap(forward, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    err = np.sum((backward + fwd_at) ** 2, -1)
    bound = 0.01 * (np.sum(backward**2, -1) + np.sum(fwd_at**2, -1)) + 0.5
    inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
    mask: np.ndarray = np.asarray((err < bound) & inside, dtype=np.uint8)
    return mask


class VideoBank:
    """DAVIS training sequences decoded once at a reduced size, with flow between consecutive frames."""

    def __init__(self, sequences: list[Path], short_side: int = 224):
        dis = cv2.DISOpticalFlow.create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        self.frames: list[np.ndarray] = []  # per sequence [N, H, W, 3] uint8 RGB
        self.backward: list[np.ndarray] = []  # per sequence [N-1, H, W, 2]: frame t+1 -> frame t
        self.valid: list[np.ndarray] = []  # per sequence [N-1, H, W] uint8
        for folder in sequences:
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            frames = np.stack([load_rgb(p, short_side) for p in files])
            grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
            back, valid = [], []
            for prev, nxt in itertools.pairwise(grey):
                b = _dis_flow(dis, nxt, prev)
                valid.append(_flow_check(b, _dis_flow(dis, prev, nxt)))
                back.append(b)
            self.frames.append(frames)
            self.backward.append(np.stack(back))
            self.valid.append(np.stack(valid))

    def __len__(self) -> int:
        return sum(len(f) for f in self.frames)

    def sample(self, rng: np.random.Generator, batch: int, size: int, frames: int = 3) -> Clip:
        """Random T-frame windows, each cropped (random scale) to ``size`` and randomly flipped."""
        clips, grids, valids = [], [], []
        for _ in range(batch):
            seq = int(rng.integers(len(self.frames)))
            video, back, ok = self.frames[seq], self.backward[seq], self.valid[seq]
            t0 = int(rng.integers(0, len(video) - frames + 1))
            h, w = video.shape[1:3]
            side = int(rng.integers(min(size, h, w), min(h, w) + 1))
            y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            scale = size / side
            flip = bool(rng.random() < 0.5)
            crop = [
                cv2.resize(
                    video[t, y0 : y0 + side, x0 : x0 + side], (size, size), interpolation=cv2.INTER_AREA
                )
                for t in range(t0, t0 + frames)
            ]
            step_grids, step_valid = [], []
            for t in range(t0, t0 + frames - 1):
                flow = cv2.resize(back[t, y0 : y0 + side, x0 : x0 + side], (size, size)) * scale
                mask = cv2.resize(
                    ok[t, y0 : y0 + side, x0 : x0 + side], (size, size), interpolation=cv2.INTER_NEAREST
                )
                if flip:
                    flow = flow[:, ::-1] * np.array([-1.0, 1.0], dtype=np.float32)
                    mask = mask[:, ::-1]
                pix = np.stack(np.meshgrid(np.arange(size), np.arange(size)), -1).astype(np.float32)
                grid = (pix + flow + 0.5) / size * 2.0 - 1.0
                step_grids.append(grid)
                step_valid.append(mask[None].astype(np.float32) * np.all(np.abs(grid) <= 1, axis=-1)[None])
            if flip:
                crop = [c[:, ::-1] for c in crop]
            clips.append(np.stack(crop))
            grids.append(np.stack(step_grids))
            valids.append(np.stack(step_valid))
        frames_t = (
            torch.from_numpy(np.ascontiguousarray(np.stack(clips))).permute(0, 1, 4, 2, 3).float() / 255.0
        )
        return Clip(frames_t, torch.from_numpy(np.stack(grids)), torch.from_numpy(np.stack(valids)))
