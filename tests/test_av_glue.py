"""The PyAV glue of the live path: an output frame becomes the picture an encoder gets, planes and tags."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction

import numpy as np

from chromastream.stream.av_glue import (
    AVCOL_RANGE_JPEG,
    AVCOL_RANGE_MPEG,
    AVCOL_SPC_SMPTE170M,
    luma_plane_view,
    to_video_frame,
)
from chromastream.stream.frames import OutputFrame


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
