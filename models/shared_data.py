"""Where the shared data and third-party weights live (``shared/`` beside the repository).

Kept free of heavy imports: the runtime (face detection for the live deepfake sampler) needs the path
on installs that have no torch.
"""

from __future__ import annotations

import os
from pathlib import Path


def shared_root() -> Path:
    """``CHROMASTREAM_SHARED``, else ``../shared`` beside the repository."""
    env = os.environ.get("CHROMASTREAM_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared"
