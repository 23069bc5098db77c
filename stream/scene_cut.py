"""A cheap scene-cut detector on luma, so a stream's recurrent state is forgotten at a cut.

The colorizer's memory carries colours from one frame to the next; across a cut it would paint the new
scene with the old scene's colours until the state washes out. The detector runs on every frame of every
stream, so it must cost next to nothing: it looks at a 64x64 thumbnail (``INTER_AREA`` averages the whole
frame, so sensor noise mostly cancels).

The score of a frame is the mean absolute difference between its thumbnail and the previous one, both with
their mean removed (a brightness ramp, an auto-exposure step or a fade moves the mean, not the structure),
relative to the thumbnails' own contrast (so a dim, low-contrast scene and a bright, busy one are judged
alike), minus the median score of the last few frames. The subtraction is what tells a cut from motion: a
pan or a moving object changes every frame by a similar amount, a cut changes one frame by much more than
its neighbours (the idea of FFmpeg's ``scdet`` and PySceneDetect's adaptive detector, restricted to the
past so it works live). On synthetic scenes, cuts score 0.6-1.1; smooth pans and rings 0.15-0.35; a
brightness ramp 0. A cut right after another is ignored for ``min_gap`` frames: a flash or a single
corrupt frame would otherwise reset the state twice.

Cuts between two shots of near-identical content and contrast go unseen; the state then adapts within a
few frames, which is the same as what happens on a slow dissolve.
"""

from __future__ import annotations

from collections import deque

import cv2
import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]

THUMB = 64
DEFAULT_THRESHOLD = 0.45
DEFAULT_MIN_GAP = 8
HISTORY = 8
#: Added to the contrast normaliser (in 8-bit levels) so a flat grey frame's noise is not a cut.
_CONTRAST_FLOOR = 4.0


def thumbnail(y: U8) -> F32:
    """The frame at 64x64 with its mean removed: structure only, brightness gone."""
    small = cv2.resize(y, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32)
    out: F32 = small - np.float32(small.mean())
    return out


def change(a: F32, b: F32) -> float:
    """How much two mean-removed thumbnails differ, relative to their contrast (0 = identical)."""
    contrast = max(float(np.abs(a).mean()), float(np.abs(b).mean())) + _CONTRAST_FLOOR
    return float(np.abs(a - b).mean()) / contrast


class SceneCutDetector:
    """Feed it every frame's luma in order; it says which frames start a new scene.

    Not thread-safe: one detector per stream, called from one place at a time.
    """

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, min_gap: int = DEFAULT_MIN_GAP):
        if threshold <= 0:
            raise ValueError(f"scene-cut threshold must be positive, got {threshold}")
        if min_gap < 0:
            raise ValueError(f"min_gap must be >= 0 frames, got {min_gap}")
        self.threshold = threshold
        self.min_gap = min_gap
        self.score = 0.0
        """The last frame's score (for logs and tuning)."""
        self._previous: F32 | None = None
        self._history: deque[float] = deque(maxlen=HISTORY)
        self._since_cut = min_gap

    def reset(self) -> None:
        """Forget the previous frame: after a reconnect or a loop the next frame is not compared with the
        old one (the state is reset for that reason already)."""
        self._previous = None
        self._history.clear()
        self._since_cut = self.min_gap

    def update(self, y: U8) -> bool:
        """True when ``y`` starts a new scene."""
        thumb = thumbnail(y)
        previous, self._previous = self._previous, thumb
        self._since_cut += 1
        if previous is None:
            self.score = 0.0
            return False
        raw = change(previous, thumb)
        baseline = float(np.median(np.fromiter(self._history, dtype=np.float64))) if self._history else 0.0
        self._history.append(raw)
        self.score = raw - baseline
        if self.score > self.threshold and self._since_cut > self.min_gap:
            self._since_cut = 0
            # The cut's own jump is not the new scene's motion level: keep it out of the baseline.
            self._history.clear()
            return True
        return False
