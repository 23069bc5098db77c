"""Still pictures in and out: decoding with a size limit, and encoding to bytes for an atomic write.

Files are read into memory and decoded with ``cv2.imdecode``, with OpenCV's own logging silenced for the
call (it would print its warnings for a damaged file straight to the terminal): every failure becomes one
:class:`InputError`.
The pixel count is checked from the file header *before* decoding, so a hostile or accidental giant
picture is refused without allocating gigabytes.

16-bit masters (PNG, TIFF) can be read at their full depth (``keep_16bit``) and written back at it to the
formats that hold 16 bits (:data:`IMAGE_16BIT_EXTENSIONS`); the other formats get 8 bits.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, overload

import cv2
import numpy as np
import numpy.typing as npt

from chromastream.stream.errors import InputError, OutputError
from chromastream.stream.formats import IMAGE_16BIT_EXTENSIONS, IMAGE_EXTENSIONS

U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]
#: 8- or 16-bit samples; a picture's alpha has the depth of its colour.
Depth = TypeVar("Depth", np.uint8, np.uint16)

#: Formats whose files commonly carry transparency; alpha is kept only where the output can hold it.
ALPHA_EXTENSIONS = (".png", ".tif", ".tiff", ".webp")
#: Largest picture accepted, in pixels: the decoded frame plus its output take ~6 bytes a pixel.
MAX_PIXELS = 200_000_000


@dataclass(frozen=True)
class Picture(Generic[Depth]):
    """A decoded picture: ``pixels`` is ``[H, W]`` grey or ``[H, W, 3]`` RGB, 8-bit (or 16-bit when read
    with ``keep_16bit`` from a 16-bit file)."""

    pixels: npt.NDArray[Depth]
    alpha: npt.NDArray[Depth] | None = None

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def is_grey(self) -> bool:
        return self.pixels.ndim == 2


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _png_size(head: bytes) -> tuple[int, int] | None:
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return int(width), int(height)
    return None


def _bmp_size(head: bytes) -> tuple[int, int] | None:
    if head[:2] == b"BM" and len(head) >= 26:
        width, height = struct.unpack("<ii", head[18:26])
        return abs(int(width)), abs(int(height))
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    if head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return width, height
    if chunk == b"VP8 " and len(head) >= 30:
        width, height = struct.unpack("<HH", head[26:30])
        return int(width) & 0x3FFF, int(height) & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC) carry the frame size.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return int(width), int(height)
        i += 2 + length
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    if data[:4] not in (b"II*\x00", b"MM\x00*"):
        return None
    endian = "<" if data[:2] == b"II" else ">"
    try:
        (offset,) = struct.unpack(endian + "I", data[4:8])
        (count,) = struct.unpack(endian + "H", data[offset : offset + 2])
        size: dict[int, int] = {}
        for k in range(count):
            entry = data[offset + 2 + 12 * k : offset + 14 + 12 * k]
            tag, kind = struct.unpack(endian + "HH", entry[:4])
            if tag in (256, 257):
                fmt = "H" if kind == 3 else "I"
                (value,) = struct.unpack(endian + fmt, entry[8 : 8 + struct.calcsize(fmt)])
                size[tag] = int(value)
        if 256 in size and 257 in size:
            return size[256], size[257]
    except struct.error:
        return None
    return None


def header_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from the file header, or ``None`` when the format is not recognized here."""
    for probe in (_png_size, _jpeg_size, _webp_size, _bmp_size, _tiff_size):
        size = probe(data)
        if size is not None:
            return size
    return None


