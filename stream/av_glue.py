"""PyAV glue shared by the live path and the file transcoder: planes, colour tags, H.264 settings, inputs.

The live path (sources, recorder, RTSP push, WebRTC) and the file transcoder
(:mod:`chromastream.stream.video_io`) read and write the same kind of video: 4:2:0 pictures whose chroma
the colorizer computed from sRGB with the BT.601 matrix. What both need from PyAV lives here, once, so a
recording made from a camera carries the same tags and encoder settings as a colorized file, and the live
path does not load the transcoder to get them.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any, Final, Literal

import av
import av.error
import numpy as np
import numpy.typing as npt

from chromastream.stream.errors import InputError, UsageError
from chromastream.stream.formats import H264_ENCODERS
from chromastream.stream.frames import OutputFrame

logger = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint8]

ENCODER: Final = "libx264"
#: x264 settings of colorized files (the file transcoder, a batch job that may use every core): 'veryfast'
#: keeps encoding a small share of the frame time; CRF 20 is visually clean for colour that is smooth by
#: construction (chroma comes from a low-resolution map). Recordings take their CRF from here and their
#: preset and threads from :func:`x264_options` (they share the cores with the colorizer).
ENCODER_OPTIONS = {"preset": "veryfast", "crf": "20"}

EncoderUse = Literal["live", "record"]
"""What a live H.264 encoder serves: ``live`` (WebRTC viewers, the RTSP push: every frame leaves at once)
or ``record`` (a recording: a file, where a few frames inside the encoder cost nothing)."""
#: Frames of more pixels than this count as large (1080p and up) for :func:`x264_options`.
LARGE_FRAME_PIXELS: Final = 1280 * 720


def x264_options(width: int, height: int, use: EncoderUse) -> dict[str, str]:
    """libx264's preset, tune and threads for a live encoder of ``width`` x ``height`` frames: the one
    place every live H.264 encoder (WebRTC, RTSP push, recorder) takes them from. Rate control stays each
    encoder's own: a bitrate for WebRTC, a CRF for the push and for recordings.

    Measured by ``python -m benchmarks.x264_settings`` on colorized video on two cores (RESULTS.md,
    "x264 settings"; the figures in docs/PERFORMANCE.md). The encoders share the cores with the
    colorizer, so the CPU time of a frame is what a setting costs:

    * ``superfast`` for both uses. At WebRTC's 1.5 Mbit/s it is 1.5 to 2.5 dB (PSNR of Y) better than
      ``ultrafast`` for 1.6 to 2 times the CPU (3.0/5.7/11.6 ms per 480p/720p/1080p frame); ``veryfast``
      adds 0.1 to 0.2 dB for 1.5 to 1.8 times that CPU, ``faster`` 0.4 to 0.5 dB for 2.6 to 3.2 times.
      For recordings (CRF 20) ``veryfast`` takes 1.6 to 1.7 times the CPU of ``superfast`` and, at the
      same quality, spends 11 to 14 % fewer bits by PSNR but about as many by SSIM (0.96 to 1.03 times):
      not worth half a core of the colorizer's time at 1080p (51 against 31 ms per frame).
    * live: ``tune=zerolatency`` (no lookahead: each frame's packet leaves with it) and *sliced*
      threads: frame threads hold one frame back per extra thread (33 ms each at 30 fps).
    * One thread below 1080p: a second one saves at most 1.5 ms of a frame's wall time there and
      competes with the colorizer for the same cores. Two from 1080p, where a frame takes 12 ms (live)
      or 31 ms (recording, nearly the whole frame time at 30 fps): where a core is free two threads cut
      that to 7 or 18 ms for at most 4 % more CPU. Sliced for live; frame threads for a recording,
      whose latency does not matter.
    """
    large = width * height > LARGE_FRAME_PIXELS
    threads = "2" if large else "1"
    if use == "live":
        return {"preset": "superfast", "tune": "zerolatency", "threads": threads, "thread_type": "slice"}
    return {"preset": "superfast", "threads": threads, "thread_type": "frame" if large else "slice"}


#: FFmpeg's H.264 encoder on NVIDIA's video engine (NVENC).
NVENC: Final = "h264_nvenc"
#: Size of the frame the NVENC probe encodes: above NVENC's smallest picture on every generation.
_PROBE_SIZE: Final = (256, 144)


class ProcessProbe:
    """A check that costs time or a device context, made once per process on first use, and a log line
    about its outcome that is written once per process whoever asks (many streams, many reconnections,
    several threads).

    ``check`` returns ``None`` when the thing works, else the reason it does not."""

    def __init__(self, check: Callable[[], str | None]) -> None:
        self._check = check
        self._lock = threading.Lock()
        self._done = False
        self._problem: str | None = None
        self._logged = False

    def problem(self) -> str | None:
        """The reason the checked thing cannot be used here, or ``None``; checked on the first call."""
        with self._lock:
            if not self._done:
                self._problem = self._check()
                self._done = True
            return self._problem

    def log_once(self, level: int, message: str, *args: object, log: logging.Logger = logger) -> bool:
        """Log ``message`` unless this probe has logged already; whether it was logged now."""
        with self._lock:
            if self._logged:
                return False
            self._logged = True
        log.log(level, message, *args)
        return True


def nvenc_problem() -> str | None:
    """Why ``h264_nvenc`` does not encode here, or ``None``: open it and encode one small frame. PyAV's
    wheel always has the encoder; it needs an NVIDIA GPU with an NVENC engine and its driver (L4, L40S,
    A10 and T4 have one; the H100 and H200 have none)."""
    try:
        context = av.CodecContext.create(NVENC, "w")
        assert isinstance(context, av.VideoCodecContext)
        context.width, context.height = _PROBE_SIZE
        context.pix_fmt = "yuv420p"
        context.time_base = Fraction(1, 30)
        context.options = {"delay": "0", "bf": "0"}
        context.open()
        frame = av.VideoFrame(*_PROBE_SIZE, "yuv420p")
        frame.pts = 0
        context.encode(frame)
        context.encode(None)
    except (av.error.FFmpegError, OSError, ValueError, NotImplementedError) as exc:
        return f"{NVENC} does not open here ({type(exc).__name__}: {av_message(exc)})"
    return None


#: Whether NVENC works in this process, asked at most once.
NVENC_PROBE = ProcessProbe(nvenc_problem)


def live_h264_encoder(choice: str) -> str:
    """The FFmpeg encoder of the live H.264 streams (WebRTC viewers, the RTSP push) for the setting
    ``webrtc.h264_encoder``: ``libx264`` or :data:`NVENC`.

    ``auto`` uses NVENC where it opens (one probe per process, :data:`NVENC_PROBE`) and libx264 otherwise,
    without a word; ``nvenc`` where it cannot open logs one warning per process with the reason and uses
    libx264, because a stream encoded on the CPU is better than none."""
    if choice not in H264_ENCODERS:
        raise UsageError(f"unknown H.264 encoder {choice!r}; expected one of {H264_ENCODERS}")
    if choice == "libx264":
        return ENCODER
    problem = NVENC_PROBE.problem()
    if problem is None:
        return NVENC
    if choice == "nvenc":
        NVENC_PROBE.log_once(
            logging.WARNING,
            "webrtc.h264_encoder is 'nvenc' but %s; the live H.264 streams are encoded with libx264 "
            "(said once per process)",
            problem,
        )
    return ENCODER


def nvenc_options(bitrate: int | None, keyframe_interval: int) -> dict[str, str]:
    """``h264_nvenc``'s options for a live stream, the counterpart of :func:`x264_options` on the GPU's
    video engine. Not run on NVENC hardware yet (the GPUs these were checked on have none, see
    docs/GPU.md); the names and values are FFmpeg 7's ``h264_nvenc`` options.

    * ``preset=p4``, ``tune=ll``: NVENC is a fixed-function engine, so the preset costs engine time, not
      CPU. ``p4`` is the middle of p1 (fastest) to p7 and encodes a 1080p frame in a few milliseconds;
      ``ll`` (low latency) turns lookahead off. ``ull`` would also drop the features that trade a little
      latency for quality, which a stream at 1.5 Mbit/s needs more than the last millisecond.
    * ``bf=0``, ``zerolatency=1``, ``delay=0``: no B-frames, no reordering, and each frame's packet leaves
      with it (FFmpeg otherwise holds a few frames in NVENC's queue), as the WebRTC encoder expects one
      packet per frame.
    * ``forced-idr=1``: a forced key frame (a new viewer, a lost packet) is an IDR with SPS and PPS, which
      a decoder can start from.
    * With ``bitrate``: CBR at that rate (``rc=cbr``) with a VBV of half a second: a key frame takes
      several frames' bits, which NVIDIA's one-frame VBV for the lowest latency would starve. Without
      (the RTSP push, which libx264 encodes at CRF 23): constant quality ``cq=23`` under ``rc=vbr``.
    * ``g``: the key-frame interval in frames, as configured.
    """
    options = {
        "preset": "p4",
        "tune": "ll",
        "bf": "0",
        "zerolatency": "1",
        "delay": "0",
        "forced-idr": "1",
        "g": str(max(keyframe_interval, 1)),
    }
    if bitrate is None:
        return {**options, "rc": "vbr", "cq": "23", "b": "0"}
    return {
        **options,
        "rc": "cbr",
        "b": str(bitrate),
        "maxrate": str(bitrate),
        "bufsize": str(bitrate // 2),
    }


#: H.264 levels (Annex A, table A-1) as (name, most macroblocks per frame, per second, most kbit/s for
#: the Baseline and Main profiles), lowest first.
H264_LEVELS: Final = (
    ("3.1", 3_600, 108_000, 14_000),
    ("3.2", 5_120, 216_000, 20_000),
    ("4.0", 8_192, 245_760, 20_000),
    ("4.1", 8_192, 245_760, 50_000),
    ("4.2", 8_704, 522_240, 50_000),
    ("5.0", 22_080, 589_824, 135_000),
    ("5.1", 36_864, 983_040, 240_000),
    ("5.2", 36_864, 2_073_600, 240_000),
)


def h264_level(width: int, height: int, fps: float = 30.0, bitrate: int | None = None) -> str:
    """The lowest H.264 level (as ``"4.0"``) that allows ``width`` x ``height`` frames at ``fps`` and,
    when given, ``bitrate`` bits per second: 3.1 up to 1280x720, 4.0 for 1920x1080, 5.1 for 4K.

    The level in the SPS tells a decoder how much memory and speed the stream needs; one that claims less
    than the stream uses (3.1 on a 1080p stream) is a stream hardware decoders may refuse. Each dimension
    is also bounded (at most sqrt(8 x frame size) macroblocks). Sizes beyond level 5.2 get 5.2, the most
    that encoders and decoders commonly take."""
    mb_w, mb_h = math.ceil(width / 16), math.ceil(height / 16)
    mbs = mb_w * mb_h
    for name, max_fs, max_mbps, max_kbps in H264_LEVELS:
        side = math.isqrt(8 * max_fs)
        if (
            mbs <= max_fs
            and max(mb_w, mb_h) <= side
            and mbs * fps <= max_mbps
            and (bitrate is None or bitrate <= max_kbps * 1000)
        ):
            return name
    return H264_LEVELS[-1][0]


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


def open_input(path: Path, hwaccel: Any = None) -> av.container.InputContainer:
    """Open a video for reading; every failure is an :class:`InputError` naming the file. ``hwaccel`` (an
    ``av.codec.hwaccel.HWAccel``) decodes on that device (see :mod:`chromastream.stream.hw_decode`)."""
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a directory, not a video")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes)")
    try:
        return av.open(str(path), mode="r", hwaccel=hwaccel)
    except av.error.FFmpegError as exc:
        raise InputError(f"cannot read video {path}: {av_message(exc)} (corrupt or not a video?)") from exc
    except OSError as exc:
        raise InputError(f"cannot read video {path}: {exc.strerror or exc}") from exc
