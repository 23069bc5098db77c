"""The stream's sinks: a recording (segments that survive a crash) and an RTSP push (live, reconnecting).

Frames come from an in-test source through a real :class:`~chromastream.stream.pipeline.Pipeline` with the
shipped model at working size 64, so what is checked is what ``serve`` does with ``record:`` and
``rtsp_push:``. The push goes to the real GStreamer RTSP server's RECORD mount (``tests/rtsp_fixtures.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import av
import numpy as np
import pytest

from chromastream.models.runtime.base import Backend
from chromastream.models.runtime.registry import create_backend
from chromastream.stream.config import PipelineConfig, RecordConfig, StreamConfig
from chromastream.stream.errors import OutputError
from chromastream.stream.frames import EndOfStream, Frame, OutputFrame, SourceEvent
from chromastream.stream.pipeline import Pipeline
from chromastream.stream.sinks import RECORD_KEYFRAME_S, FileRecorder, RtspPusher
from chromastream.stream.sources import Backoff
from tests.rtsp_fixtures import RtspServer

T = TypeVar("T")
H, W = 64, 96
TIME_BASE = Fraction(1, 90000)
ROOT = Path(__file__).resolve().parents[1]


def run(coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@cache
def backend() -> Backend:
    return create_backend()


def luma(i: int) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    plane: np.ndarray = (30 + (xx * 2 + yy + i * 4) % 180).astype(np.uint8)
    return plane


def pts_of(i: int) -> int:
    return 3600 * i + 17  # 25 fps in 90 kHz, not starting at zero: an offset must survive too


class TestSource:
    """Frames of a moving ramp: a file (as fast as taken) or live (``fps``, until closed)."""

    __test__ = False

    def __init__(self, stream_id: str, frames: int, *, live: bool = False, fps: float = 25.0) -> None:
        self.stream_id = stream_id
        self.live = live
        self.frames = frames
        self.fps = fps
        self._closed = asyncio.Event()

    async def events(self) -> AsyncIterator[SourceEvent]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(self.frames):
            if self._closed.is_set():
                return
            if self.live:
                await asyncio.sleep(max(0.0, start + i / self.fps - loop.time()))
            yield Frame(self.stream_id, i, pts_of(i), TIME_BASE, luma(i), False, time.monotonic())
        yield EndOfStream(self.stream_id)

    async def close(self) -> None:
        self._closed.set()


def pipeline() -> Pipeline:
    return Pipeline(PipelineConfig(size=64, max_wait_ms=2.0), backend())


async def until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)


def output_frame(i: int) -> OutputFrame:
    grey = np.full((H // 2, W // 2), 128, np.uint8)
    meta = {"stream": "s", "index": i, "pts": pts_of(i)}
    return OutputFrame("s", i, pts_of(i), TIME_BASE, luma(i), grey, grey, False, time.monotonic(), meta)


# --- recording ---------------------------------------------------------------------------------------


def segments(folder: Path, suffix: str = ".mp4") -> list[Path]:
    """The recording's segments in ``folder``, oldest first (their names sort by start time)."""
    return sorted(folder.glob(f"*{suffix}"))


