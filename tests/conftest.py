"""Shared helpers for the command-line and video tests: synthetic clips and pictures made in ``tmp_path``.

Nothing here asserts on colour quality: the shipped model may be replaced by a better one with the same
interface, so tests check shapes, luminance, timing, audio and error handling only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest

from chromastream.models.runtime import registry
from chromastream.stream import colorize_files
from chromastream.stream.cli import main

pytest_plugins = ["tests.rtsp_fixtures"]

#: Small working size: the tests check plumbing, not colour, so the network may run small and fast.
FAST = ["--size", "64"]


@pytest.fixture(autouse=True)
def _shared_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Load each model once per test session: ONNX Runtime start-up would otherwise dominate the run."""
    cache = _BACKENDS

    def cached(name: str = "auto", model_path: Path | None = None) -> Any:
        key = (name, str(model_path))
        if key not in cache:
            cache[key] = registry.create_backend(name, model_path)
        return cache[key]

    monkeypatch.setattr(colorize_files, "create_backend", cached)


_BACKENDS: dict[tuple[str, str], Any] = {}


@dataclass
class CliRun:
    status: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliRun]:
    """Run ``main`` in-process (the fast way) and capture what a terminal would show."""

    def run(*args: str | Path) -> CliRun:
        capsys.readouterr()
        status = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliRun(status, captured.out, captured.err)

    return run


