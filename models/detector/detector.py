"""The deepfake detector as the CLI, the benchmark and the live pipeline use it: faces -> aligned crops ->
calibrated P(fake) -> per-track aggregation -> one verdict per sampled frame (docs/ARCHITECTURE.md,
Contracts).

The verdict of a frame is that of its most suspicious face track (the highest aggregated probability):
one manipulated face anywhere makes the frame suspicious, whoever else is in the picture. A frame with no
face is ``no_face`` with probability ``None``; tracks that are not in the current frame do not speak for
it, so a number is never reported for a frame where no face was seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from chromastream.models.detector.tracker import LABEL_NO_FACE, FaceTracker, VerdictAggregator, label_for

if TYPE_CHECKING:
    from chromastream.models.detector.faces import Face


class ClassifierInfo(Protocol):
    """What the detector needs of a classifier's metadata (``classifier_runtime.DetectorInfo``)."""

    @property
    def version(self) -> str: ...
    @property
    def input_size(self) -> int: ...
    @property
    def threshold(self) -> float: ...
    @property
    def uncertain_band(self) -> float: ...


class FaceClassifier(Protocol):
    """Calibrated P(fake) for aligned face crops (``classifier_runtime.DeepfakeClassifier``)."""

    @property
    def info(self) -> ClassifierInfo: ...
    def probabilities(self, crops: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float64]: ...


class FaceFinder(Protocol):
    """Faces of one picture (``faces.FaceDetector``)."""

    def detect(self, image: np.ndarray) -> list[Face]: ...


@dataclass(frozen=True)
class Verdict:
    """The detector's answer for one sampled frame; :meth:`to_json` is the ``deepfake`` metadata entry."""

    label: str
    """``real`` / ``fake`` / ``uncertain`` / ``no_face``."""
    probability: float | None
    """Aggregated calibrated P(fake) of the most suspicious face track; ``None`` when no face is seen."""
    faces: list[dict[str, Any]]
    """Per face track in this frame, most suspicious first: ``track``, ``box`` [x0, y0, x1, y1],
    ``probability`` (aggregated; rounded only in :meth:`to_json`), ``label``, ``samples`` (how many
    samples the aggregate rests on)."""
    sampled_pts: int | None
    detector: str
    """Classifier model version."""

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "probability": None if self.probability is None else round(float(self.probability), 4),
            "faces": [{**face, "probability": round(float(face["probability"]), 4)} for face in self.faces],
            "sampled_pts": None if self.sampled_pts is None else int(self.sampled_pts),
            "detector": self.detector,
        }


@dataclass(frozen=True)
class FrameScores:
    """One sampled frame's raw material, for callers that need more than the verdict (the benchmark):
    the faces found, the per-face probability of this frame alone, and the track ids they got."""

    faces: list[Face]
    probabilities: npt.NDArray[np.float64]
    tracks: list[int]


