"""Video decoding on NVDEC where this machine offers it, software decoding otherwise, and the Y plane
handed to torch without a copy: the input side of a GPU video path, where frames should reach the
accelerated kernels (:mod:`chromastream.kernels.triton_frames`) without a round trip through host memory.

torch is not a runtime dependency (it comes with the ``gpu`` extra), so it is imported only by the parts
that make tensors (:class:`PinnedUpload`, :func:`y_plane_tensor`); opening and decoding a video
(:func:`open_video`) needs PyAV alone, and importing this module never needs torch.

PyAV (>= 14) opens a container with ``hwaccel=av.codec.hwaccel.HWAccel("cuda", ...)``; FFmpeg then
decodes on the GPU's video engine. Asked for ``is_hw_owned=True`` (PyAV >= 17), decoded frames stay in
device memory (pixel format ``cuda``, NV12 underneath) and each plane exports itself through DLPack, so
the Y plane reaches torch as a CUDA tensor with the decoder's row pitch and no copy at all. Everything
that can stand in the way (an old PyAV, an FFmpeg built without CUDA, no GPU or driver, a codec or
profile NVDEC cannot decode) ends in software decoding, with one log line that says why: a stream that
decodes slowly is better than one that does not decode.

The live sources (RTSP cameras and files in ``serve``) decode through :func:`live_hwaccel` under the
setting ``sources.decode``: NVDEC where it works, frames copied to host memory for today's numpy
pipeline, and software otherwise with one log line per process (:data:`NVDEC_PROBE`); each source reports
its decoder (:func:`live_decoder`) in its stream's JSON.

Software-decoded frames live in host memory. :func:`y_plane_tensor` returns their Y plane as a CPU
tensor over the frame's own buffer (``torch.from_numpy`` over the plane with its row stride), or, for a
CUDA target, copies it through a reusable pinned buffer with a non-blocking host-to-device transfer
(:class:`PinnedUpload`).

Where this was run: the software path and the fallback from a refused hardware request were run on a
machine without a GPU (PyAV 18.1, FFmpeg with CUDA support compiled in but no device) and on a
virtualized NVIDIA H200, where PyAV's wheel lists CUDA but opening the decoder device fails ("Operation
not supported"): decoding fell back to software, and :class:`PinnedUpload` passed its test. The live
sources' fallback was run on the machine without a GPU (``sources.decode: nvdec``: a file and a camera
decoded in software, one warning for both and a reconnection). The NVDEC path, live or not, and the
DLPack hand-over follow PyAV 18's documented API and have not run on a GPU yet; ``tests/test_hw_decode.py``
and ``tests/test_hw_video.py`` check them where NVDEC opens and skip with the reason elsewhere.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import av
import av.error
import numpy as np

from chromastream.stream.av_glue import ProcessProbe, luma_plane_view, open_input
from chromastream.stream.errors import InputError, UsageError
from chromastream.stream.formats import DECODE_MODES

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: Pixel formats whose plane 0 is 8-bit luma (``cuda`` frames carry NV12 or a 4:4:4 equivalent).
LUMA_FORMATS = frozenset(
    {"yuv420p", "yuvj420p", "nv12", "nv21", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "gray", "cuda"}
)


def hardware_unavailable_reason() -> str | None:
    """Why NVDEC cannot even be asked for in this process, or ``None`` when PyAV and FFmpeg offer it.

    ``None`` does not promise a GPU: whether a device opens is only known when a video is opened.
    """
    try:
        from av.codec.hwaccel import hwdevices_available
    except ImportError:
        return f"PyAV {av.__version__} has no av.codec.hwaccel (hardware decoding needs PyAV >= 14)"
    if "cuda" not in hwdevices_available():
        return "the FFmpeg inside PyAV was built without CUDA (NVDEC) support"
    return None


# --- the live sources' decoder (``sources.decode``) -------------------------------------------------

#: The GPU the live sources decode on (a worker process sees only its own GPU, as device 0).
LIVE_DEVICE: Final = 0


def nvdec_device_problem() -> str | None:
    """Why no live stream can decode on NVDEC in this process, or ``None``: PyAV and FFmpeg must offer
    CUDA, and a CUDA device context must open (it is closed again at once). Asked once per process, so a
    machine without the device costs one failed call, not one per stream and reconnection; and asked
    apart from any stream, so a device that refuses is never mistaken for a camera that is down."""
    reason = hardware_unavailable_reason()
    if reason is not None:
        return reason
    from av.codec.hwaccel import HWAccel

    try:
        HWAccel("cuda", device=str(LIVE_DEVICE)).create(av.Codec("h264", "r"))
    except (av.error.FFmpegError, NotImplementedError, OSError) as exc:
        return f"no CUDA device could be opened for NVDEC ({type(exc).__name__}: {exc})"
    return None


#: Whether NVDEC can be used by the live sources of this process, and its one log line.
NVDEC_PROBE = ProcessProbe(nvdec_device_problem)


@functools.cache
def _cuda_visible() -> bool:
    from chromastream.models.runtime.registry import cuda_device_present

    return cuda_device_present()


def check_decode_mode(mode: str) -> None:
    """Raise :class:`~chromastream.stream.errors.UsageError` unless ``mode`` is in :data:`DECODE_MODES`."""
    if mode not in DECODE_MODES:
        raise UsageError(f"unknown decode mode {mode!r}; expected one of {DECODE_MODES}")


def live_hwaccel(mode: str) -> Any | None:
    """The ``HWAccel`` a live source opens its input with under ``sources.decode: mode``, or ``None`` for
    software decoding.

    Frames decoded on NVDEC are copied to host memory (``is_hw_owned`` off): the pipeline after the
    source works on numpy planes today. Keeping them on the GPU for the Triton kernels
    (:func:`y_plane_tensor` over a ``cuda`` frame) is the next step of the GPU video path (docs/GPU.md).
    ``allow_software_fallback`` lets FFmpeg decode a profile NVDEC lacks in software frame by frame."""
    check_decode_mode(mode)
    if mode == "software" or (mode == "auto" and not _cuda_visible()):
        return None
    problem = NVDEC_PROBE.problem()
    if problem is not None:
        report_software(mode, problem)
        return None
    from av.codec.hwaccel import HWAccel

    return HWAccel("cuda", device=str(LIVE_DEVICE), allow_software_fallback=True)


def report_software(mode: str, reason: str) -> None:
    """Say once per process that live streams decode in software although NVDEC was wanted: a warning
    when ``sources.decode`` asks for ``nvdec``, an info line for ``auto`` on a machine whose CUDA device
    cannot decode. Nothing for ``software``. Each stream shows its decoder in its JSON either way."""
    if mode == "software":
        return
    level = logging.WARNING if mode == "nvdec" else logging.INFO
    if not NVDEC_PROBE.log_once(
        level,
        "sources.decode is %r but NVDEC cannot be used: %s; live streams decode in software (said once "
        "per process; each stream's decoder is shown in GET /api/streams/{id})",
        mode,
        reason,
        log=logger,
    ):
        logger.debug("software decoding because %s", reason)


def live_decoder(mode: str, video: av.VideoStream) -> str:
    """What decodes ``video`` of a container opened with :func:`live_hwaccel`'s answer, as the stream's
    JSON shows it: ``h264 (cuda)`` for NVDEC, ``h264 (software)`` otherwise. A codec NVDEC has no
    configuration for (FFV1, ...) was opened in software by PyAV; that is reported like a missing
    device."""
    context = video.codec_context
    name = context.name if context is not None else "?"
    if context is not None and context.is_hwaccel:
        return f"{name} (cuda)"
    wanted = mode == "nvdec" or (mode == "auto" and _cuda_visible())
    if wanted and NVDEC_PROBE.problem() is None:
        report_software(mode, f"FFmpeg has no NVDEC decoder configuration for {name}")
    return f"{name} (software)"


def _hwaccel(device_index: int, keep_on_device: bool) -> tuple[Any, bool]:
    """The ``HWAccel`` request, and whether frames will stay on the device (``is_hw_owned``)."""
    from av.codec.hwaccel import HWAccel

    if keep_on_device:
        try:
            return HWAccel(
                "cuda", device=str(device_index), allow_software_fallback=True, is_hw_owned=True
            ), True
        except TypeError:
            logger.info("PyAV %s cannot keep decoded frames on the GPU; they are downloaded", av.__version__)
    return HWAccel("cuda", device=str(device_index), allow_software_fallback=True), False


class DecodedVideo:
    """An open input with its video stream and how it is decoded; a context manager that closes it."""

    def __init__(
        self, container: av.container.InputContainer, hardware: bool, on_device: bool, reason: str
    ) -> None:
        if not container.streams.video:
            container.close()
            raise InputError(f"{container.name} has no video stream")
        self.container = container
        self.stream: av.VideoStream = container.streams.video[0]
        self.hardware = hardware
        """True when the decoder was opened on NVDEC (single frames may still fall back, see below)."""
        self.on_device = on_device
        """True when NVDEC frames stay in GPU memory (``frame.format.name == "cuda"``)."""
        self.reason = reason
        """How the stream is decoded and, for software decoding, why."""

    def frames(self) -> Iterator[av.VideoFrame]:
        """Decoded frames in order. With ``allow_software_fallback`` FFmpeg may still decode a profile
        NVDEC lacks in software; such frames arrive in host memory and :func:`y_plane_tensor` handles both."""
        yield from self.container.decode(self.stream)

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> DecodedVideo:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_video(
    path: Path, hardware: bool = True, device_index: int = 0, keep_on_device: bool = True
) -> DecodedVideo:
    """Open ``path`` for decoding, on NVDEC (GPU ``device_index``) when ``hardware`` and possible.

    Falls back to software decoding, logging the reason once, when PyAV or FFmpeg lack CUDA support,
    when no CUDA device opens, or when FFmpeg has no NVDEC configuration for the stream's codec.
    Missing or unreadable files raise :class:`~chromastream.stream.errors.InputError` either way.
    """
    if not hardware:
        return DecodedVideo(open_input(path), False, False, "software decoding (hardware not requested)")
    reason = hardware_unavailable_reason()
    if reason is None:
        container = open_input(path)  # the same checks and messages as every other input
        container.close()
        hwaccel, on_device = _hwaccel(device_index, keep_on_device)
        try:
            container = av.open(str(path), mode="r", hwaccel=hwaccel)
        except (av.error.FFmpegError, NotImplementedError, OSError) as exc:
            reason = f"no CUDA device could be opened for NVDEC ({type(exc).__name__}: {exc})"
        else:
            video = container.streams.video
            if video and video[0].codec_context.is_hwaccel:
                return DecodedVideo(container, True, on_device, f"NVDEC on cuda:{device_index}")
            codec = video[0].codec_context.name if video else "?"
            container.close()
            reason = f"FFmpeg has no NVDEC decoder configuration for {codec}"
    logger.info("%s: software decoding, because %s", path.name, reason)
    return DecodedVideo(open_input(path), False, False, f"software decoding ({reason})")


class PinnedUpload:
    """Host-to-GPU copies of Y planes through one reusable page-locked buffer.

    Pageable memory cannot be copied asynchronously, so each plane is first copied into the pinned
    buffer and then sent with ``non_blocking=True``; an event recorded after the transfer keeps the next
    call from overwriting the buffer before the GPU has read it. One instance per stream of frames.
    """

    def __init__(self, device: torch.device | str = "cuda") -> None:
        import torch

        self._torch = torch
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"PinnedUpload copies to a CUDA device, not {self.device}")
        self._host: torch.Tensor | None = None
        self._done: torch.cuda.Event | None = None

    def __call__(self, plane: np.ndarray) -> torch.Tensor:
        """A new device tensor ``[H, W]`` uint8 with the contents of ``plane`` (any row stride)."""
        if self._done is not None:
            self._done.synchronize()
        torch = self._torch
        if self._host is None or tuple(self._host.shape) != plane.shape:
            self._host = torch.empty(plane.shape, dtype=torch.uint8, pin_memory=True)
        self._host.numpy()[...] = plane
        out = self._host.to(self.device, non_blocking=True)
        self._done = torch.cuda.current_stream(self.device).record_event()
        return out


def y_plane_tensor(
    frame: av.VideoFrame, device: torch.device | str | None = None, upload: PinnedUpload | None = None
) -> torch.Tensor:
    """The Y plane ``[H, W]`` uint8 of a decoded frame as a torch tensor, a view wherever possible.

    - NVDEC frame kept on the GPU: the CUDA tensor over the decoder's own surface (DLPack; row stride =
      the decoder's pitch). PyAV 18 cannot order the export after FFmpeg's CUDA stream (it refuses a
      consumer stream and says to synchronize first), so the device is synchronized before the capsule
      is taken: correct on any torch stream, at the price of one device sync per frame.
    - Host frame, CPU target (``device`` None or cpu): a view over the frame's buffer with its row
      stride. It keeps the frame alive; do not write to it while the frame is in use elsewhere.
    - Host frame, CUDA target: copied through ``upload`` (a :class:`PinnedUpload`, made on the spot if
      not given; pass one to reuse its pinned buffer across frames).

    Raises ``ValueError`` for pixel formats without an 8-bit luma plane (e.g. RGB).
    """
    import torch
    from torch.utils.dlpack import from_dlpack

    fmt = frame.format.name
    if fmt not in LUMA_FORMATS:
        raise ValueError(
            f"frame format {fmt} has no 8-bit luma plane; expected one of {sorted(LUMA_FORMATS)}"
        )
    target = None if device is None else torch.device(device)
    if fmt == "cuda":
        plane = frame.planes[0]
        torch.cuda.synchronize(plane.__dlpack_device__()[1])
        y = from_dlpack(plane.__dlpack__())
        return y if target is None else y.to(target)
    view = luma_plane_view(frame, 0)
    if target is None or target.type == "cpu":
        return torch.from_numpy(view)
    return (upload or PinnedUpload(target))(view)
