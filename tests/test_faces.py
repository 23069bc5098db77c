"""Face detection and aligned crops: YuNet on real shared faces, alignment geometry on synthetic ones."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from chromastream.models.detector import DetectorInputError, DetectorModelError
from chromastream.models.detector.faces import Face, FaceDetector, alignment_matrix, crop_face
from chromastream.models.shared_data import shared_root

SHARED = shared_root()
REAL = SHARED / "data" / "faces" / "real"
needs_shared = pytest.mark.skipif(
    not REAL.is_dir() and os.environ.get("CI") != "true", reason=f"shared faces not found at {REAL}"
)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


def _real_face(name: str = "0_0_aidai_0014.jpg") -> np.ndarray:
    bgr = cv2.imread(str(REAL / name))
    assert bgr is not None
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _on_canvas(face: np.ndarray, canvas: tuple[int, int], at: tuple[int, int]) -> np.ndarray:
    out = np.full((*canvas, 3), 90, np.uint8)
    y, x = at
    out[y : y + face.shape[0], x : x + face.shape[1]] = face
    return out


@needs_shared
def test_finds_face_in_a_frame_and_reports_input_pixels(detector: FaceDetector) -> None:
    face = _real_face()
    frame = _on_canvas(face, (720, 1280), (300, 700))  # wider than max_side: detection runs shrunk
    faces = detector.detect(frame)
    assert len(faces) == 1
    x0, y0, x1, y1 = faces[0].box
    assert 0.6 <= faces[0].score <= 1.0
    # The box lies on the pasted face (in full-resolution pixels), the eyes inside it, right eye left.
    assert 680 <= x0 < x1 <= 700 + face.shape[1] + 20
    assert 280 <= y0 < y1 <= 300 + face.shape[0] + 20
    (rx, ry), (lx, ly) = faces[0].landmarks[:2]
    assert x0 < rx < lx < x1 and y0 < ry < y1 and y0 < ly < y1
    assert len(faces[0].landmarks) == 5


@needs_shared
def test_grey_input_detects_like_rgb(detector: FaceDetector) -> None:
    rgb = _on_canvas(_real_face(), (360, 480), (100, 150))
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    a, b = detector.detect(rgb), detector.detect(grey)
    assert len(a) == len(b) == 1
    assert np.allclose(a[0].box, b[0].box, atol=13)  # 10 % of the 130 px face (detected at 0.8 scale)


def test_blank_frame_has_no_face(detector: FaceDetector) -> None:
    assert detector.detect(np.full((240, 320), 128, np.uint8)) == []


def test_bad_input_raises_one_clear_error(detector: FaceDetector) -> None:
    with pytest.raises(DetectorInputError, match="uint8"):
        detector.detect(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(DetectorInputError, match="shape"):
        detector.detect(np.zeros((64, 64, 4), np.uint8))
    with pytest.raises(DetectorModelError, match="not found"):
        FaceDetector(Path("/nonexistent/yunet.onnx"))


def test_crop_levels_the_eyes_and_keeps_the_margin() -> None:
    # Two bright "eyes" on a tilted line: after alignment they sit on one row, symmetric about the centre.
    image = np.zeros((200, 200, 3), np.uint8)
    right, left = (70.0, 110.0), (130.0, 80.0)
    for x, y in (right, left):
        cv2.circle(image, (round(x), round(y)), 3, (255, 255, 255), -1)
    face = Face(
        box=(50.0, 45.0, 150.0, 145.0), score=1.0, landmarks=(right, left, (100, 110), (80, 130), (120, 120))
    )
    crop = crop_face(image, face, 100, margin=0.25)
    assert crop.shape == (100, 100, 3) and crop.dtype == np.uint8
    ys, xs = np.nonzero(crop[:, :, 0] > 128)
    left_blob, right_blob = xs < 50, xs >= 50
    assert abs(ys[left_blob].mean() - ys[right_blob].mean()) < 1.5
    # Eye distance 67 px in a box of side 100*1.25 mapped to 100 px: about 54 px apart in the crop.
    assert xs[right_blob].mean() - xs[left_blob].mean() == pytest.approx(67.1 / 1.25, abs=2)
    m = alignment_matrix(face, 100, 0.25)
    assert np.hypot(m[0, 0], m[0, 1]) == pytest.approx(100 / 125)


def test_grey_crop_has_three_equal_channels() -> None:
    grey = (np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)
    face = Face((10.0, 10.0, 50.0, 50.0), 0.9, ((20, 25), (40, 25), (30, 35), (22, 42), (38, 42)))
    crop = crop_face(grey, face, 32)
    assert crop.shape == (32, 32, 3)
    assert np.array_equal(crop[:, :, 0], crop[:, :, 1]) and np.array_equal(crop[:, :, 1], crop[:, :, 2])


@needs_shared
def test_large_face_crop_is_not_aliased(detector: FaceDetector) -> None:
    face_img = _real_face()
    small = detector.detect(face_img)[0]
    k = 8.0
    big = cv2.resize(face_img, None, fx=k, fy=k, interpolation=cv2.INTER_CUBIC)
    scaled = Face(
        box=(small.box[0] * k, small.box[1] * k, small.box[2] * k, small.box[3] * k),
        score=small.score,
        landmarks=tuple((x * k, y * k) for x, y in small.landmarks),
    )
    small_crop = crop_face(face_img, small, 48).astype(np.float64)
    big_crop = crop_face(big, scaled, 48).astype(np.float64)
    naive = cv2.warpAffine(big, alignment_matrix(scaled, 48), (48, 48), flags=cv2.INTER_LINEAR).astype(
        np.float64
    )
    # A 1000 px face cut to 48 px matches the 130 px one cut to 48 px; point-sampling it would not.
    err = np.abs(small_crop - big_crop)[4:-4, 4:-4].mean()
    naive_err = np.abs(small_crop - naive)[4:-4, 4:-4].mean()
    assert err < 4.0 and err < naive_err


@needs_shared
def test_onnxruntime_decoding_matches_opencv_facedetectoryn() -> None:
    face = _real_face()
    frame = _on_canvas(face, (432, 768), (100, 300))
    small = np.ascontiguousarray(face[::2, ::2])
    frame[250 : 250 + small.shape[0], 500 : 500 + small.shape[1]] = small
    ours, theirs = FaceDetector().detect(frame), FaceDetector(backend="opencv").detect(frame)
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs, strict=True):
        assert np.allclose(a.box, b.box, atol=0.5)
        assert np.allclose(a.landmarks, b.landmarks, atol=0.5)
        assert a.score == pytest.approx(b.score, abs=1e-3)


@needs_shared
def test_fixed_size_yunet_file_is_letterboxed() -> None:
    fixed = SHARED / "weights" / "yunet" / "yunet_n_320_320.onnx"
    if not fixed.is_file():
        pytest.skip(f"{fixed} not present")
    frame = _on_canvas(_real_face(), (432, 768), (100, 300))
    dynamic, letterboxed = FaceDetector().detect(frame), FaceDetector(fixed).detect(frame)
    assert len(dynamic) == len(letterboxed) == 1
    assert np.allclose(dynamic[0].box, letterboxed[0].box, atol=10)  # 768 -> 320 px: a few pixels apart
