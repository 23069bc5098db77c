"""Deepfake detection: faces (YuNet), a self-blended-image classifier, calibration and export.

Library code here raises the exceptions below and never exits; only command-line entry points turn
them into a message and an exit status.
"""

from __future__ import annotations

from chromastream.errors import ChromastreamError


class DetectorError(ChromastreamError):
    """Base class: an expected failure of the detector whose message is fit to show as is."""


class DetectorModelError(DetectorError):
    """A model file (YuNet or the classifier ONNX) is missing, unreadable or lacks its metadata."""


class DetectorInputError(DetectorError, ValueError):
    """An image or crop has the wrong shape or dtype for the detector."""
