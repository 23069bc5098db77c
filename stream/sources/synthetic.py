"""A moving test pattern made with numpy: a live input for tests and benchmarks that needs no file.

The picture has what a colorizer and an encoder react to: a diagonal gradient drifting sideways (global
motion), a box bouncing off the edges (local motion, sharp edges) and the frame number drawn in the
corner (so a viewer or a test can tell which frame it is looking at, and see drops).

Frames are rendered in a worker thread, never on the event loop: an 8192x8192 picture takes a large part
of a second to draw, and whoever may add a stream must not be able to freeze the server with one. The
thread hands each frame over like the decoding sources do (the one-frame handover of
:mod:`chromastream.stream.sources._common`), under back-pressure: it waits while the consumer has not
taken the previous frame, so it never renders more than the consumer takes. A consumer (or a renderer)
that falls behind builds no backlog: the next frame rendered is the *current* one on the clock, and the
ticks it missed count as drops, which is what a live camera behind a bounded queue looks like. The pts is
the tick number, so the gaps are visible downstream too.
"""

from __future__ import annotations

import contextlib
import logging
import time
from fractions import Fraction

import numpy as np

from chromastream.stream.frames import U8, Frame
from chromastream.stream.queues import DropPolicy
from chromastream.stream.sources._common import InvalidSourceError, SourceError, Stopped, ThreadedSource

logger = logging.getLogger("chromastream.stream.sources")

PATTERNS = ("moving", "still")
#: The gradient's levels repeat every this many columns (limited range: 16 + 0..219).
_RAMP_PERIOD = 220
#: Slowest frame rate: one frame in 1000 s.
MIN_FPS = 0.001

# 3x5 bitmaps of the digits 0-9, one string of 15 cells per digit, row by row.
_DIGITS = (
    "111101101101111",
    "010110010010111",
    "111001111100111",
    "111001111001111",
    "101101111001001",
    "111100111001111",
    "111100111101111",
    "111001001001001",
    "111101111101111",
    "111101111001111",
)
_GLYPHS = np.array([[c == "1" for c in d] for d in _DIGITS], dtype=bool).reshape(10, 5, 3)


class SyntheticSource(ThreadedSource):
    """A live, paced test pattern of ``width`` x ``height`` (cropped to even) at ``fps``.

    ``pattern``: ``moving`` (gradient, bouncing box and counter all move) or ``still`` (only the counter
    changes: a picture with no motion, for checks that need identical frames).
    """

    live = True

    def __init__(
        self, stream_id: str, width: int = 640, height: int = 480, fps: float = 25.0, pattern: str = "moving"
    ) -> None:
        if width < 2 or height < 2 or width > 8192 or height > 8192:
            raise InvalidSourceError(f"synthetic size {width}x{height} is out of range (2..8192)")
        if not MIN_FPS <= fps <= 1000:  # below MIN_FPS the rate, kept to denominators <= 1001, would be 0
            raise InvalidSourceError(f"synthetic frame rate {fps} is out of range ({MIN_FPS}..1000)")
        if pattern not in PATTERNS:
            raise InvalidSourceError(f"unknown synthetic pattern {pattern!r}; expected one of {PATTERNS}")
        super().__init__(stream_id, DropPolicy.WAIT)
        self.width, self.height = width & ~1, height & ~1
        self.rate = Fraction(fps).limit_denominator(1001)
        self.pattern = pattern
        # Row r of the gradient is the row of levels that starts at column (r // 2 + shift) % period: a
        # frame is one copy of rows of uint8, not int32 arithmetic over every pixel (8192x8192 would
        # take a second and three quarters of a gigabyte of temporaries).
        levels = (16 + np.arange(self.width + _RAMP_PERIOD) % _RAMP_PERIOD).astype(np.uint8)
        self._rows = np.lib.stride_tricks.sliding_window_view(levels, self.width)
        self._row_offsets = np.arange(self.height, dtype=np.intp) // 2
        self._box = max(4, min(self.width, self.height) // 6)
        self._scale = max(1, self.height // 60)

    def __repr__(self) -> str:
        return f"SyntheticSource({self.stream_id!r}, {self.width}x{self.height}@{float(self.rate):g}fps)"

    def _begin(self) -> None:
        self._start_worker("synthetic", self._run)

    def _run(self) -> None:
        try:
            self._play()
        except Stopped:
            pass
        except Exception as exc:  # a bug or no memory for the picture: end the stream with the reason
            logger.exception("%s: rendering the test pattern failed", self.stream_id)
            with contextlib.suppress(Stopped):
                self._call(self._end_with(SourceError(f"the test pattern failed: {type(exc).__name__}")))

    def _play(self) -> None:
        """In the worker thread: render at the clock's current tick, hand over, wait for the next tick."""
        period = 1 / self.rate
        start = time.monotonic()
        tick = 0
        index = 0
        while True:
            delay = start + float(tick * period) - time.monotonic()
            if delay > 0:
                self._wait(delay)
            else:
                behind = int(-delay / float(period))
                if behind > 0:  # the consumer or the rendering was late: skip to the current tick
                    tick += behind
                    self.stats.dropped += behind
                    self.stats.frames += behind
            y = self.render(tick)
            frame = Frame(
                stream_id=self.stream_id,
                index=index,
                pts=tick,
                time_base=period,
                y=y,
                full_range=False,
                ingest_time=time.monotonic(),
            )
            self.stats.frames += 1
            # Waits while the previous frame is still in the handover: the back-pressure.
            self._call(self._handover.put(frame))
            index += 1
            tick += 1

    def render(self, tick: int) -> U8:
        """The limited-range luma of frame ``tick`` (a pure function of ``tick``: reproducible)."""
        moving = self.pattern == "moving"
        shift = 4 * tick if moving else 0
        y: U8 = self._rows[(self._row_offsets + shift % _RAMP_PERIOD) % _RAMP_PERIOD]
        size = self._box
        travel_x, travel_y = max(1, self.width - size), max(1, self.height - size)
        t = 3 * tick if moving else 0
        x0 = _bounce(t, travel_x)
        y0 = _bounce(2 * t // 3, travel_y)
        y[y0 : y0 + size, x0 : x0 + size] = 235
        y[y0 + size // 4 : y0 + 3 * size // 4, x0 + size // 4 : x0 + 3 * size // 4] = 16
        self._draw_number(y, tick)
        return y

    def _draw_number(self, y: U8, number: int) -> None:
        s = self._scale
        digits = [int(d) for d in str(number)]
        width = (4 * len(digits) + 1) * s
        if width > self.width or 7 * s > self.height:
            return
        y[: 7 * s, :width] = 16
        for i, digit in enumerate(digits):
            glyph = np.kron(_GLYPHS[digit], np.ones((s, s), dtype=bool))
            top, left = s, (1 + 4 * i) * s
            region = y[top : top + 5 * s, left : left + 3 * s]
            region[glyph] = 235


def _bounce(t: int, span: int) -> int:
    """Position at time ``t`` of a point moving one pixel per step back and forth over ``[0, span]``."""
    phase = t % (2 * span)
    return phase if phase <= span else 2 * span - phase
