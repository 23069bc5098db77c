"""Video files in and out with PyAV: decode, recolour the chroma of each frame, encode H.264, copy audio.

Frames stream through one at a time (decode -> callback -> encode), so memory does not grow with the
length of the video. Only luma is taken from the input: each decoded frame is brought to 4:2:0
(``yuv420p``, reformatting other pixel formats with swscale), its Y plane goes to the caller, which returns
the U and V planes, and the output frame is built from the *same* Y plane and the new chroma. The
output's luminance is therefore the input's, bit for bit.

Timestamps are copied (same ``pts`` and ``time_base``), so variable-frame-rate sources and gaps keep their
timing. Audio is remuxed packet by packet without decoding: it stays byte-identical and in sync. Colour
tags, encoder settings and the plane handling are those of live recordings too
(:mod:`chromastream.stream.av_glue`).

A damaged input is an error unless the caller allows a partial result: a packet that cannot be decoded,
a container that breaks off, or pictures that end well before the length the file declares (a truncated
download or recording) raise :class:`DamagedVideo`, which says what was decoded of what was declared.
With ``allow_partial`` the damaged parts are left out, the rest is written, and a warning says the same.
"""

from __future__ import annotations

import io
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from chromastream.stream.av_glue import (
    AVCOL_RANGE_JPEG,
    ENCODER,
    ENCODER_OPTIONS,
    av_message,
    colour_range,
    is_full_range,
    luma_plane_view,
    open_input,
    tag_colour,
    time_base,
    yuv420_frame,
)
from chromastream.stream.errors import InputError, OutputError
from chromastream.stream.formats import CONTAINERS, VIDEO_EXTENSIONS

logger = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint8]

#: Colorizes one frame: (Y plane ``[H, W]`` with H, W even, full_range) -> (U, V) ``[H/2, W/2]``.
ChromaFn = Callable[[U8, bool], tuple[U8, U8]]


#: A chroma sample further than this from neutral (128) counts as coloured.
_CHROMA_TOLERANCE = 6
#: Share of coloured chroma samples above which the input is called a colour video.
_COLOUR_SHARE = 0.005
_MAX_LOGGED_SKIPS = 5


