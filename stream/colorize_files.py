"""File jobs of ``chromastream colorize``: one picture, a folder of pictures, a frame sequence, a video.

Every job follows the full-resolution contract (docs/ARCHITECTURE.md, Contracts): the network sees a
working-size lightness map, its ``ab`` is upsampled and combined with the input's own full-resolution
luminance, so outputs keep the input's size, detail and brightness, and the model only contributes colour.

Outputs are never half-written: a file goes to a temporary name beside its destination and is renamed
into place when complete; a folder is built in a temporary sibling folder. Any failure, including an
interrupt, removes the temporary.

A folder of pictures keeps going past a picture that cannot be read or encoded: one damaged scan should
not cost the hundreds of good ones beside it. Every good picture is written, each failure is logged with
its reason and returned in :attr:`JobResult.failed`, so the command can still end with an error status.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from chromastream.kernels.combine import lab_to_rgb_u8, luma_to_l_table, upsample_ab
from chromastream.kernels.frame_ops import frame_ops_for
from chromastream.kernels.lab_numpy import RGB_TO_XYZ, gray_to_l, linear_to_srgb, srgb_to_linear
from chromastream.models.colorizer.hints import Hint
from chromastream.models.runtime.registry import create_backend
from chromastream.models.runtime.session import ColorizerSession, working_shape
from chromastream.stream.errors import InputError, OutputError, UsageError
from chromastream.stream.formats import (
    CONTAINERS,
    IMAGE_16BIT_EXTENSIONS,
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    listed,
)
from chromastream.stream.image_io import Picture, encode_image, is_image_path, read_image
from chromastream.stream.video_io import ChromaFn, is_video_path, transcode

logger = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]
F32 = npt.NDArray[np.float32]
#: Picture samples: 8-bit, or 16-bit from a 16-bit master (kept at that depth to the output).
Pixels = U8 | U16

#: Pictures up to this size are combined in one piece; larger ones in horizontal strips of
#: ``_STRIP_PIXELS`` so the float temporaries (~40 bytes a pixel) never exist for the whole picture.
_WHOLE_PIXELS = 16_000_000
_STRIP_PIXELS = 4_000_000
#: A sampled pixel whose channels differ by more than this counts as coloured.
_RGB_TOLERANCE = 12
_COLOUR_SHARE = 0.005


class JobKind(enum.Enum):
    IMAGE = "image"
    DIRECTORY = "directory"
    SEQUENCE = "sequence"
    VIDEO = "video"


@dataclass(frozen=True)
class ColorizeOptions:
    """Settings of one ``colorize`` run (built once from the command line)."""

    size: int = 256
    """Short side of the network's working resolution; outputs keep the input's resolution."""
    backend: str = "auto"
    """Inference backend name (``auto`` picks the best available)."""
    model: Path | None = None
    """Colorizer ONNX file; ``None`` uses the shipped model."""
    memory: bool = True
    """Carry the recurrent state between frames of a video or sequence (steadier colour, no flicker)."""
    hints: tuple[Hint, ...] = ()
    """User colour hints, applied to every frame or picture."""
    overwrite: bool = False
    """Replace existing outputs; without it an existing output is an error and nothing is written."""
    progress: bool | None = None
    """Progress bar: on, off, or ``None`` for on when stderr is a terminal."""
    allow_partial: bool = False
    """Write what can be decoded of a damaged or truncated video instead of failing (with a warning)."""


@dataclass(frozen=True)
class Failure:
    """A picture of a folder that could not be colorized, and why (a message fit to show)."""

    path: Path
    reason: str


@dataclass(frozen=True)
class JobResult:
    kind: JobKind
    output: Path
    items: int
    """Pictures or frames written."""
    seconds: float
    skipped: int = 0
    """What was left out on purpose: video packets that could not be decoded, or entries of a folder that
    are not pictures (other files, subfolders, hidden files)."""
    failed: tuple[Failure, ...] = ()
    """Pictures of a folder that could not be read or encoded; the others were written."""

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0


# --------------------------------------------------------------------------------------------- colour


def make_session(options: ColorizeOptions) -> ColorizerSession:
    """Load the model once per run; hints are validated before this point."""
    backend = create_backend(options.backend, options.model)
    session = ColorizerSession(backend, size=options.size, memory=options.memory)
    session.set_hints(options.hints)
    return session


def _is_16bit(pixels: Pixels) -> bool:
    return pixels.dtype == np.uint16


@cache
def _grey16_to_l() -> F32:
    """Lab L of every 16-bit grey level: the 16-bit twin of the 8-bit table (256 KB, built once)."""
    return gray_to_l(np.arange(65536, dtype=np.float64) / 65535.0)


@cache
def _linear16() -> F32:
    """Linear light of every 16-bit sRGB level (256 KB, built once)."""
    return srgb_to_linear(np.arange(65536, dtype=np.float64) / 65535.0)


def _l_from_rgb16(pixels: U16) -> F32:
    """Lab L of 16-bit RGB at 16-bit precision (OpenCV's RGB->Lab steps L in about 8-bit increments).
    L depends on luminance Y alone, and the grey level with that Y has the same L."""
    y = _linear16()[pixels] @ RGB_TO_XYZ[1].astype(np.float32)
    return gray_to_l(linear_to_srgb(y))


def lightness(pixels: Pixels) -> F32:
    """Lab L of grey (exact, by table) or RGB pixels: the luminance the output must keep."""
    if pixels.ndim == 2:
        table = _grey16_to_l() if _is_16bit(pixels) else luma_to_l_table(full_range=True)
        grey: F32 = table[pixels]
        return grey
    if _is_16bit(pixels):
        return _l_from_rgb16(np.asarray(pixels, dtype=np.uint16))
    rgb = pixels.astype(np.float32) * np.float32(1.0 / 255.0)
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)
    out: F32 = np.ascontiguousarray(lab[:, :, 0])
    return out


def looks_coloured(pixels: Pixels) -> bool:
    """Whether an RGB picture carries colour (a grey picture saved as RGB does not)."""
    if pixels.ndim == 2:
        return False
    step = max(1, int(np.sqrt(pixels.shape[0] * pixels.shape[1] / 1_000_000)))
    sample = pixels[::step, ::step].astype(np.int32)
    spread = sample.max(axis=2) - sample.min(axis=2)
    tolerance = _RGB_TOLERANCE * (257 if _is_16bit(pixels) else 1)
    return bool(np.mean(spread > tolerance) > _COLOUR_SHARE)


def _lab_to_rgb(l_full: F32, ab_low: F32, sixteen: bool) -> Pixels:
    """Full-resolution L + low-resolution ab -> RGB at 8 bits (the shared kernel) or 16 (same maths,
    scaled to 65535: a 16-bit master keeps its fine tonal steps)."""
    if not sixteen:
        return lab_to_rgb_u8(l_full, ab_low)
    height, width = l_full.shape
    lab = np.dstack([l_full.astype(np.float32), upsample_ab(ab_low, height, width)])
    rgb = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)
    out: U16 = np.clip(rgb * 65535.0 + 0.5, 0, 65535).astype(np.uint16)
    return out


def _network_lightness(session: ColorizerSession, pixels: Pixels) -> F32:
    """L for the network: from a copy shrunk to twice the working size when the picture is much larger,
    so a 100-megapixel photo never needs a full-resolution float map just to be shrunk again."""
    height, width = pixels.shape[:2]
    wh, ww = working_shape(height, width, session.size, session.backend.info.size_multiple)
    if height * width > 4 * wh * ww:
        small = cast("Pixels", cv2.resize(pixels, (2 * ww, 2 * wh), interpolation=cv2.INTER_AREA))
        return lightness(small)
    return lightness(pixels)


def _ab_rows(ab_wide: F32, height: int, y0: int, y1: int) -> F32:
    """Rows ``y0:y1`` of the ab map bilinearly upsampled to ``height`` rows (half-pixel centres, edge
    clamped: the vertical half of ``cv2.resize``; ``ab_wide`` is already at full width)."""
    h = ab_wide.shape[0]
    src = (np.arange(y0, y1, dtype=np.float64) + 0.5) * (h / height) - 0.5
    src = np.clip(src, 0.0, h - 1)
    i0 = np.floor(src).astype(np.intp)
    i1 = np.minimum(i0 + 1, h - 1)
    t = (src - i0).astype(np.float32)[:, None, None]
    out: F32 = ab_wide[i0] * (1.0 - t) + ab_wide[i1] * t
    return out


def colorize_picture(session: ColorizerSession, picture: Picture[Any]) -> Pixels:
    """RGB ``[H, W, 3]`` at the picture's resolution and sample depth, with its luminance and the
    model's colour."""
    pixels: Pixels = picture.pixels
    sixteen = _is_16bit(pixels)
    height, width = pixels.shape[:2]
    ab = session.predict_ab(_network_lightness(session, pixels))
    if height * width <= _WHOLE_PIXELS:
        return _lab_to_rgb(lightness(pixels), ab, sixteen)
    out: Pixels = np.empty((height, width, 3), dtype=pixels.dtype)
    ab_wide = np.asarray(
        cv2.resize(np.ascontiguousarray(ab.transpose(1, 2, 0)), (width, ab.shape[1])), dtype=np.float32
    )
    rows = max(1, _STRIP_PIXELS // width)
    for y0 in range(0, height, rows):
        y1 = min(height, y0 + rows)
        strip = _ab_rows(ab_wide, height, y0, y1).transpose(2, 0, 1)
        out[y0:y1] = _lab_to_rgb(lightness(pixels[y0:y1]), strip, sixteen)
    return out


def chroma_function(session: ColorizerSession) -> ChromaFn:
    """The per-frame work of the video path: luma -> L -> ab -> 4:2:0 chroma (luma passes through)."""

    ops = frame_ops_for(session.backend)
    l_scale = session.backend.info.l_scale

    def chroma(y: U8, full_range: bool) -> tuple[U8, U8]:
        L = ops.network_l(y, session.shape_for(*y.shape), full_range, l_scale)
        _, u, v = ops.to_yuv420(y, session.predict_ab_scaled(L), full_range)
        return u, v

    return chroma


def _log_colour(name: str) -> None:
    logger.info(
        "%s is already in colour: colorizing from its luminance (the original colour is not used)", name
    )


# ------------------------------------------------------------------------------------------- outputs


_MODES: dict[str, int] = {}


def _default_mode(directory: bool) -> int:
    """Permissions a plain ``open()``/``mkdir`` would give (temporaries are created private)."""
    if "umask" not in _MODES:
        umask = os.umask(0o022)
        os.umask(umask)
        _MODES["umask"] = umask
    return (0o777 if directory else 0o666) & ~_MODES["umask"]


def _check_parent(target: Path) -> Path:
    parent = target.absolute().parent
    if not parent.exists():
        raise OutputError(f"output directory {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(f"cannot write {target}: {parent} is not a directory")
    return parent


@contextmanager
def staged_file(target: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path beside ``target``: renamed onto ``target`` on success, deleted on failure."""
    if target.is_dir():
        raise OutputError(f"{target} is a directory")
    if target.exists() and not overwrite:
        raise OutputError(f"{target} exists; pass --overwrite to replace it")
    parent = _check_parent(target)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".part{target.suffix}", dir=parent)
    except OSError as exc:
        raise OutputError(f"cannot write to {parent}: {exc.strerror or exc}") from exc
    os.close(fd)
    temp = Path(name)
    try:
        yield temp
        try:
            os.chmod(temp, _default_mode(directory=False))
            os.replace(temp, target)
        except OSError as exc:
            raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from exc
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@contextmanager
def staged_directory(target: Path, names: Sequence[str], overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder beside ``target`` to fill with some of ``names``; move them in on success.

    A new ``target`` appears in one rename; into an existing one the files are moved one by one (after
    every one of them was written), and files already there are left alone unless replaced. ``names`` are
    checked against existing files before any work; the ones actually written are the ones moved.
    """
    if target.exists() and not target.is_dir():
        raise OutputError(f"{target} exists and is not a directory")
    parent = _check_parent(target)
    if target.is_dir():
        clashes = [n for n in names if (target / n).exists()]
        if clashes and not overwrite:
            more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
            raise OutputError(f"{target / clashes[0]} exists{more}; pass --overwrite to replace")
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=parent))
    except OSError as exc:
        raise OutputError(f"cannot write to {parent}: {exc.strerror or exc}") from exc
    try:
        yield stage
        try:
            written = sorted(os.listdir(stage))
            if target.is_dir():
                for name in written:
                    os.replace(stage / name, target / name)
                stage.rmdir()
            elif written:
                os.chmod(stage, _default_mode(directory=True))
                os.replace(stage, target)
            else:
                stage.rmdir()  # nothing could be written: no empty output folder either
        except OSError as exc:
            raise OutputError(f"cannot write into {target}: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _write(path: Path, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _default_mode(directory=False))
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc


# ----------------------------------------------------------------------------------------------- jobs


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key putting ``frame2`` before ``frame10`` (how numbered frames are meant to be read)."""
    return tuple((0, int(part)) if part.isdigit() else (1, part.lower()) for part in re.split(r"(\d+)", name))


def list_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """Pictures directly inside ``folder`` in natural order, and the entries left out (subfolders,
    hidden files, other files; not recursive)."""
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise InputError(f"cannot list {folder}: {exc.strerror or exc}") from exc
    images = [p for p in entries if p.is_file() and not p.name.startswith(".") and is_image_path(p)]
    if not images:
        raise InputError(f"no pictures ({listed(IMAGE_EXTENSIONS)}) in {folder}")
    taken = set(images)
    others = sorted((p for p in entries if p not in taken), key=lambda p: natural_key(p.name))
    return sorted(images, key=lambda p: natural_key(p.name)), others


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def plan_job(source: Path, target: Path, sequence: bool = False) -> JobKind:
    """Decide the job from the paths, and refuse combinations that cannot work before any work is done."""
    if not source.exists():
        raise InputError(f"input not found: {source}")
    if _same_path(source, target):
        raise UsageError(f"the output {target} is the input; choose another output path")
    if source.is_dir():
        if is_image_path(target) or is_video_path(target):
            raise UsageError(f"a folder input gives a folder output, but {target} is a file name")
        return JobKind.SEQUENCE if sequence else JobKind.DIRECTORY
    if sequence:
        raise UsageError("--sequence needs a folder of frames as input")
    suffix = source.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        if not is_image_path(target):
            raise UsageError(
                f"a picture input needs a picture output ({listed(IMAGE_EXTENSIONS)}), got {target.name}"
            )
        return JobKind.IMAGE
    if suffix in VIDEO_EXTENSIONS:
        if target.suffix.lower() not in CONTAINERS:
            raise UsageError(
                f"a video input needs a video output ({listed(CONTAINERS)}: H.264), got {target.name}"
            )
        return JobKind.VIDEO
    raise InputError(
        f"unsupported input {source.name}: pictures ({listed(IMAGE_EXTENSIONS)}) "
        f"and videos ({listed(VIDEO_EXTENSIONS)}) are supported"
    )


def _bar_disabled(progress: bool | None) -> bool | None:
    return None if progress is None else not progress


def colorize_image(session: ColorizerSession, source: Path, target: Path, overwrite: bool) -> None:
    picture = read_image(source, keep_16bit=True)
    if looks_coloured(picture.pixels):
        _log_colour(source.name)
    if _is_16bit(picture.pixels) and target.suffix.lower() not in IMAGE_16BIT_EXTENSIONS:
        logger.info(
            "%s has 16-bit samples; %s holds 8, so the output is 8-bit (%s keep 16)",
            source.name,
            target.suffix.lower(),
            listed(IMAGE_16BIT_EXTENSIONS),
        )
    data = encode_image(colorize_picture(session, picture), target.suffix, picture.alpha)
    with staged_file(target, overwrite) as temp:
        _write(temp, data)


@dataclass(frozen=True)
class FolderResult:
    written: int
    skipped: int
    failed: tuple[Failure, ...]


def colorize_folder(
    session: ColorizerSession, source: Path, target: Path, options: ColorizeOptions, sequence: bool
) -> FolderResult:
    """Independent pictures (memory reset for each), or with ``sequence`` one clip of frames (memory
    carried, PNG outputs named by the frames' stems).

    A picture that cannot be read or encoded is logged, counted and left out; the run goes on (module
    docstring). Failing to *write* an output stops the run: the next ones would fail the same way.
    """
    images, others = list_images(source)
    if others:
        shown = ", ".join(p.name for p in others[:3]) + (", ..." if len(others) > 3 else "")
        what = "entry that is not a picture" if len(others) == 1 else "entries that are not pictures"
        logger.info("%s: leaving out %d %s (%s)", source.name, len(others), what, shown)
    if sequence:
        names = [p.stem + ".png" for p in images]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise InputError(
                f"two frames in {source} share the name {Path(dup).stem!r}; outputs would collide"
            )
    else:
        names = [p.name for p in images]
    if _same_path(source, target):
        raise UsageError(f"the output folder {target} is the input folder")
    session.reset()
    colour_logged = False
    failed: list[Failure] = []
    with (
        staged_directory(target, names, options.overwrite) as stage,
        tqdm(
            images,
            unit="frame" if sequence else "image",
            desc=source.name,
            disable=_bar_disabled(options.progress),
            file=sys.stderr,
        ) as bar,
    ):
        for path, name in zip(bar, names, strict=True):
            if not sequence:
                session.reset()
            try:
                picture = read_image(path, keep_16bit=True)
                if looks_coloured(picture.pixels) and not (sequence and colour_logged):
                    _log_colour(source.name if sequence else path.name)
                    colour_logged = True
                rgb = colorize_picture(session, picture)
                data = encode_image(rgb, ".png" if sequence else path.suffix, picture.alpha)
            except (InputError, OutputError) as exc:
                failed.append(Failure(path, str(exc)))
                logger.warning("%s not colorized: %s", path.name, exc)
                continue
            _write(stage / name, data)
    return FolderResult(len(images) - len(failed), len(others), tuple(failed))


def colorize_video(
    session: ColorizerSession, source: Path, target: Path, options: ColorizeOptions
) -> tuple[int, int]:
    session.reset()
    with staged_file(target, options.overwrite) as temp:
        stats = transcode(
            source,
            temp,
            chroma_function(session),
            container_format=CONTAINERS[target.suffix.lower()],
            progress=options.progress,
            name=target,
            allow_partial=options.allow_partial,
        )
    return stats.frames, stats.skipped


def run(
    source: Path,
    target: Path,
    options: ColorizeOptions,
    sequence: bool = False,
    session: ColorizerSession | None = None,
) -> JobResult:
    """Run one job end to end; raises :class:`chromastream.errors.ChromastreamError` subclasses on bad
    input."""
    kind = plan_job(source, target, sequence)
    started = time.perf_counter()
    session = session or make_session(options)
    skipped = 0
    failed: tuple[Failure, ...] = ()
    if kind is JobKind.IMAGE:
        colorize_image(session, source, target, options.overwrite)
        items = 1
    elif kind is JobKind.VIDEO:
        items, skipped = colorize_video(session, source, target, options)
    else:
        folder = colorize_folder(session, source, target, options, sequence=kind is JobKind.SEQUENCE)
        items, skipped, failed = folder.written, folder.skipped, folder.failed
    return JobResult(kind, target, items, time.perf_counter() - started, skipped, failed)
