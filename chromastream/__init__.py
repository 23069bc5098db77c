"""chromastream: real-time colorization of grayscale video streams.

The distribution installs this one top-level package. Its rooms are the repository's top-level folders,
linked in here: :mod:`chromastream.stream` (the live pipeline, serving, the command line),
:mod:`chromastream.models` (networks, training, runtimes) and :mod:`chromastream.kernels` (colour-space
and frame maths). ``docs/ARCHITECTURE.md`` describes how they fit together.
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("chromastream")
except metadata.PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
