"""The file formats ``chromastream colorize`` reads and writes: one list, used by every message and by
``--help``, so they cannot contradict each other.

Kept free of heavy imports (no OpenCV, no PyAV): the command line builds its help text from it.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Pictures, read and written (OpenCV codecs).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: Picture formats that hold 16 bits a sample; the others are written with 8.
IMAGE_16BIT_EXTENSIONS = (".png", ".tif", ".tiff")
#: Videos read (anything FFmpeg decodes; these are the names recognized as video).
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".webm")
#: Videos written, with their FFmpeg muxer: every one of them holds H.264. WebM holds only VP8/VP9/AV1,
#: so ``.webm`` is read but never written.
CONTAINERS = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov", ".avi": "avi"}

#: Where live sources decode (``sources.decode``, :mod:`chromastream.stream.hw_decode`): on NVDEC when a
#: CUDA device is visible, in software, or on NVDEC as asked (software with one warning where it cannot).
DECODE_MODES = ("auto", "software", "nvdec")
#: The live H.264 encoders (``webrtc.h264_encoder``, :func:`chromastream.stream.av_glue.live_h264_encoder`).
H264_ENCODERS = ("auto", "libx264", "nvenc")


def listed(extensions: Iterable[str]) -> str:
    """``.png, .jpg, ...``: how messages and help name a set of formats."""
    return ", ".join(extensions)


#: The formats paragraph of ``colorize --help``.
FORMATS_HELP = (
    f"pictures, in and out: {listed(IMAGE_EXTENSIONS)} (16-bit kept in {listed(IMAGE_16BIT_EXTENSIONS)})\n"
    f"videos in: {listed(VIDEO_EXTENSIONS)}; videos out (H.264): {listed(CONTAINERS)}"
)
