"""PyAV glue shared by the live path and the file transcoder: planes, colour tags, H.264 settings, inputs.

The live path (sources, recorder, RTSP push, WebRTC) and the file transcoder
(:mod:`chromastream.stream.video_io`) read and write the same kind of video: 4:2:0 pictures whose chroma
the colorizer computed from sRGB with the BT.601 matrix. What both need from PyAV lives here, once, so a
recording made from a camera carries the same tags and encoder settings as a colorized file, and the live
path does not load the transcoder to get them.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any, Final

import av
import av.error
import numpy as np
import numpy.typing as npt

from chromastream.stream.errors import InputError
from chromastream.stream.frames import OutputFrame

U8 = npt.NDArray[np.uint8]

ENCODER: Final = "libx264"
#: x264 settings of colorized files and recordings: 'veryfast' keeps encoding a small share of the frame
#: time on two cores; CRF 20 is visually clean for colour that is smooth by construction (chroma comes from
#: a low-resolution map).
ENCODER_OPTIONS = {"preset": "veryfast", "crf": "20"}

# FFmpeg enum values (libavutil/pixfmt.h). The chroma is computed from sRGB with the BT.601 matrix
# (kernels.combine), so the stream is tagged exactly that: BT.601 matrix, sRGB primaries (= BT.709) and
# the sRGB transfer curve, which is how kernels.combine reads the grey levels of the luma.
AVCOL_RANGE_MPEG = 1
AVCOL_RANGE_JPEG = 2
AVCOL_SPC_SMPTE170M = 6
AVCOL_PRI_BT709 = 1
AVCOL_TRC_IEC61966_2_1 = 13


def av_message(exc: BaseException) -> str:
    """The reason an FFmpeg call failed, for a message that names the file itself."""
    if isinstance(exc, av.error.FFmpegError):
        return str(exc.strerror or exc)
    return str(exc)


def colour_range(full_range: bool) -> int:
    """FFmpeg's range tag: full (``JPEG``, 0-255) or limited (``MPEG``, 16-235)."""
    return AVCOL_RANGE_JPEG if full_range else AVCOL_RANGE_MPEG


def luma_plane_view(frame: av.VideoFrame, index: int) -> U8:
    """A writable numpy view of one plane without its line padding."""
    plane = frame.planes[index]
    view: U8 = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(plane.height, plane.line_size)
    return view[:, : plane.width]


def is_full_range(frame: av.VideoFrame) -> bool:
    return frame.format.name.startswith("yuvj") or frame.color_range == AVCOL_RANGE_JPEG


def yuv420_frame(y: U8, u: U8, v: U8, full_range: bool) -> av.VideoFrame:
    """A ``yuv420p`` frame of the three planes, tagged with their range and the BT.601 matrix."""
    height, width = y.shape
    out = av.VideoFrame(width, height, "yuv420p")
    for index, plane in enumerate((y, u, v)):
        luma_plane_view(out, index)[...] = plane
    out.color_range = colour_range(full_range)
    out.colorspace = AVCOL_SPC_SMPTE170M
    return out


def to_video_frame(frame: OutputFrame, size: tuple[int, int] | None = None) -> av.VideoFrame:
    """The output frame as an ``av.VideoFrame`` with its pts and time base, scaled to ``size`` (width,
    height) when given: a source may change size mid-stream, an encoder may not."""
    out = yuv420_frame(frame.y, frame.u, frame.v, frame.full_range)
    if size is not None and (out.width, out.height) != size:
        out = out.reformat(width=size[0], height=size[1])
    out.pts = frame.pts
    out.time_base = frame.time_base
    return out


def tag_colour(codec_context: Any, full_range: bool) -> None:
    """Tag an encoder's output as the colorizer made it: BT.601 matrix, sRGB primaries and transfer."""
    codec_context.color_range = colour_range(full_range)
    codec_context.colorspace = AVCOL_SPC_SMPTE170M
    codec_context.color_primaries = AVCOL_PRI_BT709
    codec_context.color_trc = AVCOL_TRC_IEC61966_2_1


def time_base(video: av.VideoStream) -> Fraction:
    """The stream's time base; FFmpeg demuxers always set one, the fallback only keeps types honest."""
    return video.time_base or Fraction(1, 90000)


def open_input(path: Path) -> av.container.InputContainer:
    """Open a video for reading; every failure is an :class:`InputError` naming the file."""
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a directory, not a video")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes)")
    try:
        return av.open(str(path), mode="r")
    except av.error.FFmpegError as exc:
        raise InputError(f"cannot read video {path}: {av_message(exc)} (corrupt or not a video?)") from exc
    except OSError as exc:
        raise InputError(f"cannot read video {path}: {exc.strerror or exc}") from exc