@dataclass(frozen=True)
class VideoStats:
    """What a transcode did; ``skipped`` counts video packets that could not be decoded."""

    frames: int
    skipped: int
    seconds: float
    width: int
    height: int
    audio_streams: int
    colour_input: bool

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def is_video_path(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


class DamagedVideo(InputError):
    """Part of the input cannot be decoded, or it ends before the length its container declares."""


@dataclass(frozen=True)
class Declared:
    """What the input's container says about its video: frame count and length, where it says."""

    frames: int | None
    seconds: float | None


def _clock_seconds(text: str) -> float | None:
    """``HH:MM:SS.fraction`` (how Matroska tags carry each track's length) in seconds."""
    try:
        hours, minutes, seconds = text.strip().split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


def declared(video: av.VideoStream) -> Declared:
    """The video stream's declared frame count and length (MP4/MOV/AVI headers, Matroska track tags)."""
    seconds: float | None = None
    if video.duration and video.time_base:
        seconds = float(video.duration * video.time_base)
    elif "DURATION" in video.metadata:
        seconds = _clock_seconds(video.metadata["DURATION"])
    return Declared(int(video.frames) or None, seconds)


def _looks_coloured(u: U8, v: U8) -> bool:
    off = np.maximum(np.abs(u.astype(np.int16) - 128), np.abs(v.astype(np.int16) - 128))
    return bool(np.mean(off > _CHROMA_TOLERANCE) > _COLOUR_SHARE)


def _frame_total(stream: av.VideoStream, container: av.container.InputContainer) -> int | None:
    if stream.frames:
        return int(stream.frames)
    rate = stream.average_rate or stream.guessed_rate
    if rate and stream.duration and stream.time_base:
        return max(1, round(float(stream.duration * stream.time_base * rate)))
    if rate and container.duration:
        return max(1, round(container.duration / av.time_base * float(rate)))
    return None


def _containers_holding(stream: av.AudioStream) -> list[str]:
    """Output extensions whose container can store ``stream``'s codec as is (asked of FFmpeg itself)."""
    fits = []
    for suffix in (".mkv", ".mov", ".avi", ".mp4"):
        with av.open(io.BytesIO(), mode="w", format=CONTAINERS[suffix]) as probe:
            try:
                probe.add_stream_from_template(stream)
            except ValueError:
                continue
        fits.append(suffix)
    return fits


def _audio_advice(audio: list[av.AudioStream], container_format: str) -> str:
    codecs = ", ".join(sorted({a.codec_context.name for a in audio}))
    common = set(VIDEO_EXTENSIONS)
    for stream in audio:
        common &= set(_containers_holding(stream))
    ordered = [
        s for s in (".mkv", ".mov", ".avi", ".mp4") if s in common and CONTAINERS[s] != container_format
    ]
    where = f"use an {ordered[0]} output" if ordered else "no supported container can hold it"
    return (
        f"the {container_format} container cannot hold the input's {codecs} audio "
        f"without re-encoding it; {where}"
    )


class _Encoder:
    """The output side: container, H.264 stream and copied audio streams; errors become OutputError.

    ``name`` is the path shown in messages (the final output, not the temporary being written).
    """

    def __init__(
        self,
        path: Path,
        name: Path,
        container_format: str,
        video: av.VideoStream,
        audio: list[av.AudioStream],
        size: tuple[int, int],
        full_range: bool,
    ) -> None:
        self.name = name
        self.format = container_format
        self.sources = audio
        try:
            self.container = av.open(str(path), mode="w", format=container_format)
        except (av.error.FFmpegError, OSError) as exc:
            raise OutputError(f"cannot create {name}: {av_message(exc)}") from exc
        try:
            self._setup(video, audio, size, full_range)
        except BaseException:
            self.abort()
            raise

    def _setup(
        self,
        video: av.VideoStream,
        audio: list[av.AudioStream],
        size: tuple[int, int],
        full_range: bool,
    ) -> None:
        rate = video.average_rate or video.guessed_rate or Fraction(25)
        if self.format in ("mp4", "mov"):
            # Index at the front so the file starts playing before it is fully downloaded.
            self.container.options["movflags"] = "+faststart"
        try:
            stream = self.container.add_stream(ENCODER, rate=rate, options=dict(ENCODER_OPTIONS))
        except ValueError as exc:
            raise OutputError(
                f"the {self.format} container cannot hold H.264 video; use .mp4 or .mkv"
            ) from exc
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.time_base = time_base(video)
        cc = stream.codec_context
        cc.time_base = time_base(video)
        cc.framerate = rate
        tag_colour(cc, full_range)
        if video.sample_aspect_ratio:
            stream.sample_aspect_ratio = video.sample_aspect_ratio
        self.video = stream
        self.audio: dict[int, av.AudioStream] = {}
        for source in audio:
            try:
                self.audio[source.index] = self.container.add_stream_from_template(source)
            except ValueError as exc:
                raise OutputError(_audio_advice(audio, self.format)) from exc
        try:
            # Write the header now: a muxer that cannot store a copied codec may only say so here, and
            # the user should hear it before any decoding work, not at the end.
            self.container.start_encoding()
        except (av.error.FFmpegError, ValueError) as exc:
            if audio:
                raise OutputError(f"{_audio_advice(audio, self.format)} ({av_message(exc)})") from exc
            raise OutputError(f"cannot start {self.name}: {av_message(exc)}") from exc

    def mux(self, packet: av.Packet[Any]) -> None:
        try:
            self.container.mux(packet)
        except (av.error.FFmpegError, OSError) as exc:
            raise OutputError(f"cannot write {self.name}: {av_message(exc)}{self._hint()}") from exc

    def encode(self, frame: av.VideoFrame | None) -> None:
        try:
            packets = self.video.encode(frame)
        except av.error.FFmpegError as exc:
            raise OutputError(f"H.264 encoding failed: {av_message(exc)}") from exc
        for packet in packets:
            self.mux(packet)

    def _hint(self) -> str:
        if not self.sources:
            return ""
        codecs = ", ".join(sorted({a.codec_context.name for a in self.sources}))
        return f" (if the {codecs} audio is the cause, an .mkv output can usually hold it)"

    def close(self) -> None:
        try:
            self.container.close()
        except (av.error.FFmpegError, OSError) as exc:
            raise OutputError(f"cannot finish {self.name}: {av_message(exc)}{self._hint()}") from exc

    def abort(self) -> None:
        """Close after a failure: the file is discarded, and the first error is the one to report."""
        try:
            self.container.close()
        except (av.error.FFmpegError, OSError) as exc:
            logger.debug("closing %s after a failure: %s", self.name, exc)


class _Timestamps:
    """Copies input pts; repairs only what the encoder would refuse (missing or non-increasing pts)."""

    def __init__(self, video: av.VideoStream) -> None:
        rate = video.average_rate or video.guessed_rate or Fraction(25)
        step = 1 / (rate * time_base(video))
        self.step = max(1, round(float(step)))
        self.last: int | None = None
        self.repaired = 0

    def __call__(self, frame: av.VideoFrame) -> int:
        pts = frame.pts if frame.pts is not None else frame.dts
        if pts is None:
            pts = 0 if self.last is None else self.last + self.step
            self.repaired += 1
        elif self.last is not None and pts <= self.last:
            pts = self.last + 1
            self.repaired += 1
        self.last = pts
        return pts


def transcode(
    source: Path,
    destination: Path,
    colorize: ChromaFn,
    *,
    container_format: str,
    progress: bool | None = None,
    name: Path | None = None,
    allow_partial: bool = False,
) -> VideoStats:
    """Colorize ``source`` into ``destination`` (written in place: the caller picks a temporary name).

    ``progress``: ``True``/``False`` forces the progress bar on/off; ``None`` shows it on a terminal.
    ``name``: the path to mention in messages (the final output), if ``destination`` is a temporary.
    ``allow_partial``: write what can be decoded of a damaged input (with a warning) instead of raising
    :class:`DamagedVideo` at the first damage, or at the end when the pictures stop early.
    """
    started = time.perf_counter()
    with open_input(source) as container:
        if not container.streams.video:
            raise InputError(f"{source} has no video stream")
        video = container.streams.video[0]
        audio = list(container.streams.audio)
        dropped = len(container.streams) - 1 - len(audio)
        if dropped:
            logger.info("%d subtitle/data stream(s) of %s are not carried over", dropped, source.name)
        width, height = video.codec_context.width, video.codec_context.height
        if width < 2 or height < 2:
            raise InputError(f"{source}: cannot determine the video frame size (corrupt header?)")
        out_size = (width - width % 2, height - height % 2)
        if out_size != (width, height):
            logger.info(
                "%s is %dx%d; 4:2:0 H.264 needs even sizes, so the output is cropped to %dx%d",
                source.name,
                width,
                height,
                *out_size,
            )
        src_fmt = video.codec_context.pix_fmt or ""
        full_range = src_fmt.startswith("yuvj") or video.codec_context.color_range == AVCOL_RANGE_JPEG
        video.thread_type = "AUTO"
        encoder = _Encoder(
            destination, name or destination, container_format, video, audio, out_size, full_range
        )
        state = _Loop(encoder, video, colorize, out_size, full_range, source, allow_partial)
        try:
            total = _frame_total(video, container)
            with tqdm(
                total=total,
                unit="frame",
                desc=source.name,
                disable=None if progress is None else not progress,
                file=sys.stderr,
                leave=True,
            ) as bar:
                state.bar = bar
                _demux(container, video, audio, encoder, state, source)
                state.flush()
            if state.frames == 0:
                raise InputError(f"no video frame of {source} could be decoded (corrupt or truncated?)")
            short = state.ends_early()
            if short and not allow_partial:
                raise DamagedVideo(
                    f"{source.name} ends early: {short}; the rest is missing or damaged. "
                    "Pass --allow-partial to keep the frames that could be read"
                )
            encoder.encode(None)
        except BaseException:
            encoder.abort()
            raise
        encoder.close()
    if short:
        logger.warning(
            "%s ends early: %s; the rest is missing or damaged, so the output is partial", source.name, short
        )
    if state.skipped:
        logger.warning("skipped %d corrupt video packet(s) of %s", state.skipped, source.name)
    if state.timestamps.repaired:
        logger.warning("repaired %d missing or out-of-order timestamps", state.timestamps.repaired)
    return VideoStats(
        frames=state.frames,
        skipped=state.skipped,
        seconds=time.perf_counter() - started,
        width=out_size[0],
        height=out_size[1],
        audio_streams=len(audio),
        colour_input=state.colour_input,
    )


def _demux(
    container: av.container.InputContainer,
    video: av.VideoStream,
    audio: list[av.AudioStream],
    encoder: _Encoder,
    state: _Loop,
    source: Path,
) -> None:
    packets = container.demux(video, *audio)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError as exc:
            # A broken container structure ends the readable part of the file.
            if state.frames == 0:
                raise InputError(f"cannot read video {source}: {av_message(exc)}") from exc
            if not state.allow_partial:
                raise DamagedVideo(
                    f"{source.name} is damaged after {state.decoded_text()}: {av_message(exc)}. "
                    "Pass --allow-partial to keep the frames before the damage"
                ) from exc
            logger.warning("%s: stopped reading at a damaged part (%s)", source.name, av_message(exc))
            return
        if packet.stream.type == "audio":
            if packet.dts is None or packet.size == 0:
                continue  # the demuxer's end-of-stream marker, not data
            packet.stream = encoder.audio[packet.stream.index]
            encoder.mux(packet)
        else:
            state.decode(packet)


class _Loop:
    """Per-frame state of a transcode: decode, normalize, colorize, encode, count."""

    def __init__(
        self,
        encoder: _Encoder,
        video: av.VideoStream,
        colorize: ChromaFn,
        size: tuple[int, int],
        full_range: bool,
        source: Path,
        allow_partial: bool = False,
    ) -> None:
        self.encoder = encoder
        self.video = video
        self.colorize = colorize
        self.size = size
        self.full_range = full_range
        self.source = source
        self.allow_partial = allow_partial
        self.declared = declared(video)
        self.timestamps = _Timestamps(video)
        self.time_base = time_base(video)
        self.frames = 0
        self.skipped = 0
        self.colour_input = False
        self.bar: Any = None
        rate = video.average_rate or video.guessed_rate
        self.interval = float(1 / rate) if rate else 0.0
        self.start: int | None = video.start_time
        self.covered = 0.0
        """Seconds from the stream's start to the end of the last decoded picture."""

    def decoded_text(self) -> str:
        """What was decoded, against what the container declares: "38 of 100 frames (1.5 s of 4.0 s)"."""
        of_frames = f" of {self.declared.frames}" if self.declared.frames else ""
        of_seconds = f" of {self.declared.seconds:.1f} s" if self.declared.seconds else ""
        return f"{self.frames}{of_frames} frames ({self.covered:.1f} s{of_seconds})"

    def ends_early(self) -> str | None:
        """``decoded ...`` when the pictures stop clearly before the declared length, else None.

        The length, not the frame count, decides: a count can include samples an edit list hides, while
        the declared length and the decoded timestamps agree for any intact file, variable frame rate
        included. Two frame intervals (at least a quarter second) of slack absorb rounding."""
        if self.declared.seconds is None:
            return None
        slack = max(2 * self.interval, 0.25)
        if self.covered >= self.declared.seconds - slack:
            return None
        return "decoded " + self.decoded_text()

    def decode(self, packet: av.Packet[Any] | None) -> None:
        try:
            frames = self.video.decode(packet)
        except av.error.EOFError:
            return  # the decoder was already drained by the demuxer's end-of-stream packet
        except av.error.FFmpegError as exc:
            at = ""
            if packet is not None and packet.pts is not None:
                at = f" at {float(packet.pts * packet.time_base):.3f}s"
            if not self.allow_partial:
                raise DamagedVideo(
                    f"{self.source.name} is damaged: a video packet{at} cannot be decoded "
                    f"({av_message(exc)}), after {self.decoded_text()}. "
                    "Pass --allow-partial to colorize what can be read and leave the damaged parts out"
                ) from exc
            self.skipped += 1
            if self.skipped <= _MAX_LOGGED_SKIPS:
                logger.warning(
                    "%s: skipping a corrupt video packet%s (%s)", self.source.name, at, av_message(exc)
                )
            return
        for frame in frames:
            self._process(frame)

    def flush(self) -> None:
        self.decode(None)

    def _normalize(self, frame: av.VideoFrame) -> av.VideoFrame:
        """4:2:0 at the output size and range; a no-op for the usual yuv420p sources."""
        width, height = self.size
        same_range = is_full_range(frame) == self.full_range
        if (
            frame.format.name in ("yuv420p", "yuvj420p")
            and same_range
            and frame.width - frame.width % 2 == width
            and frame.height - frame.height % 2 == height
        ):
            return frame
        if (
            frame.width < width
            or frame.height < height
            or frame.width > width + 1
            or frame.height > height + 1
        ):
            # A mid-stream resolution change: scale to the size the encoder was opened with.
            return frame.reformat(
                width=width,
                height=height,
                format="yuv420p",
                dst_color_range=colour_range(self.full_range),
            )
        return frame.reformat(format="yuv420p", dst_color_range=colour_range(self.full_range))

    def _process(self, frame: av.VideoFrame) -> None:
        pts = self.timestamps(frame)
        if self.start is None:
            self.start = pts
        length = float(frame.duration * self.time_base) if frame.duration else self.interval
        self.covered = max(self.covered, float((pts - self.start) * self.time_base) + length)
        frame = self._normalize(frame)
        width, height = self.size
        y_in = luma_plane_view(frame, 0)[:height, :width]
        if self.frames == 0 and _looks_coloured(luma_plane_view(frame, 1), luma_plane_view(frame, 2)):
            self.colour_input = True
            logger.info(
                "%s is already in colour: colorizing from its luminance (the original colour is not used)",
                self.source.name,
            )
        y = np.ascontiguousarray(y_in)
        u, v = self.colorize(y, self.full_range)
        out = yuv420_frame(y, u, v, self.full_range)
        out.pts = pts
        out.time_base = self.time_base
        self.encoder.encode(out)
        self.frames += 1
        if self.bar is not None:
            self.bar.update(1)
