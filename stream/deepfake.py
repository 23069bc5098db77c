"""The live pipeline's deepfake sampler: the detector behind
:class:`chromastream.stream.pipeline.DetectorHook`.

The pipeline hands this hook an *input* frame (the grey luma, before colorization: docs/ARCHITECTURE.md,
Contracts) at most ``detector_rate`` times a second per stream and never waits for it, so detection can only
cost CPU, never video frames. Work runs in one thread of its own: face detection and the classifier are one
core's worth of work at most, and a single thread keeps them from competing with the colorizer for both cores.

Each stream has its own :class:`~chromastream.models.detector.detector.DeepfakeDetector` (its own face tracks
and verdict history); the face detector and classifier sessions are loaded once and shared.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt

from chromastream.stream.frames import Frame

logger = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint8]


@cache
def _limited_to_full() -> U8:
    """8-bit limited-range luma (16..235) -> full-range grey, the way cameras' pictures are meant to look."""
    y = np.arange(256, dtype=np.float64)
    return np.clip((y - 16.0) * 255.0 / 219.0 + 0.5, 0, 255).astype(np.uint8)


def luma_to_grey(y: U8, full_range: bool) -> U8:
    """The picture the detector sees: a frame's luma as a full-range grey image."""
    return y if full_range else _limited_to_full()[y]


class DeepfakeSampler:
    """Per-stream deepfake verdicts on sampled input frames (the pipeline's detector hook)."""

    def __init__(self, classifier: Any = None, faces: Any = None, window: int = 8) -> None:
        """Loads the shipped classifier and face detector unless given; raises
        :class:`chromastream.models.detector.DetectorModelError` when a model file is missing or
        unreadable."""
        from chromastream.models.detector.classifier_runtime import DeepfakeClassifier
        from chromastream.models.detector.faces import FaceDetector

        self.classifier = classifier if classifier is not None else DeepfakeClassifier()
        self.faces = faces if faces is not None else FaceDetector()
        self.window = window
        self._detectors: dict[str, Any] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deepfake")

    @property
    def version(self) -> str:
        return str(self.classifier.info.version)

    def _detector(self, stream_id: str) -> Any:
        detector = self._detectors.get(stream_id)
        if detector is None:
            from chromastream.models.detector.detector import DeepfakeDetector

            detector = DeepfakeDetector(self.classifier, self.faces, window=self.window)
            self._detectors[stream_id] = detector
        return detector

    def _sample(self, frame: Frame) -> dict[str, Any]:
        # The grey conversion too is per pixel of the frame: in this thread, never on the event loop.
        grey = luma_to_grey(frame.y, frame.full_range)
        verdict = self._detector(frame.stream_id).sample(grey, frame.pts)
        return dict(verdict.to_json())

    async def detect(self, frame: Frame) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._sample, frame)

    def forget(self, stream_id: str) -> None:
        self._detectors.pop(stream_id, None)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def create_sampler(rate: float) -> DeepfakeSampler | None:
    """The sampler for ``serve``, or ``None`` (metadata then says the detector is off) when sampling is
    disabled or the detector cannot load here, with the reason logged."""
    if rate <= 0:
        logger.info("deepfake detector off (detector_rate is 0)")
        return None
    from chromastream.models.detector import DetectorError

    try:
        sampler = DeepfakeSampler()
    except (DetectorError, OSError, ImportError) as exc:
        logger.warning("deepfake detector off: %s", exc)
        return None
    logger.info("deepfake detector %s sampling %.3g frames/s per stream", sampler.version, rate)
    return sampler
