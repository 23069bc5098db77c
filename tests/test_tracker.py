"""Face tracking, per-track aggregation and verdict labels of the deepfake detector.

The detector tests use a small stand-in classifier (fixed probabilities per call) and stand-in face
finder, so they check the tracking and verdict logic alone; the real models are exercised by
tests/test_detect_cli.py and the benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest

from chromastream.models.detector.detector import DeepfakeDetector, Verdict
from chromastream.models.detector.faces import Face
from chromastream.models.detector.tracker import FaceTracker, VerdictAggregator, iou, label_for, trimmed_mean
from chromastream.stream.metadata import DEEPFAKE_KEYS


def box_at(x: float, y: float, side: float = 60.0) -> tuple[float, float, float, float]:
    return (x, y, x + side, y + side)


# ---------------------------------------------------------------------------------------------- labels


@pytest.mark.parametrize(
    ("p", "label"),
    [
        (None, "no_face"),
        (0.0, "real"),
        (0.39, "real"),
        (0.40, "uncertain"),
        (0.5, "uncertain"),
        (0.599, "uncertain"),
        (0.60, "fake"),
        (1.0, "fake"),
    ],
)
def test_label_band_edges(p: float | None, label: str) -> None:
    assert label_for(p, threshold=0.5, band=0.1) == label


def test_label_without_band_is_a_plain_threshold() -> None:
    assert label_for(0.4999, 0.5, 0.0) == "real"
    assert label_for(0.5, 0.5, 0.0) == "fake"


# ---------------------------------------------------------------------------------------------- tracker


def test_iou_known_values() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_ids_stable_under_small_motion() -> None:
    tracker = FaceTracker()
    first = tracker.update([box_at(10, 10), box_at(300, 40)])
    assert first == [1, 2]
    for step in range(1, 10):
        # Both faces drift a few pixels per sample; the input order is swapped every other sample.
        a, b = box_at(10 + 4 * step, 10 + 2 * step), box_at(300 - 3 * step, 40)
        ids = tracker.update([a, b] if step % 2 else [b, a])
        assert ids == ([1, 2] if step % 2 else [2, 1])


def test_new_face_gets_new_id_and_ids_are_not_reused() -> None:
    tracker = FaceTracker(max_missed=0)
    assert tracker.update([box_at(0, 0)]) == [1]
    assert tracker.update([box_at(2, 0), box_at(400, 0)]) == [1, 2]
    # Track 1 vanishes and ends at once (max_missed=0); a face appearing where it was is someone new.
    assert tracker.update([box_at(400, 0)]) == [2]
    assert tracker.expired == [1]
    assert tracker.update([box_at(0, 0), box_at(400, 0)]) == [3, 2]


def test_track_survives_max_missed_then_expires() -> None:
    tracker = FaceTracker(max_missed=2)
    tracker.update([box_at(0, 0)])
    assert tracker.update([]) == [] and tracker.expired == []
    assert tracker.update([]) == [] and tracker.expired == []
    assert tracker.update([box_at(3, 3)]) == [1], "seen again within max_missed: same track"
    for _ in range(2):
        tracker.update([])
    tracker.update([])
    assert tracker.expired == [1]
    assert tracker.tracks == {}
    assert tracker.update([box_at(3, 3)]) == [2]


def test_greedy_matching_prefers_highest_overlap() -> None:
    tracker = FaceTracker(iou_threshold=0.1)
    tracker.update([box_at(0, 0), box_at(50, 0)])  # overlapping neighbours, ids 1 and 2
    # One face now sits almost exactly on track 2; it must go to track 2 even though it also overlaps 1.
    ids = tracker.update([box_at(48, 0)])
    assert ids == [2]


def test_reset_starts_ids_again() -> None:
    tracker = FaceTracker()
    tracker.update([box_at(0, 0), box_at(200, 0)])
    tracker.reset()
    assert tracker.update([box_at(200, 0)]) == [1]


# ---------------------------------------------------------------------------------------------- aggregation


def test_trimmed_mean_values() -> None:
    assert trimmed_mean([0.2]) == pytest.approx(0.2)
    assert trimmed_mean([0.2, 0.4]) == pytest.approx(0.3)
    assert trimmed_mean([0.1, 0.9, 0.2]) == pytest.approx(0.2)  # three: the median
    # Eight values, a quarter cut from each end: mean of the middle four.
    assert trimmed_mean([0.0, 1.0, 0.2, 0.3, 0.4, 0.5, 0.05, 0.95]) == pytest.approx(
        (0.2 + 0.3 + 0.4 + 0.5) / 4
    )


def test_one_outlier_does_not_flip_a_track() -> None:
    agg = VerdictAggregator(window=8)
    for p in (0.1, 0.12, 0.08, 0.11):
        agg.add(7, p)
    after = agg.add(7, 0.99)  # one spoiled crop
    assert label_for(after, 0.5, 0.1) == "real"
    assert after < 0.2


def test_sustained_change_shows_within_a_window() -> None:
    agg = VerdictAggregator(window=4)
    for _ in range(4):
        agg.add(1, 0.1)
    for _ in range(4):
        last = agg.add(1, 0.9)
    assert label_for(last, 0.5, 0.1) == "fake"
    assert agg.samples(1) == 4


def test_tracks_aggregate_separately_and_drop() -> None:
    agg = VerdictAggregator()
    agg.add(1, 0.1)
    agg.add(2, 0.9)
    assert agg.probability(1) == pytest.approx(0.1)
    assert agg.probability(2) == pytest.approx(0.9)
    agg.drop(1)
    assert agg.samples(1) == 0
    with pytest.raises(KeyError):
        agg.probability(1)


# ---------------------------------------------------------------------------------------------- detector


@dataclass(frozen=True)
class StandInInfo:
    version: str = "stand-in"
    input_size: int = 32
    temperature: float = 1.0
    threshold: float = 0.5
    uncertain_band: float = 0.1


class ScriptedClassifier:
    """Returns the next row of a script per call: a stand-in with the real classifier's shape."""

    def __init__(self, script: list[list[float]]) -> None:
        self.info = StandInInfo()
        self.script = list(script)
        self.crop_shapes: list[tuple[int, ...]] = []

    def probabilities(self, crops: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float64]:
        self.crop_shapes += [c.shape for c in crops]
        row = self.script.pop(0)
        assert len(row) == len(crops)
        return np.asarray(row, dtype=np.float64)


