"""A video file as a source: paced like a camera for live simulation, or as fast as it is consumed.

Pacing follows the file's own timestamps, not a nominal frame rate, so variable-frame-rate files keep
their rhythm. A looped file is reopened at its end; its pts continue from where the previous pass
stopped (offset by the clip's duration, see :class:`~chromastream.stream.sources._common.Timeline`), and a
``Reset("loop")`` tells the colorizer that the picture jumped back.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import av
import av.error

from chromastream.stream.av_glue import open_input, time_base
from chromastream.stream.errors import InputError
from chromastream.stream.frames import EndOfStream, Frame, Reset
from chromastream.stream.hw_decode import live_decoder, live_hwaccel
from chromastream.stream.queues import DropPolicy
from chromastream.stream.sources._common import (
    AudioTap,
    SourceError,
    Stopped,
    ThreadedSource,
    Timeline,
    av_reason,
    frame_luma,
)

logger = logging.getLogger("chromastream.stream.sources")

#: A paced file that falls further behind its clock than this (slow decode, a paused machine) restarts
#: its clock instead of bursting every late frame at once.
_MAX_LAG = 1.0
_MAX_LOGGED_SKIPS = 5


class FileSource(ThreadedSource):
    """Frames of a video file.

    ``decode`` is ``sources.decode`` (:func:`~chromastream.stream.hw_decode.live_hwaccel`).
    ``realtime=True`` paces frames by pts and makes the source live (a slow consumer gets the newest
    frame; the ones it missed are counted in :attr:`stats`); ``realtime=False`` delivers as fast as they
    are consumed and never drops. ``loop=True`` starts over at the end forever; otherwise the stream ends
    with :class:`~chromastream.stream.frames.EndOfStream`.
    """

    def __init__(
        self,
        stream_id: str,
        path: str | Path,
        loop: bool = False,
        realtime: bool = True,
        decode: str = "auto",
    ) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"input not found: {self.path}")
        if self.path.is_dir():
            raise InputError(f"{self.path} is a directory, not a video")
        self.loop = loop
        self.realtime = realtime
        self.live = realtime
        super().__init__(stream_id, DropPolicy.DROP_OLDEST if realtime else DropPolicy.WAIT, decode)
        self._index = 0

    def __repr__(self) -> str:
        return (
            f"FileSource({self.stream_id!r}, {str(self.path)!r}, loop={self.loop}, realtime={self.realtime})"
        )

    def _begin(self) -> None:
        self._start_worker("file", self._run)

    def _run(self) -> None:
        try:
            self._play()
        except Stopped:
            pass
        except InputError as exc:
            self._fail(exc)
        except (av.error.FFmpegError, OSError) as exc:  # the file's fault, not ours: no traceback
            self._fail(SourceError(f"cannot read video {self.path}: {av_reason(exc)}"))
        except Exception as exc:  # a bug: the traceback is what finds it
            logger.exception("%s: reading %s failed", self.stream_id, self.path)
            self._fail(SourceError(f"cannot read video {self.path}: {av_reason(exc)}"))

    def _fail(self, error: BaseException) -> None:
        with contextlib.suppress(Stopped):
            self._call(self._end_with(error))

    def _play(self) -> None:
        timeline: Timeline | None = None
        clock: tuple[float, Fraction] | None = None  # (monotonic time, pts in seconds) of the anchor frame
        while True:
            with open_input(self.path, live_hwaccel(self.decode)) as container:
                if not container.streams.video:
                    raise InputError(f"{self.path} has no video stream")
                video = container.streams.video[0]
                self.decoder = live_decoder(self.decode, video)
                if not (video.codec_context and video.codec_context.is_hwaccel):
                    video.thread_type = "AUTO"  # NVDEC decodes one frame at a time
                tb = time_base(video)
                rate = Fraction(video.average_rate or video.guessed_rate or 25)
                if timeline is None:
                    timeline = Timeline(tb, rate)
                else:
                    timeline.restart(tb, rate)
                produced = 0
                tap = (
                    AudioTap(self.stream_id, container.streams.audio[0]) if container.streams.audio else None
                )
                for frame in self._decoded(container, video, tap):
                    if isinstance(frame, av.Packet):
                        assert tap is not None
                        for chunk in tap.chunks(frame, timeline.offset_seconds):
                            self._call(self._handover.put(chunk))
                        continue
                    pts = timeline(frame.pts)
                    if self.realtime:
                        at = pts * timeline.time_base
                        now = time.monotonic()
                        if clock is None or now - (clock[0] + float(at - clock[1])) > _MAX_LAG:
                            clock = (now, at)
                        self._wait(clock[0] + float(at - clock[1]) - time.monotonic())
                    y, full_range = frame_luma(frame)
                    event = Frame(
                        stream_id=self.stream_id,
                        index=self._index,
                        pts=pts,
                        time_base=timeline.time_base,
                        y=y,
                        full_range=full_range,
                        ingest_time=time.monotonic(),
                    )
                    self._index += 1
                    self.stats.frames += 1
                    produced += 1
                    self._call(self._handover.put(event))
            if produced == 0:
                raise InputError(f"no video frame of {self.path} could be decoded (corrupt or truncated?)")
            if not self.loop:
                self._call(self._handover.put(EndOfStream(self.stream_id)))
                return
            self._call(self._handover.put(Reset(self.stream_id, "loop")))

    def _decoded(
        self, container: av.container.InputContainer, video: av.VideoStream, tap: AudioTap | None
    ) -> Iterator[av.VideoFrame | av.Packet[Any]]:
        """One pass over the file: decoded video frames, and the audio packets (for ``tap``) as they come;
        damaged video packets are skipped and counted, as on export."""
        streams = (video, tap.audio) if tap is not None else (video,)
        packets = cast(Iterator["av.Packet[Any]"], container.demux(*streams))
        count = 0
        while True:
            packet: av.Packet[Any] | None
            try:
                packet = next(packets)
            except StopIteration:
                packet = None
            except av.error.FFmpegError as exc:
                if count == 0:
                    raise InputError(f"cannot read video {self.path}: {av_reason(exc)}") from exc
                logger.warning("%s: stopped reading at a damaged part (%s)", self.path.name, av_reason(exc))
                packet = None
            if packet is not None and tap is not None and packet.stream.index == tap.audio.index:
                yield packet
                continue
            try:
                frames = video.decode(packet)
            except av.error.EOFError:
                frames = []
            except av.error.FFmpegError as exc:
                self.stats.skipped_packets += 1
                if self.stats.skipped_packets <= _MAX_LOGGED_SKIPS:
                    logger.warning("%s: skipping a corrupt video packet (%s)", self.path.name, av_reason(exc))
                frames = []
            for frame in frames:
                count += 1
                yield frame
            if packet is None:
                return
