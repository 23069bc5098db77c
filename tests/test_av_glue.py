"""The PyAV glue of the live path: an output frame becomes the picture an encoder gets, planes and tags;
the live H.264 encoders run with the preset and threads chosen for their frame size and use."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from chromastream.stream.av_glue import (
    AVCOL_RANGE_JPEG,
    AVCOL_RANGE_MPEG,
    AVCOL_SPC_SMPTE170M,
    ENCODER,
    luma_plane_view,
    to_video_frame,
    x264_options,
)
from chromastream.stream.frames import OutputFrame
from chromastream.stream.sinks import RECORD_OPTIONS
from chromastream.stream.webrtc import EncodedFrame, StreamEncoder


def output_frame(height: int, width: int, full_range: bool) -> OutputFrame:
    rng = np.random.default_rng(3)
    y = rng.integers(16, 236, (height, width), dtype=np.uint8)
    u = rng.integers(16, 241, (height // 2, width // 2), dtype=np.uint8)
    v = rng.integers(16, 241, (height // 2, width // 2), dtype=np.uint8)
    return OutputFrame("cam", 7, 12345, Fraction(1, 90000), y, u, v, full_range, 0.0)


def test_the_planes_arrive_untouched_with_their_time_and_colour_tags() -> None:
    frame = output_frame(48, 66, full_range=True)  # 66: a width whose lines FFmpeg pads
    video = to_video_frame(frame)
    assert (video.width, video.height, video.format.name) == (66, 48, "yuv420p")
    for index, plane in enumerate((frame.y, frame.u, frame.v)):
        np.testing.assert_array_equal(luma_plane_view(video, index), plane)
    assert (video.pts, video.time_base) == (12345, Fraction(1, 90000))
    assert video.color_range == AVCOL_RANGE_JPEG and video.colorspace == AVCOL_SPC_SMPTE170M
    assert to_video_frame(output_frame(48, 64, full_range=False)).color_range == AVCOL_RANGE_MPEG


def test_a_frame_of_another_size_is_scaled_to_the_size_the_encoder_started_with() -> None:
    video = to_video_frame(output_frame(48, 64, full_range=False), size=(96, 72))
    assert (video.width, video.height) == (96, 72)
    assert video.pts == 12345 and video.color_range == AVCOL_RANGE_MPEG


def test_the_live_path_does_not_load_the_file_transcoder() -> None:
    code = (
        "import sys\n"
        "import chromastream.stream.server, chromastream.stream.pipeline, chromastream.stream.webrtc\n"
        "import chromastream.stream.sinks, chromastream.stream.sources\n"
        "print('chromastream.stream.video_io' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def x264_settings(packet: bytes) -> dict[str, str]:
    """The settings x264 writes into its first packet (an SEI message "x264 - core ... options: ...")."""
    start = packet.index(b"x264 - core")
    text = packet[start : packet.index(b"\x00", start)].decode()
    return dict(item.split("=", 1) for item in text.split("options: ", 1)[1].split() if "=" in item)


class Frames:
    """A stream's output frames of one size, a few milliseconds apart."""

    def __init__(self, width: int, height: int, count: int) -> None:
        self.size, self.count = (width, height), count

    async def _frames(self) -> AsyncIterator[OutputFrame]:
        width, height = self.size
        for i in range(self.count):
            yy, xx = np.mgrid[0:height, 0:width]
            y = (16 + (xx + yy + 8 * i) % 200).astype(np.uint8)
            u = np.full((height // 2, width // 2), 100 + i, np.uint8)
            v = np.full((height // 2, width // 2), 150, np.uint8)
            yield OutputFrame("cam", i, i * 3000, Fraction(1, 90000), y, u, v, False, 0.0, {"index": i})
            await asyncio.sleep(0.02)

    def subscribe(self, stream_id: str, maxsize: int = 2) -> Any:
        return self

    def __aiter__(self) -> AsyncIterator[OutputFrame]:
        return self._frames()

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("width", "height", "threads"), [(640, 480, "1"), (1920, 1080, "2")])
def test_the_webrtc_h264_encoder_sends_every_frame_at_once_with_the_settings_for_its_size(
    width: int, height: int, threads: str
) -> None:
    async def viewer() -> list[EncodedFrame]:
        encoder = StreamEncoder(Frames(width, height, 6), "cam", "H264", h264_encoder="libx264")
        queue = encoder.attach()
        items = []
        while (item := await asyncio.wait_for(queue.get(), 10.0)) is not None:
            items.append(item)
        await encoder.close()
        return items

    items = asyncio.run(viewer())
    assert [i.event["index"] for i in items] == list(range(6))  # no frame held inside the encoder
    settings = x264_settings(bytes(items[0].packet))
    # superfast (subme 1, diamond search) and sliced threads when more than one
    assert (settings["subme"], settings["me"], settings["rc"]) == ("1", "dia", "abr")
    assert settings["threads"] == threads and settings["sliced_threads"] == ("1" if threads == "2" else "0")
    decoder = av.CodecContext.create("h264", "r")
    pictures = [p for i in items for p in decoder.decode(i.packet)]
    assert [(p.width, p.height) for p in pictures] == [(width, height)] * 6


@pytest.mark.parametrize(
    ("width", "height", "preset_subme", "threads", "sliced"),
    [(640, 480, "1", "1", "0"), (1920, 1080, "1", "2", "0")],
)
def test_a_recording_is_encoded_with_the_settings_for_its_size(
    tmp_path: Path, width: int, height: int, preset_subme: str, threads: str, sliced: str
) -> None:
    path = tmp_path / "rec.mkv"
    with av.open(str(path), "w") as container:
        video = container.add_stream(
            ENCODER, rate=25, options={**RECORD_OPTIONS, **x264_options(width, height, "record")}
        )
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame(width, height, "yuv420p")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
    with av.open(str(path)) as container:
        first = bytes(next(container.demux(video=0)))
    settings = x264_settings(first)
    assert (settings["subme"], settings["threads"], settings["sliced_threads"]) == (
        preset_subme,
        threads,
        sliced,
    )
    assert (settings["crf"], settings["bframes"]) == ("20.0", "0")
