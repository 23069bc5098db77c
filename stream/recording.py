"""A recording's clock, the names of its segments and how long they are kept.

The recorder itself (:class:`~chromastream.stream.sinks.FileRecorder`) encodes and writes; this module holds
the decisions that make a recording trustworthy, free of any I/O but the folder listing, so each can be
checked on its own.

**The clock.** A frame's place on the recording's timeline is decided by :class:`RecordingClock`. For a
live (paced) source the truth about *when* a frame happened is the wall clock at which the source handed
it over (``Frame.ingest_time``): it is the only clock that keeps a camera outage as a gap of its real
length, that never jumps back when a camera restarts its RTP clock, and that matches the operator's watch.
It is also jittery (network bursts, decoder hiccups). A camera's own timestamps are smooth but cannot be
trusted on their own: a reconnect starts a new RTP clock, some cameras repeat a timestamp, and a camera's
clock runs a little fast or slow. So each frame is placed one *source* step after the previous one, as long
as that step is plausible for the stream's frame rate, and the result is pulled gently toward the wall
clock; when the two disagree by more than :data:`WALL_TOLERANCE_S` (a reconnect, a stall, a camera clock
gone wrong) the wall clock wins outright. No step is ever shorter than half a frame interval, so frames
are never squeezed together, and the recording's length stays within the tolerance of the time it spans.
A source that is not paced (a file read as fast as the pipeline takes it) has no meaningful wall clock:
its own timestamps are the timeline, kept increasing across a loop.

**The names.** A segment is ``<folder>/<name>-<UTC start>.<ext>`` (``gate-20250107T021530.123Z.mp4``),
its metadata ``.jsonl`` beside it; a name that exists already gets ``-1``, ``-2``... and is created
exclusively, so a run never writes over another run's segment.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

logger = logging.getLogger(__name__)

#: The recording's clock runs at 90 kHz (the unit of RTP video timestamps; MP4 keeps it as is).
TICKS = 90_000
TIME_BASE = Fraction(1, TICKS)
#: How far a paced source's own timing may drift from the wall clock before the wall clock wins outright.
WALL_TOLERANCE_S = 0.25
#: Share of the remaining difference to the wall clock corrected at each frame: slow enough to smooth
#: arrival jitter away, fast enough to follow a camera clock that runs a few percent off.
WALL_PULL = 1 / 32
#: The frame interval assumed until the stream shows its own (25 fps).
DEFAULT_INTERVAL = TICKS / 25
#: Shortest frame interval believed (240 fps), so a burst of arrivals never shrinks the floor to nothing.
MIN_INTERVAL = TICKS / 240
#: Weight of each new arrival interval in the running estimate of the stream's frame interval.
INTERVAL_WEIGHT = 1 / 16

_TOLERANCE = round(WALL_TOLERANCE_S * TICKS)


class RecordingClock:
    """Places each recorded frame on the recording's timeline, in :data:`TICKS` since the first frame.

    ``paced``: the source delivers frames in real time (a camera, a paced file), so the wall clock is the
    reference (see the module's docstring); otherwise the source's timestamps are.
    """

    def __init__(self, paced: bool) -> None:
        self.paced = paced
        self.interval = DEFAULT_INTERVAL
        """The stream's frame interval in ticks, as estimated so far."""
        self.last: int | None = None
        """Where the last frame went."""
        self.rebased = 0
        """Frames placed by the wall clock alone because the source's timing disagreed with it."""
        self.offset: int | None = None
        """Recording ticks minus source ticks at the last frame with a pts: where the source's sound goes."""
        self._last_source: int | None = None
        self._last_wall = 0.0
        self._wall0 = 0.0

    def place(self, source: Fraction | None, wall: float, steps: int = 1) -> int:
        """The position of a frame with source time ``source`` (seconds; ``None`` if unknown) that the
        source handed over at ``wall`` (``time.monotonic()``), ``steps`` frame numbers after the last one
        (more than one when frames in between were lost)."""
        steps = max(1, steps)
        src = None if source is None else round(source * TICKS)
        if self.last is None:
            out = 0
            self._wall0 = wall
        else:
            step = None if src is None or self._last_source is None else src - self._last_source
            out = self._paced(step, wall, steps) if self.paced else self._unpaced(step, steps)
        self.last, self._last_source, self._last_wall = out, src, wall
        if src is not None:
            self.offset = out - src
        return out

    def _paced(self, step: int | None, wall: float, steps: int) -> int:
        assert self.last is not None
        last = self.last
        wall_step = (wall - self._last_wall) * TICKS
        expected = steps * self.interval
        plausible = (
            step is not None
            and step >= expected / 2
            and (step <= 2 * expected or abs(step - wall_step) <= _TOLERANCE)
        )
        predicted = last + (step if plausible and step is not None else round(expected))
        now = round((wall - self._wall0) * TICKS)
        if abs(now - predicted) > _TOLERANCE:
            out = now
            self.rebased += 1
        else:
            out = predicted + round((now - predicted) * WALL_PULL)
        floor = last + max(1, math.ceil(expected / 2))
        sample = min(max(wall_step, 0.0) / steps, 4 * self.interval)
        self.interval = max(MIN_INTERVAL, self.interval + (sample - self.interval) * INTERVAL_WEIGHT)
        return max(out, floor)

    def _unpaced(self, step: int | None, steps: int) -> int:
        assert self.last is not None
        if step is not None and step > 0:
            self.interval = step / steps
            return self.last + step
        # A timeline that jumped back (a looped file) or a missing pts: one frame interval later.
        self.rebased += 1
        return self.last + max(1, round(self.interval * steps))


# --- segment names ---------------------------------------------------------------------------------

_STAMP = "%Y%m%dT%H%M%S"


@dataclass(frozen=True)
class SegmentNames:
    """The names of one recording's segments: ``<folder>/<name>-<UTC start>[-n]<suffix>``."""

    folder: Path
    name: str
    suffix: str

    @classmethod
    def for_path(cls, path: Path, stream_id: str, default_suffix: str = ".mp4") -> SegmentNames:
        """``/rec/gate.mp4`` -> ``/rec/gate-<UTC>.mp4``; an existing folder ``/rec`` ->
        ``/rec/<stream id>-<UTC>.mp4``."""
        if path.is_dir():
            return cls(path, stream_id or "recording", default_suffix)
        return cls(path.parent, path.stem, path.suffix.lower() or default_suffix)

    @property
    def _pattern(self) -> re.Pattern[str]:
        stamp = r"(\d{8}T\d{6}\.\d{3})Z(?:-\d+)?"
        return re.compile(f"{re.escape(self.name)}-{stamp}{re.escape(self.suffix)}", re.IGNORECASE)

    def stamp(self, start: datetime) -> str:
        start = start.astimezone(UTC)
        return f"{start:{_STAMP}}.{start.microsecond // 1000:03d}Z"

    def claim(self, start: datetime) -> Path:
        """Create (empty, exclusively) and return the file of a segment starting at ``start``, under a name
        whose video and metadata files are both free; raises ``OSError`` if the folder cannot be written."""
        self.folder.mkdir(parents=True, exist_ok=True)
        base = f"{self.name}-{self.stamp(start)}"
        for n in range(1000):
            path = self.folder / f"{base}{f'-{n}' if n else ''}{self.suffix}"
            if path.with_suffix(".jsonl").exists():  # its metadata's name is taken: so is the name
                continue
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            os.close(fd)
            return path
        raise FileExistsError(f"no free segment name for {base} in {self.folder}")

    def existing(self) -> list[tuple[datetime, Path]]:
        """This recording's segments in the folder (of any run), oldest first."""
        try:
            entries = list(self.folder.iterdir())
        except OSError:
            return []
        found: list[tuple[datetime, Path]] = []
        pattern = self._pattern
        for entry in entries:
            match = pattern.fullmatch(entry.name)
            if match is None:
                continue
            start = datetime.strptime(match.group(1), f"{_STAMP}.%f").replace(tzinfo=UTC)
            found.append((start, entry))
        found.sort()
        return found

    def prune(
        self, now: datetime, max_age_hours: float | None, max_count: int | None, keep: Path | None = None
    ) -> list[Path]:
        """Delete the segments (and their metadata) older than ``max_age_hours`` or beyond the newest
        ``max_count``; ``keep`` (the segment being written) is never deleted. Returns what was deleted."""
        if max_age_hours is None and max_count is None:
            return []
        segments = self.existing()
        doomed: list[Path] = []
        if max_age_hours is not None:
            limit = now - timedelta(hours=max_age_hours)
            doomed += [path for start, path in segments if start < limit]
        if max_count is not None and len(segments) > max_count:
            doomed += [path for _, path in segments[: len(segments) - max_count]]
        deleted: list[Path] = []
        for path in dict.fromkeys(doomed):
            if keep is not None and path == keep:
                continue
            for victim in (path, path.with_suffix(".jsonl")):
                try:
                    victim.unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    logger.warning("recording: cannot delete %s: %s", victim, exc.strerror or exc)
                    continue
            deleted.append(path)
        return deleted
