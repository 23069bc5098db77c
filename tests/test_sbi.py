"""Self-blended fakes: the mask stays on the face, nothing outside it changes, a seed fixes the result."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from chromastream.models.detector import DetectorInputError
from chromastream.models.detector.sbi import augment_input, face_mask, self_blend

SIZE = 160
BOX = (40.0, 30.0, 120.0, 130.0)
LANDMARKS = ((62.0, 68.0), (98.0, 66.0), (80.0, 88.0), (66.0, 108.0), (95.0, 107.0))


def _face_picture(seed: int = 0) -> np.ndarray:
    """A textured synthetic face: noise background, a skin ellipse, dark eyes and mouth."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    img = np.asarray(cv2.GaussianBlur(img, (0, 0), 2), dtype=np.uint8)
    cv2.ellipse(img, (80, 82), (36, 48), 0, 0, 360, (200, 160, 140), -1)
    for x, y in LANDMARKS[:2]:
        cv2.circle(img, (round(x), round(y)), 5, (40, 30, 30), -1)
    cv2.line(img, (66, 108), (95, 107), (120, 50, 60), 3)
    return np.ascontiguousarray(img)


@pytest.mark.parametrize("seed", range(12))
def test_mask_lies_inside_the_face_box(seed: int) -> None:
    mask = face_mask(LANDMARKS, BOX, (SIZE, SIZE), np.random.default_rng(seed))
    assert mask.shape == (SIZE, SIZE) and mask.dtype == np.float32
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    x0, y0, x1, y1 = (int(v) for v in BOX)
    outside = np.ones_like(mask, dtype=bool)
    outside[y0 : y1 + 1, x0 : x1 + 1] = False
    assert mask[outside].max() == 0.0
    # It covers the inner face (eyes to mouth) rather than a sliver somewhere.
    assert mask[70:100, 65:95].mean() > 0.2
    assert (mask > 0).sum() > 0.2 * (x1 - x0) * (y1 - y0)


def test_mask_edges_are_soft() -> None:
    masks = [face_mask(LANDMARKS, BOX, (SIZE, SIZE), np.random.default_rng(s)) for s in range(8)]
    # Blurred boundaries: many pixels strictly between 0 and the peak.
    assert all(((m > 0.01) & (m < m.max() - 0.01)).sum() > 100 for m in masks)


@pytest.mark.parametrize("seed", range(8))
def test_output_differs_only_inside_the_mask(seed: int) -> None:
    img = _face_picture(seed)
    fake, mask = self_blend(img, LANDMARKS, BOX, np.random.default_rng(seed))
    assert fake.shape == img.shape and fake.dtype == np.uint8
    changed = np.any(fake != img, axis=2)
    dilated = cv2.dilate((mask > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    assert not np.any(changed & ~dilated)
    assert changed.sum() > 200  # and it is a fake: the face did change


def test_same_seed_same_fake_other_seed_other_fake() -> None:
    img = _face_picture()
    a, ma = self_blend(img, LANDMARKS, BOX, np.random.default_rng(7))
    b, mb = self_blend(img, LANDMARKS, BOX, np.random.default_rng(7))
    c, _ = self_blend(img, LANDMARKS, BOX, np.random.default_rng(8))
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    assert not np.array_equal(a, c)
    x, y = augment_input(a, np.random.default_rng(3)), augment_input(a, np.random.default_rng(3))
    assert np.array_equal(x, y)


def test_augment_input_makes_grey_and_keeps_shape() -> None:
    img = _face_picture()
    outs = [augment_input(img, np.random.default_rng(s)) for s in range(40)]
    assert all(o.shape == img.shape and o.dtype == np.uint8 for o in outs)
    grey = [np.array_equal(o[:, :, 0], o[:, :, 1]) and np.array_equal(o[:, :, 1], o[:, :, 2]) for o in outs]
    assert 0.3 < np.mean(grey) < 0.9  # grey most of the time (CCTV), colour still seen
    always_grey = [augment_input(img, np.random.default_rng(s), grey_p=1.0) for s in range(5)]
    assert all(np.array_equal(o[:, :, 0], o[:, :, 2]) for o in always_grey)


def test_bad_inputs_raise() -> None:
    with pytest.raises(DetectorInputError, match="5 landmarks"):
        face_mask(LANDMARKS[:3], BOX, (SIZE, SIZE), np.random.default_rng(0))
    with pytest.raises(DetectorInputError, match="uint8"):
        self_blend(np.zeros((SIZE, SIZE, 3), np.float32), LANDMARKS, BOX, np.random.default_rng(0))