def _check_pixels(path: Path, width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise InputError(
            f"{path} is {width}x{height} ({width * height / 1e6:.0f} MP); "
            f"the largest picture accepted is {MAX_PIXELS / 1e6:.0f} MP"
        )


def _to_u8(array: npt.NDArray[np.generic], path: Path) -> U8:
    if array.dtype == np.uint8:
        return array.astype(np.uint8, copy=False)
    if array.dtype == np.uint16:
        return to_8bit(array.astype(np.uint16, copy=False))
    raise InputError(f"{path}: unsupported sample type {array.dtype} (8- or 16-bit pictures only)")


@contextmanager
def _opencv_silent() -> Iterator[None]:
    previous = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(previous)


def to_8bit(array: U16) -> U8:
    """16-bit samples to 8, rounded (65535 -> 255)."""
    out: U8 = ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return out


@overload
def read_image(path: Path, keep_16bit: Literal[False] = False) -> Picture[np.uint8]: ...
@overload
def read_image(path: Path, keep_16bit: bool) -> Picture[np.uint8] | Picture[np.uint16]: ...
def read_image(path: Path, keep_16bit: bool = False) -> Picture[Any]:
    """Decode a picture to grey or RGB, keeping transparency for formats that commonly carry it.

    JPEG and BMP are decoded with EXIF orientation applied (what viewers show); PNG, TIFF and WebP are
    decoded unchanged so their alpha survives. Samples are 8-bit, or with ``keep_16bit`` the file's own
    16 bits where it has them.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise InputError(f"input not found: {path}") from exc
    except IsADirectoryError as exc:
        raise InputError(f"{path} is a directory, not a picture") from exc
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not data:
        raise InputError(f"{path} is empty (0 bytes)")
    size = header_size(data)
    if size is not None:
        _check_pixels(path, *size)
    keep_alpha = path.suffix.lower() in ALPHA_EXTENSIONS
    flags = cv2.IMREAD_UNCHANGED if keep_alpha else cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH
    with _opencv_silent():
        decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    del data
    if decoded is None or decoded.size == 0:
        raise InputError(f"cannot decode {path}: not a valid {path.suffix.lstrip('.').upper()} picture")
    _check_pixels(path, decoded.shape[1], decoded.shape[0])
    raw = decoded if keep_16bit and decoded.dtype == np.uint16 else _to_u8(decoded, path)
    alpha: npt.NDArray[Any] | None = None
    if raw.ndim == 3 and raw.shape[2] == 4:
        alpha = np.ascontiguousarray(raw[:, :, 3])
        pixels = np.asarray(cv2.cvtColor(raw, cv2.COLOR_BGRA2RGB), dtype=raw.dtype)
    elif raw.ndim == 3 and raw.shape[2] == 3:
        pixels = np.asarray(cv2.cvtColor(raw, cv2.COLOR_BGR2RGB), dtype=raw.dtype)
    elif raw.ndim == 3 and raw.shape[2] == 1:
        pixels = raw[:, :, 0]
    elif raw.ndim == 2:
        pixels = raw
    else:
        raise InputError(f"{path}: unsupported channel layout {raw.shape}")
    return Picture(np.ascontiguousarray(pixels), alpha)


def encode_image(rgb: U8 | U16, suffix: str, alpha: U8 | U16 | None = None) -> bytes:
    """RGB ``[H, W, 3]`` -> the bytes of a file of type ``suffix`` (e.g. ``.png``).

    16-bit samples stay 16-bit where the format holds them (:data:`IMAGE_16BIT_EXTENSIONS`) and become
    8-bit elsewhere. Encoding to memory first lets the caller write the file atomically and report a
    failure (a picture too large for WebP, say) before anything appears on disk.
    """
    suffix = suffix.lower()
    if rgb.dtype == np.uint16 and suffix not in IMAGE_16BIT_EXTENSIONS:
        eight = to_8bit(np.asarray(rgb, dtype=np.uint16))
        return encode_image(eight, suffix, None if alpha is None else to_8bit(np.asarray(alpha, np.uint16)))
    if alpha is not None and suffix in ALPHA_EXTENSIONS:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)
        bgr[:, :, 3] = alpha
    else:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    params: list[int] = []
    if suffix in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, 95]
    elif suffix == ".png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, 3]
    elif suffix == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, 95]
    try:
        ok, buf = cv2.imencode(suffix, bgr, params)
    except cv2.error as exc:
        raise OutputError(f"cannot encode a {rgb.shape[1]}x{rgb.shape[0]} {suffix} picture: {exc}") from exc
    if not ok:
        raise OutputError(f"cannot encode a {rgb.shape[1]}x{rgb.shape[0]} {suffix} picture")
    return bytes(buf.tobytes())
