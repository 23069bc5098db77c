"""Face detection with YuNet (ONNX Runtime, or OpenCV ``FaceDetectorYN``) and eye-aligned face crops.

YuNet-n (78k parameters, Apache-2.0, ``shared/weights/yunet``) finds faces with five landmarks in about a
millisecond per VGA frame on one core, cheap enough to run on every sampled frame of a live stream.
The ``dynamic`` ONNX variant takes any input size (padded to a multiple of 32), so frames are not
letterboxed to 320×320; the fixed 320×320 file also works (letterboxed).

Crops are rotated so the eyes are level and scaled so the face box plus a margin fills the square: the
classifier then sees faces in one canonical pose, which is how it was trained (the same function cuts the
training crops), so blending artefacts at the face outline sit at comparable places in every crop.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from chromastream.models.detector import DetectorInputError, DetectorModelError

U8 = npt.NDArray[np.uint8]

YUNET_FILES = ("yunet_n_dynamic.onnx", "yunet_n_320_320.onnx")


@dataclass(frozen=True)
class Face:
    """One detected face, in pixels of the analysed image."""

    box: tuple[float, float, float, float]
    """x0, y0, x1, y1."""
    score: float
    """Detector confidence 0..1."""
    landmarks: tuple[tuple[float, float], ...]
    """Five points in YuNet order: right eye, left eye, nose tip, right and left mouth corner (the
    subject's right eye appears on the image's left)."""


def default_yunet_path() -> Path:
    """The first YuNet ONNX present under ``shared/weights/yunet``."""
    from chromastream.models.shared_data import shared_root

    folder = shared_root() / "weights" / "yunet"
    for name in YUNET_FILES:
        if (folder / name).is_file():
            return folder / name
    raise DetectorModelError(
        f"no YuNet model ({' or '.join(YUNET_FILES)}) in {folder} (set CHROMASTREAM_SHARED)"
    )


def _as_bgr(image: np.ndarray) -> U8:
    """RGB or grey uint8 -> contiguous BGR uint8 (what YuNet was trained on)."""
    if image.dtype != np.uint8:
        raise DetectorInputError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image[:, :, ::-1])
    if image.ndim == 3 and image.shape[2] == 1:
        return np.ascontiguousarray(cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2BGR))
    raise DetectorInputError(f"expected an image [H,W,3] RGB or [H,W] grey, got shape {image.shape}")


class FaceDetector:
    """YuNet face detection; one instance may be shared by threads (calls are serialized).

    ``backend="onnxruntime"`` (the default) runs the ONNX file on ONNX Runtime with one thread and decodes
    YuNet's anchor-free heads the way OpenCV's ``FaceDetectorYN`` does; on this project's CPUs it is about
    twice as fast as OpenCV 5's DNN engine on the same file and gives the same faces (tested).
    ``backend="opencv"`` uses ``cv2.FaceDetectorYN`` itself.

    ``max_side`` (default 384) bounds the picture YuNet sees: its cost grows with the pixels and a 1080p
    frame shrunk to 640 cost ~37 ms of a 25 ms budget per sampled frame. At 384 a face needs about 80 px
    in a 1080p frame (16 px after shrinking, YuNet's smallest reliable size) to be found.
    """

    def __init__(
        self,
        model_path: Path | None = None,
        score_threshold: float = 0.6,
        max_side: int = 384,
        backend: str = "onnxruntime",
        nms_threshold: float = 0.3,
    ) -> None:
        path = model_path if model_path is not None else default_yunet_path()
        if not path.is_file():
            raise DetectorModelError(f"YuNet model not found: {path}")
        if max_side < 32:
            raise DetectorInputError(f"max_side must be at least 32, got {max_side}")
        if backend not in ("onnxruntime", "opencv"):
            raise DetectorInputError(f"unknown face detector backend {backend!r} (onnxruntime or opencv)")
        self.model_path = path
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_side = max_side
        self.backend = backend
        self._lock = threading.Lock()
        self._session: Any = None
        self._net: Any = None
        try:
            if backend == "onnxruntime":
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = 1
                options.inter_op_num_threads = 1
                self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                shape = self._session.get_inputs()[0].shape
                self._fixed = tuple(shape[2:]) if all(isinstance(d, int) for d in shape[2:]) else None
            else:
                self._net = cv2.FaceDetectorYN.create(
                    str(path), "", (320, 320), score_threshold, nms_threshold, 5000
                )
        except Exception as exc:  # OpenCV and ONNX Runtime raise their own untyped errors
            raise DetectorModelError(f"cannot load YuNet from {path}: {exc}") from exc

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in ``image`` (uint8 ``[H,W,3]`` RGB or ``[H,W]`` grey), best score first.

        The image is shrunk so its longest side is at most ``max_side`` (YuNet's cost grows with the
        area; faces the detector can still find at that size are the ones a classifier can judge).
        """
        _as_bgr(image[:1, :1])  # type and layout checks, before any work
        h, w = image.shape[:2]
        if h < 8 or w < 8:
            return []
        scale = min(1.0, self.max_side / max(h, w))
        if scale < 1.0:
            # Shrink first, then convert: the colour conversion then touches YuNet's pixels, not the frame's.
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            image = np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
        bgr = _as_bgr(image)
        sh, sw = bgr.shape[:2]
        sx, sy = w / sw, h / sh
        with self._lock:
            rows = self._detect_ort(bgr) if self._session is not None else self._detect_cv(bgr)
        faces = []
        for row in rows:
            x, y, bw, bh = (float(v) for v in row[:4])
            pts = tuple((float(row[4 + 2 * i]) * sx, float(row[5 + 2 * i]) * sy) for i in range(5))
            box = (
                max(0.0, x * sx),
                max(0.0, y * sy),
                min(float(w), (x + bw) * sx),
                min(float(h), (y + bh) * sy),
            )
            faces.append(Face(box=box, score=float(row[14]), landmarks=pts))
        faces.sort(key=lambda f: -f.score)
        return faces

    def _detect_cv(self, bgr: U8) -> np.ndarray:
        self._net.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, rows = self._net.detect(bgr)
        return np.zeros((0, 15), np.float32) if rows is None else np.asarray(rows, np.float32)

    def _detect_ort(self, bgr: U8) -> np.ndarray:
        """YuNet on ONNX Runtime: pad to a multiple of 32 (or letterbox into a fixed-size model), decode
        the three stride heads into ``[x, y, w, h, 5 × (x, y), score]`` rows, then NMS."""
        h, w = bgr.shape[:2]
        if self._fixed is not None:
            ph, pw = self._fixed
            k = min(ph / h, pw / w)
            resized = cv2.resize(bgr, (max(1, round(w * k)), max(1, round(h * k))))
        else:
            ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
            k, resized = 1.0, bgr
        canvas = np.zeros((ph, pw, 3), np.float32)
        canvas[: resized.shape[0], : resized.shape[1]] = resized
        outs = self._session.run(None, {self._session.get_inputs()[0].name: canvas.transpose(2, 0, 1)[None]})
        named = dict(zip((o.name for o in self._session.get_outputs()), outs, strict=True))
        rows = []
        for stride in (8, 16, 32):
            cols = pw // stride
            cls = np.clip(named[f"cls_{stride}"][0, :, 0], 0, 1)
            obj = np.clip(named[f"obj_{stride}"][0, :, 0], 0, 1)
            score = np.sqrt(cls * obj)
            keep = np.nonzero(score >= self.score_threshold)[0]
            if keep.size == 0:
                continue
            gx, gy = (keep % cols).astype(np.float32), (keep // cols).astype(np.float32)
            box = named[f"bbox_{stride}"][0, keep]
            kps = named[f"kps_{stride}"][0, keep].reshape(-1, 5, 2)
            cx, cy = (gx + box[:, 0]) * stride, (gy + box[:, 1]) * stride
            bw, bh = np.exp(box[:, 2]) * stride, np.exp(box[:, 3]) * stride
            pts = (kps + np.stack([gx, gy], 1)[:, None, :]) * stride
            rows.append(np.column_stack([cx - bw / 2, cy - bh / 2, bw, bh, pts.reshape(-1, 10), score[keep]]))
        if not rows:
            return np.zeros((0, 15), np.float32)
        cand = np.concatenate(rows).astype(np.float32)
        cand[:, :14] /= k
        kept = cv2.dnn.NMSBoxes(
            cand[:, :4].tolist(), cand[:, 14].tolist(), self.score_threshold, self.nms_threshold, top_k=5000
        )
        return cand[np.asarray(kept, np.int64).reshape(-1)]


def alignment_matrix(face: Face, size: int, margin: float = 0.25) -> np.ndarray:
    """The 2×3 affine map from image pixels to the ``size``² aligned crop.

    Rotation levels the eyes about the box centre; the crop side is ``max(box w, h) * (1 + margin)``, so
    ``margin=0.25`` keeps an eighth of the box side of context on each side (the face outline, where
    blending leaves its traces, stays inside the crop).
    """
    if size < 8:
        raise DetectorInputError(f"crop size must be at least 8, got {size}")
    (rx, ry), (lx, ly) = face.landmarks[0], face.landmarks[1]
    angle = math.degrees(math.atan2(ly - ry, lx - rx))
    x0, y0, x1, y1 = face.box
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    side = max(x1 - x0, y1 - y0, 1.0) * (1.0 + margin)
    m = cv2.getRotationMatrix2D((cx, cy), angle, size / side)
    m[0, 2] += size / 2.0 - cx
    m[1, 2] += size / 2.0 - cy
    return np.asarray(m, dtype=np.float64)


def crop_face(image: np.ndarray, face: Face, size: int, margin: float = 0.25) -> U8:
    """An aligned ``[size, size, 3]`` RGB uint8 crop of ``face`` (grey input gives three equal channels).

    Pixels outside the image are mirrored rather than black: tight training crops and full frames then
    look alike at the border, so the border carries no hint about where a crop came from.
    """
    if image.dtype != np.uint8:
        raise DetectorInputError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise DetectorInputError(f"expected an image [H,W,3] RGB or [H,W] grey, got shape {image.shape}")
    m = alignment_matrix(face, size, margin)
    # Work on the part of the frame the crop can reach (the rotated square fits in a circle of half its
    # diagonal), not on the whole frame: the same pixels, at a fraction of the cost on a 1080p frame.
    x0, y0, x1, y1 = face.box
    reach = max(x1 - x0, y1 - y0, 1.0) * (1.0 + margin) * 0.75 + 2.0
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    h, w = image.shape[:2]
    left, top = max(0, math.floor(cx - reach)), max(0, math.floor(cy - reach))
    right, bottom = min(w, math.ceil(cx + reach)), min(h, math.ceil(cy + reach))
    if right - left >= 1 and bottom - top >= 1:
        image = image[top:bottom, left:right]
        m = m.copy()
        m[:, 2] += m[:, 0] * left + m[:, 1] * top
    if image.ndim == 2:
        image = np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2RGB), dtype=np.uint8)
    # warpAffine has no area filter: shrink large faces first so the crop is not aliased.
    shrink = min(1.0, 2.0 * float(np.hypot(m[0, 0], m[0, 1])))
    if shrink < 1.0:
        h, w = image.shape[:2]
        small = cv2.resize(
            image, (max(1, round(w * shrink)), max(1, round(h * shrink))), interpolation=cv2.INTER_AREA
        )
        m = m.copy()
        m[:, 0] *= w / small.shape[1]
        m[:, 1] *= h / small.shape[0]
        image = small
    out = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return np.ascontiguousarray(out, dtype=np.uint8)