def decode(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


def metadata_lines(segment: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in segment.with_suffix(".jsonl").read_text().splitlines()]


def test_recorder_writes_every_frame_with_its_time_and_metadata(tmp_path: Path) -> None:
    out = tmp_path / "rec" / "gate.mp4"
    count = 20

    async def main() -> None:
        p = pipeline()
        cfg = StreamConfig("gate", "synthetic:", record=RecordConfig(out))
        await p.add_stream(cfg, TestSource("gate", count))
        await p.start()
        await until(lambda: p.info("gate").state == "ended", 20)
        await p.stop()

    run(main())
    (segment,) = segments(out.parent)
    # Named after the stream's name in the config and the UTC time the segment started.
    assert re.fullmatch(r"gate-\d{8}T\d{6}\.\d{3}Z\.mp4", segment.name), segment.name
    with av.open(str(segment)) as container:
        video = container.streams.video[0]
        assert (video.codec_context.name, video.width, video.height) == ("h264", W, H)
        assert video.codec_context.colorspace == 6  # BT.601 matrix, as the file colorizer tags it
        decoded = list(container.decode(video))
    seconds = [float(f.pts * f.time_base) for f in decoded]
    assert len(decoded) == count
    # The file's own timestamps, starting at zero in the segment: a file source's timeline is its own.
    assert seconds == pytest.approx(
        [float((pts_of(i) - pts_of(0)) * TIME_BASE) for i in range(count)], abs=1e-3
    )
    records = metadata_lines(segment)
    assert [r["pts"] for r in records] == [pts_of(i) for i in range(count)]  # the source's, as in the API
    assert [r["recording_time"] for r in records] == pytest.approx(seconds, abs=1e-3)
    assert {r["stream"] for r in records} == {"gate"} and not any(r["filled"] for r in records)
    assert "colorizer" in records[0]
    # The luma went through untouched (up to the encoder's loss).
    first = np.asarray(decoded[0].to_ndarray(format="yuv420p")[:H], dtype=np.int16)
    assert np.abs(first - luma(0)).mean() < 3


def test_a_recording_whose_frames_stop_with_an_error_keeps_what_it_recorded(tmp_path: Path) -> None:
    async def frames() -> AsyncIterator[OutputFrame]:
        for i in range(5):
            yield output_frame(i)
        raise RuntimeError("source broke")

    recorder = FileRecorder(RecordConfig(tmp_path / "fail.mkv"), "s")
    with pytest.raises(RuntimeError):
        run(recorder.run(frames()))
    (segment,) = segments(tmp_path, ".mkv")
    assert len(decode(segment)) == 5 and len(metadata_lines(segment)) == 5


def test_a_killed_recorder_leaves_its_segment_playable_up_to_the_last_fragment(tmp_path: Path) -> None:
    out = tmp_path / "crash.mp4"
    script = f"""
import asyncio, os, sys
sys.path.insert(0, {str(ROOT)!r})
from pathlib import Path
from chromastream.stream.config import RecordConfig
from chromastream.stream.sinks import FileRecorder
from tests.test_sinks import output_frame

async def frames():
    for i in range(90):
        yield output_frame(i)
    os._exit(3)  # a crash: no clean-up, no finally

asyncio.run(FileRecorder(RecordConfig(Path({str(out)!r})), "s").run(frames()))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    (segment,) = segments(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing hidden left behind
    # A fragment ends at each key frame (at least every two seconds, earlier at a scene cut): the fragments
    # before the last one are complete and play; what the last fragment and the encoder held is lost.
    decoded = decode(segment)
    assert 90 - round(RECORD_KEYFRAME_S * 25) - 20 <= len(decoded) < 90
    assert [float(f.pts * f.time_base) for f in decoded] == pytest.approx(
        [i * 0.04 for i in range(len(decoded))]
    )
    assert len(metadata_lines(segment)) == 90  # the metadata is flushed line by line


def test_a_timeline_that_jumps_back_keeps_going_forward_in_the_file(tmp_path: Path) -> None:
    async def frames() -> AsyncIterator[OutputFrame]:
        for i in range(10):
            frame = output_frame(i % 5)  # a looped file: pts start over after five frames
            yield dataclasses.replace(frame, index=i)

    recorder = FileRecorder(RecordConfig(tmp_path / "loop.mkv"), "s")
    run(recorder.run(frames()))
    assert recorder.frames == 10 and recorder.clock.rebased == 1
    (segment,) = segments(tmp_path, ".mkv")
    seconds = [float(f.pts * f.time_base) for f in decode(segment)]
    assert seconds == pytest.approx([i * 0.04 for i in range(10)], abs=2e-3)


def test_an_unsupported_record_path_is_refused_before_the_stream_starts(tmp_path: Path) -> None:
    async def main() -> None:
        p = pipeline()
        with pytest.raises(OutputError, match="record"):
            cfg = StreamConfig("x", "synthetic:", record=RecordConfig(tmp_path / "x.gif"))
            await p.add_stream(cfg, TestSource("x", 1))
        assert p.streams() == []
        await p.stop()

    run(main())


# --- RTSP push ---------------------------------------------------------------------------------------


def test_push_reaches_the_server_and_comes_back_after_a_server_restart(rtsp_server: RtspServer) -> None:
    async def main() -> None:
        p = pipeline()
        source = TestSource("cam", 25 * 30, live=True)
        await p.add_stream(StreamConfig("cam", "synthetic:", rtsp_push=rtsp_server.record_url), source)
        await p.start()
        await until(lambda: rtsp_server.count("record_frame") >= 10, 15)
        assert rtsp_server.wait_for("record_frame")["width"] == W
        before = rtsp_server.count("record_start")
        await asyncio.to_thread(rtsp_server.restart)
        after = len(rtsp_server.events)
        # A new RECORD session, and frames in it: the pusher noticed and reconnected on its own.
        await until(lambda: rtsp_server.count("record_start") > before, 20)
        await until(
            lambda: sum(1 for e in rtsp_server.events[after:] if e["event"] == "record_frame") >= 10, 15
        )
        assert p.info("cam").state == "running"  # the pipeline never noticed
        await p.stop()

    run(main(), timeout=60)


def test_pusher_drops_and_counts_while_the_server_is_down_and_redacts_credentials(
    rtsp_server: RtspServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = rtsp_server.record_url.replace("rtsp://", "rtsp://user:s3cret@")
    rtsp_server.stop()
    pusher = RtspPusher(url, "s", backoff=Backoff(initial=0.05, maximum=0.2))

    async def frames() -> AsyncIterator[OutputFrame]:
        for i in range(25):
            yield output_frame(i)
            await asyncio.sleep(0.02)

    run(pusher.run(frames()))
    assert pusher.frames_sent == 0 and pusher.drops == 25
    assert pusher.failures >= 2  # retried, with backoff, while frames kept flowing
    assert "s3cret" not in caplog.text and "***" in caplog.text


@pytest.mark.parametrize("loop", [False, True], ids=["once", "looped twice"])
def test_recording_keeps_the_sources_sound_in_step_with_the_picture(tmp_path: Path, loop: bool) -> None:
    """A file with a 440 Hz tone, played through a live pipeline into a recording: the sound is there,
    as long as the picture (a looped file too: its second pass follows the first in both tracks)."""
    from chromastream.stream.sources.file import FileSource
    from tests.conftest import ClipSpec, make_clip

    clip = make_clip(tmp_path / "in.mp4", ClipSpec(frames=25, width=W, height=H, audio="aac"))
    out = tmp_path / "rec" / "rec.mkv"
    seconds = 2.0 if loop else 1.0

    async def main() -> None:
        p = pipeline()
        source = FileSource("cam", clip, loop=loop, realtime=not loop)
        await p.add_stream(StreamConfig("cam", "synthetic:", record=RecordConfig(out)), source)
        await p.start()
        if loop:
            await until(lambda: p.info("cam").frames_out >= 50, 20)
            await p.remove_stream("cam")
        else:
            await until(lambda: p.info("cam").state == "ended", 20)
        await p.stop()

    run(main())
    (out,) = segments(out.parent, ".mkv")
    with av.open(str(out)) as container:
        assert len(container.streams.audio) == 1
        audio = container.streams.audio[0]
        samples = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio)])
        rate = audio.codec_context.sample_rate
    with av.open(str(out)) as container:
        frames = [f for f in container.decode(video=0)]
        video_end = float(frames[-1].pts * frames[-1].time_base) + 0.04
    assert abs(video_end - seconds) < 0.25
    # As long as the picture, to within a frame and an AAC frame, however far ahead the sound was read.
    assert abs(len(samples) / rate - video_end) < 0.1
    assert (
        0.1 < np.sqrt(np.mean(samples.astype(np.float64) ** 2)) < 0.2
    )  # the 0.2-amplitude tone, not silence
