"""Self-blended images (SBI, Shiohara & Yamasaki, CVPR 2022) and the input augmentations of the detector.

A self-blended fake is one real face blended back onto itself through a face-shaped soft mask after a
slight change of the pasted copy (scale, shift, colour, sharpness, compression). It holds the traces
every face swap leaves — a blending boundary, a colour or sharpness mismatch, a small misalignment —
without the identity or GAN fingerprints of any particular generator, so a classifier trained to tell it
from the untouched face generalizes to manipulations it never saw. Only real faces are needed.

The mask comes from YuNet's five landmarks (the only ones the live detector has): either the convex hull
of the landmarks extended to forehead, cheeks and chin, or an ellipse fitted to them; it is randomly
deformed, eroded or dilated, blurred to a soft edge and scaled by a random blend ratio, then confined to
a soft window on the face box so nothing outside the face changes.

:func:`augment_input` then makes real and fake crops alike look like what the project analyses: grey
CCTV frames, dim scenes, compressed video, small faces upscaled, sensor noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

from chromastream.models.detector import DetectorInputError

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]

BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)


def _landmark_array(landmarks: Sequence[Sequence[float]] | np.ndarray) -> npt.NDArray[np.float64]:
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (5, 2):
        raise DetectorInputError(f"expected 5 landmarks (x, y), got shape {pts.shape}")
    return pts


def _face_polygon(pts: npt.NDArray[np.float64], rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """The five landmarks plus extrapolated forehead, temple, cheek and chin points (a rough outline)."""
    eye_r, eye_l, _nose, mouth_r, mouth_l = pts
    eyes, mouth = (eye_r + eye_l) / 2, (mouth_r + mouth_l) / 2
    down = mouth - eyes  # eyes -> mouth
    across = (eye_l - eye_r) / 2  # half the eye distance, pointing to the subject's left
    up_k, side_k, chin_k = rng.uniform(0.3, 0.8), rng.uniform(1.3, 1.9), rng.uniform(0.4, 0.8)
    extra = [
        eyes - up_k * down,  # forehead
        eye_r - (side_k - 1) * across - 0.3 * up_k * down,  # temples
        eye_l + (side_k - 1) * across - 0.3 * up_k * down,
        mouth_r - 0.5 * (side_k - 1) * across,  # cheeks at mouth height
        mouth_l + 0.5 * (side_k - 1) * across,
        mouth + chin_k * down,  # chin
    ]
    return np.vstack([pts, np.asarray(extra)])


def face_mask(
    landmarks: Sequence[Sequence[float]] | np.ndarray,
    box: Sequence[float],
    shape: tuple[int, int],
    rng: np.random.Generator,
) -> F32:
    """A random soft face mask ``[H, W]`` in 0..1 (peak = the blend ratio), zero outside the face box."""
    pts = _landmark_array(landmarks)
    h, w = shape
    hard = np.zeros((h, w), np.uint8)
    if rng.random() < 0.5:
        hull = cv2.convexHull(_face_polygon(pts, rng).astype(np.float32)).astype(np.int32)
        cv2.fillConvexPoly(hard, hull, 255)
    else:
        eyes, mouth = (pts[0] + pts[1]) / 2, (pts[3] + pts[4]) / 2
        eye_dist = float(np.linalg.norm(pts[1] - pts[0]))
        centre = eyes + (mouth - eyes) * rng.uniform(0.35, 0.6)
        axes = (
            eye_dist * rng.uniform(0.85, 1.2),
            float(np.linalg.norm(mouth - eyes)) * rng.uniform(1.2, 1.7),
        )
        angle = float(np.degrees(np.arctan2(pts[1, 1] - pts[0, 1], pts[1, 0] - pts[0, 0])))
        cv2.ellipse(
            hard,
            (round(centre[0]), round(centre[1])),
            (round(axes[0]), round(axes[1])),
            angle,
            0,
            360,
            255,
            -1,
        )
    face_side = max(float(box[2] - box[0]), float(box[3] - box[1]), 8.0)
    mask = _deform(hard.astype(np.float32) / 255.0, face_side, rng)
    k = int(face_side * rng.uniform(0.04, 0.15)) | 1
    mask = np.asarray(cv2.GaussianBlur(mask, (k, k), 0), dtype=np.float32)
    mask = np.clip(mask, 0.0, 1.0) * float(rng.choice(BLEND_RATIOS))
    return (mask * _box_window(box, shape)).astype(np.float32)


def _deform(mask: F32, face_side: float, rng: np.random.Generator) -> F32:
    """A smooth random warp of the mask outline plus a random erosion or dilation."""
    h, w = mask.shape
    grid = 4
    amp = face_side * rng.uniform(0.0, 0.05)
    coarse = rng.uniform(-amp, amp, (2, grid, grid)).astype(np.float32)
    dx = cv2.resize(coarse[0], (w, h), interpolation=cv2.INTER_CUBIC)
    dy = cv2.resize(coarse[1], (w, h), interpolation=cv2.INTER_CUBIC)
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    warped = cv2.remap(mask, xs + dx, ys + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    k = max(1, int(face_side * rng.uniform(0.0, 0.06)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
    op = cv2.erode if rng.random() < 0.5 else cv2.dilate
    return np.asarray(op(warped, kernel), dtype=np.float32)


def _box_window(box: Sequence[float], shape: tuple[int, int]) -> F32:
    """1 inside the face box shrunk by 5 %, falling smoothly to 0 at the box edge."""
    h, w = shape
    x0, y0, x1, y1 = (float(v) for v in box)
    inset = 0.05 * max(x1 - x0, y1 - y0)
    xs, ys = np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)

    def ramp(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
        up = np.clip((v - lo) / max(inset, 1.0), 0, 1)
        down = np.clip((hi - v) / max(inset, 1.0), 0, 1)
        return np.minimum(up, down)

    return np.asarray(ramp(ys, y0, y1)[:, None] * ramp(xs, x0, x1)[None, :], dtype=np.float32)


def _jpeg(image: U8, quality: int) -> U8:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise DetectorInputError("JPEG encoding failed")
    return np.asarray(cv2.imdecode(buf, cv2.IMREAD_UNCHANGED), dtype=np.uint8)


def _source_transform(image: U8, face_side: float, rng: np.random.Generator) -> U8:
    """The slightly changed copy that is pasted back: colour, sharpness, compression, scale and shift."""
    src = image.astype(np.float32)
    if rng.random() < 0.8:  # colour / brightness / contrast mismatch
        gain = rng.uniform(0.9, 1.1, 3).astype(np.float32)
        shift = rng.uniform(-12, 12, 3).astype(np.float32)
        contrast = rng.uniform(0.85, 1.15)
        mean = src.mean(axis=(0, 1), keepdims=True)
        src = (src - mean) * contrast + mean * gain + shift
    src_u8 = np.clip(src, 0, 255).astype(np.uint8)
    r = rng.random()
    if r < 0.35:  # blur
        sigma = rng.uniform(0.4, 1.4)
        src_u8 = np.asarray(cv2.GaussianBlur(src_u8, (0, 0), sigma), dtype=np.uint8)
    elif r < 0.7:  # sharpen
        blur = cv2.GaussianBlur(src_u8, (0, 0), rng.uniform(0.8, 1.6)).astype(np.float32)
        amount = rng.uniform(0.3, 1.0)
        src_u8 = np.clip(src_u8 + amount * (src_u8 - blur), 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        src_u8 = _jpeg(src_u8, int(rng.integers(40, 95)))
    # Scale about the face and shift a little: the pasted face no longer lines up exactly.
    h, w = src_u8.shape[:2]
    scale = rng.uniform(0.95, 1.05)
    t = rng.uniform(-0.03, 0.03, 2) * face_side
    m = np.array([[scale, 0, (1 - scale) * w / 2 + t[0]], [0, scale, (1 - scale) * h / 2 + t[1]]], np.float64)
    out = cv2.warpAffine(src_u8, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return np.asarray(out, dtype=np.uint8)


def self_blend(
    image: U8,
    landmarks: Sequence[Sequence[float]] | np.ndarray,
    box: Sequence[float],
    rng: np.random.Generator,
) -> tuple[U8, F32]:
    """A self-blended fake of the real face in ``image`` (uint8 ``[H,W,3]``) and the mask used.

    Pixels where the mask is 0 are returned unchanged, so everything the classifier can learn lies in
    the blended face region and its boundary.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DetectorInputError(f"expected a uint8 [H,W,3] image, got {image.dtype} {image.shape}")
    face_side = max(float(box[2] - box[0]), float(box[3] - box[1]), 8.0)
    mask = face_mask(landmarks, box, image.shape[:2], rng)
    source = _source_transform(image, face_side, rng)
    m = mask[:, :, None]
    blended = m * source.astype(np.float32) + (1.0 - m) * image.astype(np.float32)
    out = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    out[mask <= 0] = image[mask <= 0]
    return out, mask


