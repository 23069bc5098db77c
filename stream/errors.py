"""The stream room's errors about what a user asked for: inputs, outputs and arguments.

Library code raises these and never exits; only :mod:`chromastream.stream.cli` turns them (and every other
:class:`~chromastream.errors.ChromastreamError`) into a message and an exit status. Each message is written
for the person at the terminal: it names the file and says what to do.
"""

from __future__ import annotations

from chromastream.errors import ChromastreamError


class InputError(ChromastreamError):
    """The input cannot be used: missing, unreadable, corrupt, unsupported or too large."""


class OutputError(ChromastreamError):
    """The output cannot be written: exists already, unwritable place, or a container that cannot hold it."""


class UsageError(ChromastreamError):
    """The combination of arguments makes no sense (e.g. an image in, a video out)."""