class ScriptedFaces:
    def __init__(self, script: list[list[tuple[float, float, float, float]]]) -> None:
        self.script = list(script)

    def detect(self, image: np.ndarray) -> list[Face]:
        boxes = self.script.pop(0)
        return [
            Face(
                box=b,
                score=0.9,
                landmarks=((b[0] + 15, b[1] + 20), (b[0] + 45, b[1] + 20), (0, 0), (0, 0), (0, 0)),
            )
            for b in boxes
        ]


FRAME = np.zeros((240, 320, 3), dtype=np.uint8)


def test_no_face_has_no_probability() -> None:
    detector = DeepfakeDetector(ScriptedClassifier([]), ScriptedFaces([[]]))
    verdict = detector.sample(FRAME, pts=0)
    assert verdict.label == "no_face"
    assert verdict.probability is None
    assert verdict.faces == []
    assert list(verdict.to_json()) == list(DEEPFAKE_KEYS)


def test_frame_verdict_is_the_most_suspicious_track() -> None:
    faces = ScriptedFaces([[box_at(10, 10), box_at(200, 10)]] * 3)
    classifier = ScriptedClassifier([[0.1, 0.8], [0.1, 0.9], [0.15, 0.85]])
    detector = DeepfakeDetector(classifier, faces)
    verdict: Verdict | None = None
    for pts in range(3):
        verdict = detector.sample(FRAME, pts=pts * 3000)
    assert verdict is not None
    assert verdict.label == "fake"
    assert verdict.probability == pytest.approx(0.85)  # median of 0.8, 0.9, 0.85
    assert [f["track"] for f in verdict.faces] == [2, 1]  # most suspicious first
    assert [f["samples"] for f in verdict.faces] == [3, 3]
    assert verdict.faces[1]["label"] == "real"
    assert verdict.sampled_pts == 6000
    assert verdict.detector == "stand-in"
    assert classifier.crop_shapes == [(32, 32, 3)] * 6, "crops come at the classifier's input size"
    payload = verdict.to_json()
    assert list(payload) == list(DEEPFAKE_KEYS)
    assert set(payload["faces"][0]) == {"track", "box", "probability", "label", "samples"}


def test_face_leaving_gives_no_face_and_reset_clears_tracks() -> None:
    faces = ScriptedFaces([[box_at(10, 10)], [], [box_at(12, 10)]])
    detector = DeepfakeDetector(ScriptedClassifier([[0.9], [0.2]]), faces, window=8)
    assert detector.sample(FRAME).label == "fake"
    gone = detector.sample(FRAME)
    assert (gone.label, gone.probability) == ("no_face", None)
    back = detector.sample(FRAME)
    assert back.faces[0]["track"] == 1 and back.faces[0]["samples"] == 2
    assert back.probability == pytest.approx(0.55)
    assert back.label == "uncertain"
    detector.reset()
    assert detector.tracker.tracks == {} and detector.aggregator.samples(1) == 0


def test_clip_verdict_takes_the_most_suspicious_track() -> None:
    from chromastream.models.detector.detector import ClipVerdict

    # Face A for three samples, then face B alone for two (A's track ends after max_missed=0).
    faces = ScriptedFaces([[box_at(10, 10)]] * 3 + [[box_at(200, 10)]] * 2 + [[]])
    classifier = ScriptedClassifier([[0.1], [0.2], [0.15], [0.7], [0.8]])
    detector = DeepfakeDetector(classifier, faces, window=16, max_missed=0)
    clip = ClipVerdict(detector)
    for pts in range(6):
        clip.add(detector.sample(FRAME, pts=pts))
    assert (clip.frames_sampled, clip.frames_with_faces) == (6, 5)
    ranked = clip.ranked_tracks()
    assert [(r.track, r.samples, r.first_pts, r.last_pts) for r in ranked] == [(2, 2, 3, 4), (1, 3, 0, 2)]
    assert ranked[1].probability == pytest.approx(0.15)
    assert clip.probability == pytest.approx(0.75)
    assert clip.label == "fake"


def test_clip_without_faces_is_no_face() -> None:
    from chromastream.models.detector.detector import ClipVerdict

    detector = DeepfakeDetector(ScriptedClassifier([]), ScriptedFaces([[], []]))
    clip = ClipVerdict(detector)
    for _ in range(2):
        clip.add(detector.sample(FRAME))
    assert (clip.probability, clip.label, clip.tracks) == (None, "no_face", {})
