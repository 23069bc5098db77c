"""The exceptions of the ``stream`` package.

Library code raises these and never exits; only :mod:`chromastream.stream.cli` turns them into a message and
an exit status. Each message is written for the person at the terminal: it names the file and says what to do.
"""

from __future__ import annotations


class ChromastreamError(Exception):
    """Base class: an expected failure whose message is fit to show as is."""


class InputError(ChromastreamError):
    """The input cannot be used: missing, unreadable, corrupt, unsupported or too large."""


class OutputError(ChromastreamError):
    """The output cannot be written: exists already, unwritable place, or a container that cannot hold it."""


class UsageError(ChromastreamError):
    """The combination of arguments makes no sense (e.g. an image in, a video out)."""