def luma_pattern(height: int, width: int, index: int) -> np.ndarray:
    """Limited-range luma with structure and motion (so an encoder has real work and frames differ)."""
    yy, xx = np.mgrid[0:height, 0:width]
    value = 40 + (xx * 3 + index * 5) % 150 + 30 * ((yy // 8 + index) % 2)
    return np.clip(value, 16, 235).astype(np.uint8)


def grey_picture(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return ((xx * 255 // max(width - 1, 1) + yy * 7) % 256).astype(np.uint8)


def colour_picture(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([(xx * 4) % 256, (yy * 5) % 256, ((xx + yy) * 2) % 256], axis=-1)
    return rgb.astype(np.uint8)


def write_picture(path: Path, pixels: np.ndarray) -> Path:
    """Grey ``[H, W]``, RGB ``[H, W, 3]`` or RGBA ``[H, W, 4]`` to any OpenCV-supported format."""
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    elif pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGBA2BGRA)
    assert cv2.imwrite(str(path), pixels)
    return path


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@dataclass
class ClipSpec:
    """A synthetic clip: its frames are ``luma_pattern`` frames; chroma is neutral unless ``colour``."""

    frames: int = 12
    width: int = 64
    height: int = 48
    codec: str = "libx264"
    pix_fmt: str = "yuv420p"
    rate: int = 25
    time_base: Fraction = Fraction(1, 25)
    pts: Sequence[int] | None = None
    audio: str | None = None
    colour: bool = False
    color_range: int | None = None
    garbage_at: Sequence[int] = ()
    options: dict[str, str] = field(default_factory=dict)


def _video_frame(spec: ClipSpec, index: int) -> av.VideoFrame:
    y = luma_pattern(spec.height, spec.width, index)
    if spec.pix_fmt in ("yuv420p", "yuvj420p"):
        ch, cw = (spec.height + 1) // 2, (spec.width + 1) // 2
        u = np.full((ch, cw), 90 if spec.colour else 128, np.uint8)
        v = np.full((ch, cw), 170 if spec.colour else 128, np.uint8)
        frame = av.VideoFrame(spec.width, spec.height, spec.pix_fmt)
        for plane, data in zip(frame.planes, (y, u, v), strict=True):
            view = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
            view[:, : plane.width] = data
        if spec.color_range is not None:
            frame.color_range = spec.color_range
        return frame
    if spec.pix_fmt == "gray":
        return av.VideoFrame.from_ndarray(y, format="gray")
    rgb = np.repeat(y[:, :, None], 3, axis=2)
    if spec.colour:
        rgb[:, :, 0] = np.clip(rgb[:, :, 0].astype(int) + 60, 0, 255)
    return av.VideoFrame.from_ndarray(rgb, format="rgb24")


def make_clip(path: Path, spec: ClipSpec | None = None) -> Path:
    """Write a clip described by ``spec`` (with an optional audio track) and return its path."""
    spec = spec or ClipSpec()
    with av.open(str(path), "w") as out:
        video = out.add_stream(spec.codec, rate=spec.rate, options=spec.options or None)
        video.width, video.height = spec.width, spec.height
        video.pix_fmt = spec.pix_fmt if spec.codec != "mjpeg" else "yuvj420p"
        video.time_base = spec.time_base
        video.codec_context.time_base = spec.time_base
        if spec.color_range is not None:
            video.codec_context.color_range = spec.color_range
        audio = None
        if spec.audio:
            # G.711 µ-law is what many CCTV cameras record: 8 kHz mono.
            narrow = spec.audio in ("pcm_mulaw", "pcm_alaw")
            audio = out.add_stream(spec.audio, rate=8000 if narrow else 48000)
            audio.layout = "mono" if narrow else "stereo"
        pts = list(spec.pts) if spec.pts is not None else list(range(spec.frames))
        for i, p in enumerate(pts):
            if i in spec.garbage_at:
                packet = av.Packet(b"\x00\x01garbage, not a picture" * 8)
                packet.stream = video
                packet.pts = packet.dts = p
                packet.time_base = spec.time_base
                out.mux(packet)
                continue
            frame = _video_frame(spec, i)
            frame.pts = p
            frame.time_base = spec.time_base
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if audio is not None:
            _write_tone(out, audio, seconds=(pts[-1] + 1) * float(spec.time_base))
    return path


def _write_tone(out: Any, audio: Any, seconds: float) -> None:
    """A 440 Hz tone in whatever sample format the audio encoder takes first (packed or planar)."""
    rate, done = audio.codec_context.sample_rate, 0
    block = audio.codec_context.frame_size or 1024
    channels = audio.codec_context.layout.nb_channels
    fmt = audio.codec_context.codec.audio_formats[0]
    total = int(seconds * rate)
    while done < total:
        tone = 0.2 * np.sin(2 * np.pi * 440 * np.arange(done, done + block) / rate)
        samples = np.repeat(tone[None], channels, axis=0)
        if fmt.name.startswith("s16"):
            samples = (samples * 20000).astype(np.int16)
        else:
            samples = samples.astype(np.float32)
        data = samples if fmt.is_planar else samples.T.reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(data), format=fmt.name, layout=audio.layout.name
        )
        frame.sample_rate = rate
        frame.pts = done
        for packet in audio.encode(frame):
            out.mux(packet)
        done += block
    for packet in audio.encode():
        out.mux(packet)


@dataclass
class ClipInfo:
    times: list[Fraction]
    lumas: list[np.ndarray]
    audio_packets: list[bytes]
    audio_times: list[Fraction]
    width: int
    height: int
    pix_fmt: str
    color_range: int
    codec: str
    chroma: list[tuple[np.ndarray, np.ndarray]]


def read_clip(path: Path) -> ClipInfo:
    """Everything the tests compare: frame times, Y planes, chroma, and the raw audio packets."""
    times: list[Fraction] = []
    lumas: list[np.ndarray] = []
    chroma: list[tuple[np.ndarray, np.ndarray]] = []
    packets: list[bytes] = []
    audio_times: list[Fraction] = []
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        streams = [video, *container.streams.audio]
        for packet in container.demux(*streams):
            if packet.stream.type == "audio":
                if packet.size:
                    packets.append(bytes(packet))
                    audio_times.append(packet.pts * packet.time_base)
                continue
            for frame in packet.decode():
                times.append(frame.pts * video.time_base)
                planes = []
                for plane in frame.planes[:3]:
                    view = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
                    planes.append(view[:, : plane.width].copy())
                lumas.append(planes[0])
                if len(planes) == 3:
                    chroma.append((planes[1], planes[2]))
        cc = video.codec_context
        return ClipInfo(
            times,
            lumas,
            packets,
            audio_times,
            cc.width,
            cc.height,
            cc.pix_fmt or "",
            cc.color_range,
            cc.name,
            chroma,
        )


def leftovers(folder: Path, expected: set[str]) -> set[str]:
    """Names in ``folder`` beyond ``expected``, hidden ones included (where temporaries would hide)."""
    return {p.name for p in folder.iterdir()} - expected


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    yield tmp_path
