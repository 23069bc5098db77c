"""What travels through the live pipeline: frames, resets, the end of a stream, and the source's audio.

Frames carry planes, not ``av.VideoFrame`` objects: the colorizer needs only luma in and gives chroma
out, the planes are plain numpy arrays any stage can read without PyAV, and the encoder side builds its
``av.VideoFrame`` once per output frame. ``pts``/``time_base`` are the source's, so metadata keyed by pts
lines up with the video a client decodes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded input frame: its luma plane (H, W even) and timing."""

    stream_id: str
    index: int  # running number of the frame within this stream since it was added
    pts: int | None
    time_base: Fraction
    y: U8
    full_range: bool
    ingest_time: float  # time.monotonic() when the source produced it: the start of end-to-end latency


@dataclass(frozen=True, slots=True)
class Reset:
    """The stream's past no longer predicts its future: forget the recurrent state.

    ``reason`` is one of ``reconnect`` (a live source came back), ``loop`` (a looped file started over),
    ``scene_cut`` (detected in the pipeline) or ``request`` (asked through the API).
    """

    stream_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """No more frames will come from this source (a file ended, or the stream was removed)."""

    stream_id: str


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Decoded audio of a source, on the same timeline as its frames, for recorders.

    Audio never goes near the colorizer: the pipeline hands it straight to the stream's recorders, which
    place it by ``time`` beside the frames they write (the frames' ``pts * time_base`` is the same clock).
    """

    stream_id: str
    samples: F32
    """``[channels, n]`` float32, planar, in [-1, 1]."""
    rate: int
    layout: str
    """``mono`` or ``stereo``."""
    time: Fraction
    """Seconds on the stream's timeline at the first sample."""

    @property
    def duration(self) -> Fraction:
        return Fraction(int(self.samples.shape[1]), self.rate)


SourceEvent = Frame | Reset | EndOfStream | AudioChunk


@dataclass(frozen=True, slots=True)
class OutputFrame:
    """A colorized frame: 4:2:0 planes (``y`` is the input's own luma) and its per-frame metadata."""

    stream_id: str
    index: int
    pts: int | None
    time_base: Fraction
    y: U8
    u: U8
    v: U8
    full_range: bool
    ingest_time: float
    metadata: dict[str, Any] = field(default_factory=dict)


class Source(Protocol):
    """One input (camera, file, WebRTC publisher, test pattern) as an async stream of events.

    ``events()`` yields frames, a :class:`Reset` whenever continuity breaks (reconnect, loop) and finally
    :class:`EndOfStream` for inputs that end. A live source reconnects by itself and never ends on a
    connection error; anything else that stops it is raised from ``events()``. ``close()`` stops it from
    any task and releases its resources.
    """

    stream_id: str
    live: bool  # live sources drop the oldest frame when the pipeline falls behind; files wait

    def events(self) -> AsyncIterator[SourceEvent]: ...

    async def close(self) -> None: ...
