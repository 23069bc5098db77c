"""One stream's colour memory: what carries from one frame to the next, kept in one place.

The network is stateless (:mod:`chromastream.models.runtime.base`); everything a stream remembers lives
here, in one object per stream, used alike by the file path (:class:`~chromastream.models.runtime.session.
ColorizerSession`, behind ``colorize`` and every quality benchmark) and the live pipeline
(:mod:`chromastream.stream.pipeline`, behind ``serve``). So what the benchmarks measure is the code the
live streams run. It holds:

- the recurrent state: the network's ``state_out`` of the previous frame, or zeros after :meth:`reset`,
  on a change of the working shape, and always when memory is off;
- the hints and their raster (the network's hint input): rasterized only when the hints or the working
  shape change, since a stream's hints usually stay put for thousands of frames;
- the temporal filter (:mod:`chromastream.models.runtime.temporal_filter`, part of memory mode): reset
  with the state, and by a new set of hints, so a new hint shows at once instead of fading in.

It never runs the network. A frame is two calls around whoever does: :meth:`StreamMemory.inputs` gives the
hint raster and the state for the frame's working shape, the caller runs the network (directly, or with
other streams' frames through the pipeline's batcher), and :meth:`StreamMemory.update` takes the output,
remembers the new state and returns the frame's ab in Lab units, filtered.

One stream, one caller at a time: the object has no lock. The pipeline calls it only from the stream's own
inference loop, one frame after the other (partly in its CPU executor, which is why rasterizing happens in
:meth:`~StreamMemory.inputs` and not on the event loop).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from chromastream.models.colorizer.hints import Hint, rasterize
from chromastream.models.runtime.base import F32, ModelInfo
from chromastream.models.runtime.temporal_filter import SIGMA, STRENGTH, TemporalFilter


class StreamMemory:
    """The recurrent state, hint raster and temporal filter of one stream (see the module docstring)."""

    def __init__(
        self,
        info: ModelInfo,
        memory: bool = True,
        smoothing: tuple[float, float] = (STRENGTH, SIGMA),
    ) -> None:
        """``info`` is the model's (state shape, units); ``memory`` off makes every frame start fresh and
        leaves the output unfiltered; ``smoothing`` is the temporal filter's (strength, sigma)."""
        self.info = info
        self.memory = memory
        self._hints: tuple[Hint, ...] = ()
        self._state: F32 | None = None
        self._shape: tuple[int, int] | None = None
        self._raster: tuple[tuple[Hint, ...], tuple[int, int], F32] | None = None
        self._filter = TemporalFilter(*smoothing) if memory else None

    @property
    def hints(self) -> tuple[Hint, ...]:
        """The hints of the next frame."""
        return self._hints

    def set_hints(self, hints: Sequence[Hint]) -> None:
        """Use ``hints`` from the next frame on. A set that differs from the current one resets the
        temporal filter (a new hint shows at once); the same set again changes nothing."""
        hints = tuple(hints)
        if hints != self._hints and self._filter is not None:
            self._filter.reset()
        self._hints = hints

    def reset(self) -> None:
        """Forget the past (scene cut, reconnect, a new file, a request): the next frame starts fresh.
        The hints stay."""
        self._state = None
        if self._filter is not None:
            self._filter.reset()

    def inputs(self, shape: tuple[int, int]) -> tuple[F32, F32]:
        """The network's hint input ``[1, 3, h, w]`` and recurrent state ``[1, C, h/s, w/s]`` for a frame
        of working shape ``shape`` = ``(h, w)``. The hint raster is the cached one unless the hints or the
        shape changed; a new shape also forgets the state and the filter's previous frame."""
        if shape != self._shape:
            self._shape = shape
            self._state = None
            if self._filter is not None:
                self._filter.reset()
        raster = self._raster
        if raster is None or raster[0] != self._hints or raster[1] != shape:
            image = np.asarray(rasterize(self._hints, *shape), dtype=np.float32)[None]
            raster = self._raster = (self._hints, shape, image)
        state_shape = self.info.state_shape(1, *shape)
        state = self._state
        if state is None or state.shape != state_shape:
            state = np.zeros(state_shape, dtype=np.float32)
        return raster[2], state

    def update(self, L: F32, ab: F32, state: F32) -> F32:
        """The network's answer for the frame of :meth:`inputs`: its input ``L / l_scale``
        ``[1, 1, h, w]``, its output ``ab`` ``[1, 2, h, w]`` (network units) and ``state_out``. Remembers
        the state (in memory mode) and returns the frame's ab ``[2, h, w]`` in Lab units, through the
        temporal filter in memory mode."""
        if self.memory:
            self._state = state
        result: F32 = ab[0] * self.info.ab_scale
        if self._filter is not None:
            result = self._filter.apply(L[0, 0] * np.float32(self.info.l_scale), result)
        return result
