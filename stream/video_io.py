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
    CONTAINERS,
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

logger = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint8]

#: Colorizes one frame: (Y plane ``[H, W]`` with H, W even, full_range) -> (U, V) ``[H/2, W/2]``.
ChromaFn = Callable[[U8, bool], tuple[U8, U8]]

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm")

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
) -> VideoStats:
    """Colorize ``source`` into ``destination`` (written in place: the caller picks a temporary name).

    ``progress``: ``True``/``False`` forces the progress bar on/off; ``None`` shows it on a terminal.
    ``name``: the path to mention in messages (the final output), if ``destination`` is a temporary.
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
        state = _Loop(encoder, video, colorize, out_size, full_range, source)
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
            encoder.encode(None)
        except BaseException:
            encoder.abort()
            raise
        encoder.close()
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
            # A broken container structure ends the readable part of the file; keep what came before.
            if state.frames == 0:
                raise InputError(f"cannot read video {source}: {av_message(exc)}") from exc
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
    ) -> None:
        self.encoder = encoder
        self.video = video
        self.colorize = colorize
        self.size = size
        self.full_range = full_range
        self.source = source
        self.timestamps = _Timestamps(video)
        self.time_base = time_base(video)
        self.frames = 0
        self.skipped = 0
        self.colour_input = False
        self.bar: Any = None

    def decode(self, packet: av.Packet[Any] | None) -> None:
        try:
            frames = self.video.decode(packet)
        except av.error.EOFError:
            return  # the decoder was already drained by the demuxer's end-of-stream packet
        except av.error.FFmpegError as exc:
            self.skipped += 1
            if self.skipped <= _MAX_LOGGED_SKIPS:
                at = ""
                if packet is not None and packet.pts is not None:
                    at = f" at {float(packet.pts * packet.time_base):.3f}s"
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