class DeepfakeDetector:
    """Faces + classifier + tracker + aggregator for one stream (or one video, or one picture).

    One instance holds the tracks of one stream; call :meth:`reset` on a scene cut or reconnect, or
    use one instance per stream. The default classifier and face detector are the shipped ones,
    loaded on construction so a missing model fails before any frame is read.
    """

    def __init__(
        self,
        classifier: FaceClassifier | None = None,
        faces: FaceFinder | None = None,
        window: int = 8,
        *,
        max_missed: int = 3,
        iou_threshold: float = 0.3,
    ) -> None:
        if classifier is None:
            from chromastream.models.detector.classifier_runtime import DeepfakeClassifier

            classifier = DeepfakeClassifier()
        if faces is None:
            from chromastream.models.detector.faces import FaceDetector

            faces = FaceDetector()
        self.classifier = classifier
        self.faces = faces
        self.tracker = FaceTracker(iou_threshold=iou_threshold, max_missed=max_missed)
        self.aggregator = VerdictAggregator(window=window)
        self.last: FrameScores | None = None

    @property
    def version(self) -> str:
        return str(self.classifier.info.version)

    def reset(self) -> None:
        self.tracker.reset()
        self.aggregator.reset()
        self.last = None

    def label(self, probability: float | None) -> str:
        info = self.classifier.info
        return label_for(probability, float(info.threshold), float(info.uncertain_band))

    def sample(self, image: np.ndarray, pts: int | None = None, faces: list[Face] | None = None) -> Verdict:
        """Analyse one sampled frame (uint8 RGB ``[H,W,3]`` or grey ``[H,W]``), update the tracks and
        return the current verdict. ``faces`` skips detection when the caller already has them (the
        benchmark feeds the same boxes to a baseline)."""
        from chromastream.models.detector.faces import crop_face

        found = self.faces.detect(image) if faces is None else faces
        size = int(self.classifier.info.input_size)
        crops = [crop_face(image, face, size) for face in found]
        scores = (
            np.asarray(self.classifier.probabilities(crops), dtype=np.float64)
            if crops
            else np.zeros(0, dtype=np.float64)
        )
        return self.update(found, scores, pts)

    def update(self, found: Sequence[Face], scores: npt.NDArray[np.float64], pts: int | None) -> Verdict:
        """Feed one frame's faces and their per-frame probabilities to the tracks; the verdict."""
        if len(found) != len(scores):
            raise ValueError(f"{len(found)} faces but {len(scores)} probabilities")
        ids = self.tracker.update([face.box for face in found])
        for track in self.tracker.expired:
            self.aggregator.drop(track)
        self.last = FrameScores(list(found), scores, ids)
        entries: list[dict[str, Any]] = []
        worst: float | None = None
        for face, track, score in zip(found, ids, scores, strict=True):
            aggregated = self.aggregator.add(track, float(score))
            worst = aggregated if worst is None else max(worst, aggregated)
            entries.append(
                {
                    "track": int(track),
                    "box": [round(float(v), 1) for v in face.box],
                    "probability": aggregated,
                    "label": self.label(aggregated),
                    "samples": self.aggregator.samples(track),
                }
            )
        entries.sort(key=lambda entry: -float(entry["probability"]))
        return Verdict(
            label=self.label(worst) if worst is not None else LABEL_NO_FACE,
            probability=worst,
            faces=entries,
            sampled_pts=pts,
            detector=self.version,
        )


@dataclass
class TrackRecord:
    """Everything a clip summary keeps of one face track."""

    track: int
    probability: float
    label: str
    samples: int
    first_pts: int | None
    last_pts: int | None
    box: list[float]

    def to_json(self) -> dict[str, Any]:
        return {
            "track": self.track,
            "probability": round(self.probability, 4),
            "label": self.label,
            "samples": self.samples,
            "first_pts": self.first_pts,
            "last_pts": self.last_pts,
            "box": self.box,
        }


class ClipVerdict:
    """One answer for a whole clip (a video file, or a picture as a one-frame clip) from the verdicts of
    its sampled frames.

    Each track keeps its aggregated probability as of its last sample; the clip's probability is the
    highest of them (the same rule as a frame: one manipulated face makes the clip suspicious). For an
    aggregate over the whole of each track, give the detector a ``window`` at least as long as the
    number of samples. A clip where no face was ever seen is ``no_face`` with probability ``None``.
    """

    def __init__(self, detector: DeepfakeDetector) -> None:
        self.detector = detector
        self.frames_sampled = 0
        self.frames_with_faces = 0
        self.tracks: dict[int, TrackRecord] = {}

    def add(self, verdict: Verdict) -> None:
        self.frames_sampled += 1
        if verdict.faces:
            self.frames_with_faces += 1
        for face in verdict.faces:
            track = int(face["track"])
            record = self.tracks.get(track)
            first = verdict.sampled_pts if record is None else record.first_pts
            self.tracks[track] = TrackRecord(
                track=track,
                probability=float(face["probability"]),
                label=str(face["label"]),
                samples=1 if record is None else record.samples + 1,
                first_pts=first,
                last_pts=verdict.sampled_pts,
                box=[float(v) for v in face["box"]],
            )

    @property
    def probability(self) -> float | None:
        return max((r.probability for r in self.tracks.values()), default=None)

    @property
    def label(self) -> str:
        return self.detector.label(self.probability)

    def ranked_tracks(self) -> list[TrackRecord]:
        """Tracks, most suspicious first."""
        return sorted(self.tracks.values(), key=lambda r: (-r.probability, r.track))
