"""The luma (Y') plane of raw decoded frames, without copying.

Decoders and capture devices hand frames over as one flat buffer in a planar 4:2:0 layout: I420 (Y, then
U, then V, each its own plane) or NV12 (Y, then one plane of interleaved U/V). Rows are often padded to an
alignment (``stride`` bytes per row, more than the width) and planes to an aligned row count. The colorizer
needs only the Y plane, so these functions return it as a ``[height, width]`` view into the buffer: no
copy on the hot path, and the output's Y plane can be that same memory (:mod:`chromastream.kernels.combine`).

The whole buffer's size is checked against the layout before anything is read: a size mismatch almost
always means the width, height or stride is wrong, and slicing the wrong rows would silently produce a
sheared picture instead of an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]
PixelFormat = Literal["i420", "nv12"]
FORMATS: tuple[PixelFormat, ...] = ("i420", "nv12")


@dataclass(frozen=True)
class PlanarLayout:
    """Where the planes of one 4:2:0 frame lie in its flat buffer (all sizes in bytes)."""

    fmt: PixelFormat
    height: int
    width: int
    y_stride: int
    """Bytes from one Y row to the next (>= width)."""
    y_rows: int
    """Rows allocated to the Y plane (>= height; decoders align it, e.g. to 16)."""
    uv_stride: int
    """Bytes per chroma row: a U (or V) row in I420, an interleaved UV row in NV12."""
    uv_rows: int
    """Rows allocated to each chroma plane."""

    @property
    def y_size(self) -> int:
        return self.y_stride * self.y_rows

    @property
    def size(self) -> int:
        """Total bytes the buffer must hold."""
        planes = 2 if self.fmt == "i420" else 1
        return self.y_size + planes * self.uv_stride * self.uv_rows


def planar_layout(
    fmt: PixelFormat,
    height: int,
    width: int,
    y_stride: int | None = None,
    uv_stride: int | None = None,
    y_rows: int | None = None,
) -> PlanarLayout:
    """The layout of an I420 / NV12 frame, with the usual defaults for anything not given.

    Chroma has ``ceil(height / 2)`` rows of ``ceil(width / 2)`` samples (odd sizes round up, as FFmpeg
    does). Without an explicit ``uv_stride`` it follows the Y stride: half of it for I420's separate planes,
    all of it for NV12's interleaved plane. Chroma planes get ``ceil(y_rows / 2)`` rows.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown pixel format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    cw, ch = (width + 1) // 2, (height + 1) // 2
    ys = width if y_stride is None else y_stride
    if ys < width:
        raise ValueError(f"y_stride {ys} is smaller than the width {width}")
    rows = height if y_rows is None else y_rows
    if rows < height:
        raise ValueError(f"y_rows {rows} is smaller than the height {height}")
    uv_min = cw if fmt == "i420" else 2 * cw
    default_uvs = (ys + 1) // 2 if fmt == "i420" else ys
    uvs = max(uv_min, default_uvs) if uv_stride is None else uv_stride
    if uvs < uv_min:
        raise ValueError(f"uv_stride {uvs} is smaller than a {fmt} chroma row ({uv_min} bytes)")
    return PlanarLayout(fmt, height, width, ys, rows, uvs, max(ch, (rows + 1) // 2))


def _as_bytes(buffer: object) -> U8:
    """A flat uint8 view of bytes, bytearray, memoryview or a numpy array (copied only if not contiguous)."""
    if isinstance(buffer, np.ndarray):
        if buffer.dtype != np.uint8:
            raise ValueError(f"frame buffer must be uint8, got {buffer.dtype}")
        flat: U8 = buffer.reshape(-1)
        return flat
    if isinstance(buffer, bytes | bytearray | memoryview):
        return np.frombuffer(buffer, dtype=np.uint8)
    raise TypeError(f"frame buffer must be bytes-like or a uint8 array, got {type(buffer).__name__}")


def y_plane(
    buffer: object,
    fmt: PixelFormat,
    height: int,
    width: int,
    y_stride: int | None = None,
    uv_stride: int | None = None,
    y_rows: int | None = None,
) -> U8:
    """The Y plane ``[height, width]`` uint8 of an I420 or NV12 frame buffer, as a view when possible.

    The result views the caller's memory (read-only for ``bytes``): keep the buffer alive and unchanged
    while it is in use, or copy it. Raises ``ValueError`` when the buffer's size does not match the layout.
    """
    layout = planar_layout(fmt, height, width, y_stride, uv_stride, y_rows)
    flat = _as_bytes(buffer)
    if flat.size != layout.size:
        raise ValueError(
            f"{fmt} frame {width}x{height} (y_stride {layout.y_stride}, y_rows {layout.y_rows}, "
            f"uv_stride {layout.uv_stride}) needs {layout.size} bytes, got {flat.size}"
        )
    rows: U8 = flat[: layout.height * layout.y_stride].reshape(layout.height, layout.y_stride)
    return rows[:, :width]


def y_plane_i420(buffer: object, height: int, width: int, stride: int | None = None) -> U8:
    """Y plane of an I420 buffer whose Y rows are ``stride`` bytes (chroma rows ``ceil(stride / 2)``)."""
    return y_plane(buffer, "i420", height, width, y_stride=stride)


def y_plane_nv12(buffer: object, height: int, width: int, stride: int | None = None) -> U8:
    """Y plane of an NV12 buffer whose Y and interleaved UV rows are both ``stride`` bytes."""
    return y_plane(buffer, "nv12", height, width, y_stride=stride)
