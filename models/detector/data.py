"""Training data for the detector: real face crops, aligned once and cached, and a stable held-out split.

Each real face (``shared/data/faces/real``) is detected with YuNet and cut once into an eye-aligned
*context* crop larger than the classifier's input (the face box plus generous margin), with its
landmarks and box mapped into the crop. Self-blending then happens on the context crop and the input
crop is cut from its centre, so every training step costs two small warps instead of a JPEG decode and a
face detection.

The split is by *identity* (the name part of ``<a>_<b>_<name>_<n>.jpg``; other files are their own
identity), hashed, so photos of one person never sit on both sides and the split never changes. The
held-out identities are divided again by hash into a calibration half (temperature, threshold) and an
evaluation half (the AUC and ECE reported), so the reported calibration is not measured on the data
it was fitted to.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from chromastream.models.detector import DetectorInputError
from chromastream.models.detector.faces import Face, FaceDetector, alignment_matrix, crop_face

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]

HOLDOUT_PERCENT = 18  # of identities; about 17 % of the 1670 images (one identity has 232 photos)
CONTEXT_SIZE = 192
CONTEXT_MARGIN = 0.9  # the context crop side is the face box side * (1 + 0.9)
INPUT_MARGIN = 0.25  # the classifier's crop: must match what crop_face() cuts at inference
_NAMED = re.compile(r"^\d+_\d+_(.+)_\d+$")


def real_face_paths(shared: Path) -> list[Path]:
    folder = shared / "data" / "faces" / "real"
    if not folder.is_dir():
        raise FileNotFoundError(f"real faces not found at {folder} (set CHROMASTREAM_SHARED)")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})


def identity(path: Path) -> str:
    m = _NAMED.match(path.stem)
    return m.group(1) if m else path.stem


def _hash(text: str) -> int:
    return int(hashlib.sha1(text.encode()).hexdigest(), 16)


def split_of(path: Path) -> str:
    """``train``, ``calib`` or ``eval``: stable, by identity."""
    key = identity(path)
    if _hash(key) % 100 >= HOLDOUT_PERCENT:
        return "train"
    return "calib" if _hash("half:" + key) % 2 == 0 else "eval"


@dataclass
class FaceBank:
    """Aligned context crops with their face geometry, in crop pixels."""

    images: U8  # [N, C, C, 3] RGB
    landmarks: F32  # [N, 5, 2]
    boxes: F32  # [N, 4]  x0, y0, x1, y1
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, keep: list[int]) -> FaceBank:
        return FaceBank(
            self.images[keep], self.landmarks[keep], self.boxes[keep], [self.names[i] for i in keep]
        )

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp, images=self.images, landmarks=self.landmarks, boxes=self.boxes, names=np.array(self.names)
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> FaceBank:
        with np.load(path) as z:
            return cls(z["images"], z["landmarks"], z["boxes"], [str(n) for n in z["names"]])


def _detect_padded(detector: FaceDetector, rgb: U8) -> list[Face]:
    """Tight crops sometimes hide the face outline YuNet needs: retry on a mirrored-border canvas."""
    faces = detector.detect(rgb)
    if faces:
        return faces
    h, w = rgb.shape[:2]
    ph, pw = h // 3, w // 3
    padded = cv2.copyMakeBorder(rgb, ph, ph, pw, pw, cv2.BORDER_REFLECT_101)
    shifted = []
    for f in detector.detect(np.asarray(padded, dtype=np.uint8)):
        x0, y0, x1, y1 = f.box
        box = (x0 - pw, y0 - ph, x1 - pw, y1 - ph)
        pts = tuple((x - pw, y - ph) for x, y in f.landmarks)
        shifted.append(Face(box, f.score, pts))
    return shifted


def context_crop(rgb: U8, face: Face) -> tuple[U8, F32, F32]:
    """The aligned context crop of ``face`` and its landmarks and box mapped into it."""
    m = alignment_matrix(face, CONTEXT_SIZE, CONTEXT_MARGIN)
    crop = crop_face(rgb, face, CONTEXT_SIZE, CONTEXT_MARGIN)
    mapped = np.asarray(face.landmarks, np.float64) @ m[:, :2].T + m[:, 2]
    # The box, upright after alignment, keeps its proportions; its longer side maps to size/(1+margin).
    x0, y0, x1, y1 = face.box
    scale = CONTEXT_SIZE / ((1 + CONTEXT_MARGIN) * max(x1 - x0, y1 - y0, 1.0))
    half_w, half_h, c = (x1 - x0) * scale / 2, (y1 - y0) * scale / 2, CONTEXT_SIZE / 2
    box = np.array([c - half_w, c - half_h, c + half_w, c + half_h], np.float32)
    return crop, mapped.astype(np.float32), box


def build_bank(paths: list[Path], detector: FaceDetector) -> tuple[FaceBank, list[str]]:
    """Detect and align every face; returns the bank and the names of files with no face found."""
    images, lms, boxes, names, missed = [], [], [], [], []
    for path in paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DetectorInputError(f"cannot read {path}")
        rgb = np.ascontiguousarray(bgr[:, :, ::-1], dtype=np.uint8)
        faces = _detect_padded(detector, rgb)
        if not faces:
            missed.append(path.name)
            continue
        crop, pts, box = context_crop(rgb, faces[0])
        images.append(crop)
        lms.append(pts)
        boxes.append(box)
        names.append(path.name)
    if not images:
        raise DetectorInputError("no face found in any of the images")
    return FaceBank(np.stack(images), np.stack(lms), np.stack(boxes), names), missed


def input_crop(context: U8, size: int, rng: np.random.Generator | None = None) -> U8:
    """The classifier's input cut from the centre of a context crop: the same framing as
    ``crop_face(..., margin=INPUT_MARGIN)``; with ``rng``, jittered in scale and position the way
    successive detections of one face jitter."""
    c = CONTEXT_SIZE / 2
    side = CONTEXT_SIZE * (1 + INPUT_MARGIN) / (1 + CONTEXT_MARGIN)
    cx = cy = c
    if rng is not None:
        side *= rng.uniform(0.92, 1.08)
        cx += rng.uniform(-0.04, 0.04) * side
        cy += rng.uniform(-0.04, 0.04) * side
        angle = rng.uniform(-5, 5)
    else:
        angle = 0.0
    m = cv2.getRotationMatrix2D((cx, cy), angle, size / side)
    m[0, 2] += size / 2 - cx
    m[1, 2] += size / 2 - cy
    out = cv2.warpAffine(context, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if rng is not None and rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out, dtype=np.uint8)
