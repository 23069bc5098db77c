"""A colorizing session: one picture stream through one backend, with its own memory and hints.

The session adds to the network what a file or a sequence of pictures needs: the resizing between the
frame's resolution and the network's working size, and the stream's memory. Callers hand it Lab lightness
at full resolution and get low-resolution ab back, which they combine with the full-resolution luminance
(:mod:`chromastream.kernels.combine`), so the output keeps every detail of the input.

The memory (recurrent state, hint raster, temporal filter and when each starts afresh) is a
:class:`~chromastream.models.runtime.stream_memory.StreamMemory`, the same object each live stream of
:mod:`chromastream.stream.pipeline` keeps, so ``colorize`` and the benchmarks built on this session run the
live path's memory, frame for frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from chromastream.models.colorizer.hints import Hint
from chromastream.models.runtime.base import F32, Backend
from chromastream.models.runtime.stream_memory import StreamMemory
from chromastream.models.runtime.temporal_filter import SIGMA, STRENGTH

MIN_SIZE = 64
MAX_SIZE = 2048


def working_shape(height: int, width: int, size: int, multiple: int) -> tuple[int, int]:
    """The network's input shape for a ``height`` x ``width`` frame: short side ``size``, aspect kept,
    both sides rounded to ``multiple`` (the encoder's total stride). The long side is capped at
    ``MAX_SIZE``, so a panorama or a strip-shaped frame costs no more than a large square one."""
    scale = min(size / min(height, width), MAX_SIZE / max(height, width))

    def snap(v: float) -> int:
        return max(multiple, round(v / multiple) * multiple)

    return snap(height * scale), snap(width * scale)


class ColorizerSession:
    def __init__(
        self,
        backend: Backend,
        size: int = 256,
        memory: bool = True,
        smoothing: tuple[float, float] = (STRENGTH, SIGMA),
    ):
        """``smoothing`` is the temporal filter's (strength, sigma), part of the memory
        (:mod:`chromastream.models.runtime.temporal_filter`); strength 0 leaves the network's output as it
        is."""
        if not MIN_SIZE <= size <= MAX_SIZE:
            raise ValueError(f"working size must be in {MIN_SIZE}..{MAX_SIZE}, got {size}")
        self.backend = backend
        self.size = size
        self.memory = memory
        self._memory = StreamMemory(backend.info, memory, smoothing)

    @property
    def hints(self) -> list[Hint]:
        """The hints of the next frame."""
        return list(self._memory.hints)

    def reset(self) -> None:
        """Forget the past (scene cut, reconnect, a new file): the next frame starts fresh."""
        self._memory.reset()

    def set_hints(self, hints: Sequence[Hint]) -> None:
        """Use ``hints`` from the next frame on; a new set shows at once (the temporal filter restarts)."""
        self._memory.set_hints(hints)

    def predict_ab(self, l_plane: np.ndarray) -> F32:
        """Lab L ``[H, W]`` (0..100, any resolution) -> ab ``[2, h, w]`` in Lab units at working size."""
        info = self.backend.info
        wh, ww = self.shape_for(*l_plane.shape)
        small = cv2.resize(l_plane.astype(np.float32), (ww, wh), interpolation=cv2.INTER_AREA)
        return self.predict_ab_scaled(np.asarray(small / info.l_scale, dtype=np.float32)[None, None])

    def shape_for(self, height: int, width: int) -> tuple[int, int]:
        """The working shape of a ``height`` x ``width`` frame in this session."""
        return working_shape(height, width, self.size, self.backend.info.size_multiple)

    def predict_ab_scaled(self, L: F32) -> F32:
        """The network's own input ``L / l_scale`` ``[1, 1, h, w]`` at the working shape (made by
        :mod:`chromastream.kernels.frame_ops`, on the GPU where the model runs there) -> ab ``[2, h, w]`` in
        Lab units."""
        wh, ww = L.shape[2:]
        hints, state = self._memory.inputs((wh, ww))
        ab, state_out = self.backend.run(L, hints, state)
        return self._memory.update(L, ab, state_out)
