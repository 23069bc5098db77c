"""The one base of every exception chromastream raises on purpose.

Each room defines the errors of its own failures beside the code that raises them (the stream's
:mod:`chromastream.stream.errors`, the runtimes' :class:`~chromastream.models.runtime.base.BackendError`,
the detector's :class:`~chromastream.models.detector.DetectorError`, the kernels'
:class:`~chromastream.kernels.triton_frames.KernelError`, ...), and all of them derive from
:class:`ChromastreamError`. So a caller that embeds the package, and the command line, can tell an expected
failure (a missing file, a backend this machine cannot run, a malformed hint) from a bug with one
``except ChromastreamError``.

This module is the lowest layer of the package: it imports nothing from it, so every room can import it.
"""

from __future__ import annotations


class ChromastreamError(Exception):
    """Base class: an expected failure whose message is fit to show as is (it says what failed and, where
    it can, what to do about it)."""
