"""Face tracks across sampled frames, and a per-track verdict that one bad sample cannot flip.

The detector sees a stream only at sampled frames (a few per second), so a track is a chain of boxes
from sample to sample. Matching is greedy by IoU: at a few samples per second faces move a fraction of
their size between samples, and greedy matching on the highest overlaps first is what SORT-style
trackers reduce to when there is no motion model. A track that is not seen for more than
``max_missed`` consecutive samples ends; a face that appears later gets a new id, so a verdict is never
carried over to a different person who happens to stand in the same place minutes later.

Per track, the verdict is a trimmed mean of the last ``window`` calibrated probabilities: a single
crop spoiled by motion blur, occlusion or a bad landmark fit does not flip a track, while a sustained
change still shows within a window.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

Box = tuple[float, float, float, float]

LABEL_REAL = "real"
LABEL_FAKE = "fake"
LABEL_UNCERTAIN = "uncertain"
LABEL_NO_FACE = "no_face"


def label_for(probability: float | None, threshold: float, band: float) -> str:
    """``fake`` if p >= threshold + band, ``real`` if p < threshold − band, else ``uncertain``;
    no probability (no face) is ``no_face``, never a guess."""
    if probability is None:
        return LABEL_NO_FACE
    if probability >= threshold + band:
        return LABEL_FAKE
    if probability < threshold - band:
        return LABEL_REAL
    return LABEL_UNCERTAIN


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (0 for empty or disjoint boxes)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Track:
    """One face followed over samples: its id, latest box and how many samples in a row it was missed."""

    id: int
    box: Box
    missed: int = 0
    hits: int = 1


class FaceTracker:
    """Greedy IoU matching of the faces of each sampled frame to the live tracks.

    ``update`` returns the track id of each face in input order and records which tracks ended, so the
    caller can drop their state (:attr:`expired`). Ids are never reused within one tracker (until
    :meth:`reset`).
    """

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 3) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError("iou_threshold must be in (0, 1]")
        if max_missed < 0:
            raise ValueError("max_missed must be >= 0")
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self.tracks: dict[int, Track] = {}
        self.expired: list[int] = []
        self._next_id = 1

    def reset(self) -> None:
        self.tracks.clear()
        self.expired = []
        self._next_id = 1

    def update(self, boxes: Sequence[Box]) -> list[int]:
        """Match ``boxes`` (one sampled frame) to tracks; new faces start tracks; unseen tracks age."""
        pairs = sorted(
            (
                (overlap, track_id, index)
                for index, box in enumerate(boxes)
                for track_id, track in self.tracks.items()
                if (overlap := iou(track.box, box)) >= self.iou_threshold
            ),
            key=lambda item: (-item[0], item[1], item[2]),
        )
        assigned: dict[int, int] = {}
        used_tracks: set[int] = set()
        for _, track_id, index in pairs:
            if index in assigned or track_id in used_tracks:
                continue
            assigned[index] = track_id
            used_tracks.add(track_id)
        ids: list[int] = []
        for index, box in enumerate(boxes):
            box = (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
            if index in assigned:
                track = self.tracks[assigned[index]]
                track.box, track.missed = box, 0
                track.hits += 1
            else:
                track = Track(self._next_id, box)
                self.tracks[track.id] = track
                used_tracks.add(track.id)
                self._next_id += 1
            ids.append(track.id)
        self.expired = []
        for track_id in list(self.tracks):
            if track_id in used_tracks:
                continue
            track = self.tracks[track_id]
            track.missed += 1
            if track.missed > self.max_missed:
                del self.tracks[track_id]
                self.expired.append(track_id)
        return ids


def trimmed_mean(values: Sequence[float], trim: float = 0.25) -> float:
    """Mean after dropping the ``trim`` share of values at each end, at least one at each end once
    there are three or more (with three, this is the median)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    cut = math.floor(len(ordered) * trim)
    if len(ordered) >= 3:
        cut = max(cut, 1)
    kept = ordered[cut : len(ordered) - cut]
    return sum(kept) / len(kept)


class VerdictAggregator:
    """Per track: the last ``window`` probabilities and their trimmed mean."""

    def __init__(self, window: int = 8, trim: float = 0.25) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        if not 0.0 <= trim < 0.5:
            raise ValueError("trim must be in [0, 0.5)")
        self.window = window
        self.trim = trim
        self._history: dict[int, deque[float]] = {}

    def add(self, track: int, probability: float) -> float:
        """Record one sample of ``track`` and return the track's aggregated probability."""
        history = self._history.setdefault(track, deque(maxlen=self.window))
        history.append(float(probability))
        return self.probability(track)

    def probability(self, track: int) -> float:
        history = self._history.get(track)
        if not history:
            raise KeyError(f"no samples for track {track}")
        return trimmed_mean(list(history), self.trim)

    def samples(self, track: int) -> int:
        """How many samples the aggregate of ``track`` rests on (at most ``window``)."""
        return len(self._history.get(track, ()))

    def drop(self, track: int) -> None:
        self._history.pop(track, None)

    def reset(self) -> None:
        self._history.clear()
