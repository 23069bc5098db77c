"""A colorizing session: one picture stream through one backend, with its own memory and hints.

The session owns what the network must not: the recurrent state of *this* stream, its hints, and the
resizing between the frame's resolution and the network's working size. Callers hand it Lab lightness at
full resolution and get low-resolution ab back, which they combine with the full-resolution luminance
(:mod:`chromastream.kernels.combine`), so the output keeps every detail of the input.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from chromastream.models.colorizer.hints import Hint, rasterize
from chromastream.models.runtime.base import F32, Backend
from chromastream.models.runtime.temporal_filter import SIGMA, STRENGTH, TemporalFilter

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
        self.hints: list[Hint] = []
        self._state: F32 | None = None
        self._hint_cache: tuple[tuple[Hint, ...], tuple[int, int], F32] | None = None
        # Part of the memory: the output's colour held still where the picture is (temporal_filter).
        self._filter = TemporalFilter(*smoothing) if memory else None

    def reset(self) -> None:
        """Forget the past (scene cut, reconnect, a new file): the next frame starts fresh."""
        self._state = None
        if self._filter is not None:
            self._filter.reset()

    def set_hints(self, hints: Sequence[Hint]) -> None:
        if self._filter is not None and list(hints) != self.hints:
            self._filter.reset()  # a new hint shows at once instead of fading in
        self.hints = list(hints)

    def _hint_input(self, shape: tuple[int, int]) -> F32:
        key = tuple(self.hints)
        if self._hint_cache is None or self._hint_cache[0] != key or self._hint_cache[1] != shape:
            self._hint_cache = (key, shape, rasterize(key, *shape)[None])
        return self._hint_cache[2]

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
        info = self.backend.info
        wh, ww = L.shape[2:]
        state_shape = info.state_shape(1, wh, ww)
        state = self._state
        if state is None or not self.memory or state.shape != state_shape:
            state = np.zeros(state_shape, dtype=np.float32)
        ab, state_out = self.backend.run(L, self._hint_input((wh, ww)), state)
        if self.memory:
            self._state = state_out
        result: F32 = ab[0] * info.ab_scale
        if self._filter is not None:
            result = self._filter.apply(L[0, 0] * np.float32(info.l_scale), result)
        return result