def augment_input(image: U8, rng: np.random.Generator, grey_p: float = 0.6) -> U8:
    """Make a crop look like the project's inputs; applied alike to real and fake crops.

    Grey first (most CCTV is grey, and colour must not be the only cue), then low light, small-face
    down-up scaling, compression (JPEG; a strong blur plus JPEG blocks stands in for H.264 at low
    bitrates) and sensor noise, each with its own probability.
    """
    out = image
    if rng.random() < grey_p:
        grey = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)
        out = np.asarray(cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB), dtype=np.uint8)
    if rng.random() < 0.3:  # dim scene, gamma curve of a cheap camera
        gain, gamma = rng.uniform(0.35, 1.0), rng.uniform(0.7, 1.5)
        f = (out.astype(np.float32) / 255.0) ** gamma * gain
        out = np.clip(f * 255.0 + 0.5, 0, 255).astype(np.uint8)
    h, w = out.shape[:2]
    if rng.random() < 0.3:  # the face was small in the frame
        s = rng.uniform(0.35, 0.8)
        small = cv2.resize(out, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_AREA)
        out = np.asarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), dtype=np.uint8)
    r = rng.random()
    if r < 0.4:
        out = _jpeg(out, int(rng.integers(30, 95)))
    elif r < 0.55:  # low-bitrate video: loss of detail, then block quantization
        out = _jpeg(np.asarray(cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 1.2)), dtype=np.uint8), 25)
    if rng.random() < 0.25:
        sigma = rng.uniform(1.0, 6.0)
        noise = rng.normal(0.0, sigma, out.shape[:2] if _is_grey(out) else out.shape).astype(np.float32)
        if noise.ndim == 2:
            noise = noise[:, :, None]
        out = np.clip(out.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out)


def _is_grey(image: U8) -> bool:
    return bool(
        np.array_equal(image[:, :, 0], image[:, :, 1]) and np.array_equal(image[:, :, 1], image[:, :, 2])
    )
