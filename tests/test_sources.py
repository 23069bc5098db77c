"""Sources: synthetic pattern, files (paced, looped, fast), RTSP against a real GStreamer server.

Timing assertions are deliberately loose (about ±50 %): the machine may be busy, and the point is that
pacing exists, not its precision. The RTSP tests use ``tests/rtsp_server.py`` on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np
import pytest

from chromastream.stream.errors import InputError
from chromastream.stream.frames import EndOfStream, Frame, Reset, SourceEvent
from chromastream.stream.sources import (
    Backoff,
    FileSource,
    InvalidSourceError,
    RtspSource,
    SourceError,
    SyntheticSource,
    is_connection_error,
    open_source,
)
from chromastream.stream.sources import rtsp as rtsp_module
from tests.rtsp_fixtures import RtspServer, free_port, make_h264_clip

FAST_BACKOFF = Backoff(initial=0.2, factor=2.0, maximum=1.0)


def run(coroutine: Any, timeout: float = 30.0) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


async def take(source: Any, count: int, on_event: Callable[[SourceEvent], None] | None = None) -> list[Any]:
    """The first ``count`` events (fewer if the stream ends first)."""
    events: list[Any] = []
    stream: AsyncIterator[SourceEvent] = source.events()
    async for event in stream:
        events.append(event)
        if on_event is not None:
            on_event(event)
        if len(events) >= count or isinstance(event, EndOfStream):
            break
    return events


def frames_of(events: list[Any]) -> list[Frame]:
    return [e for e in events if isinstance(e, Frame)]


def strictly_increasing(values: list[Any]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


def make_clip(
    path: Path, frames: int, width: int, height: int, codec: str, pix_fmt: str, fps: int = 25
) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.time_base = Fraction(1, fps)
        yy, xx = np.mgrid[0:height, 0:width]
        for i in range(frames):
            luma = (40 + (xx * 2 + yy + i * 7) % 160).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(np.repeat(luma[:, :, None], 3, axis=2), format="rgb24")
            frame = frame.reformat(format=pix_fmt)
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


# ---------------------------------------------------------------------------------------- synthetic


def test_synthetic_source_is_paced_numbered_and_even() -> None:
    source = SyntheticSource("syn", width=65, height=49, fps=50)

    async def main() -> tuple[list[Any], float]:
        started = time.monotonic()
        events = await take(source, 25)
        elapsed = time.monotonic() - started
        await source.close()
        return events, elapsed

    events, elapsed = run(main())
    frames = frames_of(events)
    assert len(frames) == 25
    assert 0.24 <= elapsed <= 0.9  # 24 frame periods of 20 ms
    assert [f.index for f in frames] == list(range(25))
    assert strictly_increasing([f.pts for f in frames])
    assert strictly_increasing([f.ingest_time for f in frames])
    assert all(f.y.shape == (48, 64) and f.y.dtype == np.uint8 for f in frames)
    assert all(f.time_base == Fraction(1, 50) and not f.full_range for f in frames)
    assert int(frames[0].y.min()) >= 16 and int(frames[0].y.max()) <= 235
    assert not np.array_equal(frames[0].y, frames[1].y)  # it moves
    assert source.live


def test_synthetic_source_skips_ahead_for_a_slow_consumer() -> None:
    source = SyntheticSource("syn", width=64, height=48, fps=100)

    async def main() -> list[Any]:
        frames = []
        async for event in source.events():
            assert isinstance(event, Frame)
            frames.append(event)
            await asyncio.sleep(0.05)  # five frame periods per frame
            if len(frames) == 8:
                break
        await source.close()
        return frames

    frames = run(main())
    assert source.stats.dropped >= 8
    assert max(b.pts - a.pts for a, b in itertools.pairwise(frames)) >= 3
    assert [f.index for f in frames] == list(range(8))


def test_synthetic_source_close_from_another_task_ends_the_stream() -> None:
    source = SyntheticSource("syn", width=64, height=48, fps=2)

    async def main() -> tuple[list[Any], float]:
        async def closer() -> float:
            await asyncio.sleep(0.2)
            at = time.monotonic()
            await source.close()
            return at

        task = asyncio.create_task(closer())
        events = await take(source, 100)
        return events, time.monotonic() - await task

    events, after_close = run(main())
    assert isinstance(events[-1], EndOfStream)
    assert len(frames_of(events)) == 1  # the first frame is immediate, the next one would be at 0.5 s
    assert after_close < 0.2


# ---------------------------------------------------------------------------------------------- file


def test_file_source_realtime_is_paced_and_ends(tmp_path: Path) -> None:
    clip = make_h264_clip(tmp_path / "clip.mp4", frames=20, width=96, height=64, fps=25)
    source = FileSource("file", clip)

    async def main() -> tuple[list[Any], float]:
        started = time.monotonic()
        events = await take(source, 1000)
        elapsed = time.monotonic() - started
        await source.close()
        return events, elapsed

    events, elapsed = run(main())
    frames = frames_of(events)
    assert isinstance(events[-1], EndOfStream) and len(events) == 21
    assert len(frames) == 20
    assert 0.38 <= elapsed <= 1.5  # 19 frame periods of 40 ms
    assert strictly_increasing([f.pts for f in frames])
    assert [f.index for f in frames] == list(range(20))
    assert all(f.y.shape == (64, 96) and not f.full_range for f in frames)
    assert source.live and source.stats.dropped == 0


def test_file_source_fast_waits_for_a_slow_consumer(tmp_path: Path) -> None:
    clip = make_h264_clip(tmp_path / "clip.mp4", frames=30, width=64, height=48, fps=10)
    source = FileSource("file", clip, realtime=False)

    async def main() -> tuple[list[Any], float]:
        started = time.monotonic()
        events: list[Any] = []
        async for event in source.events():
            events.append(event)
            await asyncio.sleep(0.005)
        return events, time.monotonic() - started

    events, elapsed = run(main())
    assert not source.live
    assert len(frames_of(events)) == 30 and isinstance(events[-1], EndOfStream)
    assert [f.index for f in frames_of(events)] == list(range(30))
    assert source.stats.dropped == 0
    assert elapsed < 2.0  # the clip lasts 3 s: not paced


def test_file_source_realtime_drops_oldest_for_a_slow_consumer(tmp_path: Path) -> None:
    clip = make_h264_clip(tmp_path / "clip.mp4", frames=40, width=64, height=48, fps=50)
    source = FileSource("file", clip)

    async def main() -> list[Any]:
        events: list[Any] = []
        async for event in source.events():
            events.append(event)
            await asyncio.sleep(0.08)  # four frame periods per frame
        return events

    events = run(main())
    frames = frames_of(events)
    assert source.stats.dropped > 10
    assert len(frames) + source.stats.dropped == 40
    assert strictly_increasing([f.index for f in frames]) and frames[-1].index == 39  # newest kept


def test_file_source_loop_resets_and_keeps_pts_increasing(tmp_path: Path) -> None:
    clip = make_h264_clip(tmp_path / "clip.mp4", frames=10, width=64, height=48, fps=25)
    source = FileSource("file", clip, loop=True, realtime=False)

    async def main() -> list[Any]:
        events = await take(source, 34)
        await source.close()
        worker = source._worker_thread
        assert worker is not None and not worker.is_alive()  # stopped, not still looping
        return events

    events = run(main())
    resets = [i for i, e in enumerate(events) if isinstance(e, Reset)]
    assert resets == [10, 21, 32]
    assert all(events[i].reason == "loop" for i in resets)
    frames = frames_of(events)
    pts = [f.pts for f in frames]
    assert strictly_increasing(pts)
    step = pts[1] - pts[0]
    assert pts[10] - pts[9] == step  # the second pass starts one frame after the first one ended
    assert pts[10] - pts[0] == 10 * step  # offset by exactly the clip's duration
    assert [f.index for f in frames] == list(range(len(frames)))
    assert np.array_equal(frames[0].y, frames[10].y)


@pytest.mark.parametrize(
    ("codec", "pix_fmt", "suffix", "full_range"),
    [
        ("ffv1", "gray", ".mkv", False),
        ("mjpeg", "yuvj420p", ".avi", True),
        ("ffv1", "yuv444p", ".mkv", False),
    ],
)
def test_file_source_odd_sizes_and_formats(
    tmp_path: Path, codec: str, pix_fmt: str, suffix: str, full_range: bool
) -> None:
    clip = make_clip(tmp_path / f"odd{suffix}", 3, 67, 51, codec, pix_fmt)
    source = FileSource("file", clip, realtime=False)
    events = run(take(source, 10))
    frames = frames_of(events)
    assert len(frames) == 3
    assert all(f.y.shape == (50, 66) and f.y.flags.c_contiguous for f in frames)
    assert all(f.full_range is full_range for f in frames)
    with av.open(str(clip)) as container:
        reference = next(container.decode(video=0)).reformat(format="gray").to_ndarray()[:50, :66]
    # The luma is the file's (up to range scaling between gray and limited-range 4:2:0).
    spread = np.corrcoef(reference.ravel().astype(float), frames[0].y.ravel().astype(float))[0, 1]
    assert spread > 0.99


def test_file_source_close_mid_stream_ends_cleanly(tmp_path: Path) -> None:
    clip = make_h264_clip(tmp_path / "clip.mp4", frames=50, width=64, height=48, fps=25)
    source = FileSource("file", clip, loop=True)

    async def main() -> tuple[list[Any], float]:
        events: list[Any] = []
        async for event in source.events():
            events.append(event)
            if len(events) == 3:
                started = time.monotonic()
                await source.close()
                closing = time.monotonic() - started
        return events, closing

    events, closing = run(main())
    assert len(frames_of(events)) == 3 and isinstance(events[-1], EndOfStream)
    assert closing < 0.5
    assert source._worker_thread is not None and not source._worker_thread.is_alive()


def test_file_source_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        FileSource("file", tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    source = FileSource("file", junk, realtime=False)
    with pytest.raises(InputError, match=re.escape("junk.mp4")):
        run(take(source, 10))


# --------------------------------------------------------------------------------------- open_source


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("rtsp://camera.local/stream1", RtspSource),
        ("rtsps://user:pass@10.0.0.2:8322/live", RtspSource),
        ("RTSP://127.0.0.1:8554/a/b?channel=1", RtspSource),
        ("synthetic:", SyntheticSource),
        ("synthetic:?width=320&height=240&fps=30&pattern=still", SyntheticSource),
        ("FILE", FileSource),  # replaced by a real path below
        ("PATH", FileSource),
    ],
)
def test_open_source_picks_the_kind(tmp_path: Path, url: str, kind: type) -> None:
    clip = make_h264_clip(tmp_path / "my clip.mp4", frames=2, width=32, height=32)
    url = {"FILE": clip.as_uri(), "PATH": str(clip)}.get(url, url)
    source = open_source("s", url)
    assert isinstance(source, kind)
    assert source.stream_id == "s"
    if isinstance(source, FileSource):
        assert source.path == clip
    if "width=320" in url:
        assert isinstance(source, SyntheticSource)
        assert (source.width, source.height, source.rate, source.pattern) == (320, 240, 30, "still")


def test_open_source_passes_options(tmp_path: Path) -> None:
    clip = make_h264_clip(tmp_path / "clip.mp4", frames=2, width=32, height=32)
    source = open_source("s", str(clip), loop=True, realtime=False)
    assert isinstance(source, FileSource) and source.loop and not source.live
    cam = open_source("c", "rtsp://h/x", transport="udp", stall_timeout=3.0)
    assert isinstance(cam, RtspSource) and cam.av_options["rtsp_transport"] == "udp"
    assert cam.av_options["timeout"] == "5000000"  # microseconds, FFmpeg's RTSP socket timeout


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty"),
        ("http://example.com/video", "scheme http://"),
        ("udp://239.0.0.1:1234", "scheme udp://"),
        ("rtsp://", "without a host"),
        ("rtsp:///path", "without a host"),
        ("rtsp://:554/path", "without a host"),
        ("rtsp://host:99999/path", "malformed"),
        ("rtsp://host:port/path", "malformed"),
        ("rtsp://host:0/path", "port 0"),
        ("rtsp://user:hunter2@host:notaport/x", "malformed"),
        ("synthetic:?width=abc", "not a valid int"),
        ("synthetic:?colour=red", "unknown synthetic parameter"),
        ("synthetic:?pattern=plaid", "unknown synthetic pattern"),
        ("synthetic:?width=0&height=10", "out of range"),
        ("synthetic:something", "unexpected"),
        ("file://otherhost/video.mp4", "remote host"),
    ],
)
def test_open_source_rejects_malformed_urls(url: str, message: str) -> None:
    with pytest.raises(InvalidSourceError, match=message) as info:
        open_source("s", url)
    assert "hunter2" not in str(info.value)
    if "scheme" in message or message == "empty":
        assert "rtsp://" in str(info.value) and "synthetic:" in str(info.value)  # lists what works


def test_open_source_rejects_options_of_another_kind() -> None:
    with pytest.raises(InvalidSourceError, match="does not take option"):
        open_source("s", "synthetic:", transport="tcp")
    with pytest.raises(InvalidSourceError, match="transport"):
        open_source("s", "rtsp://h/x", transport="sctp")
    with pytest.raises(InvalidSourceError, match="stall_timeout"):
        open_source("s", "rtsp://h/x", stall_timeout=0)


def test_backoff_grows_to_its_maximum_with_full_jitter() -> None:
    backoff = Backoff(initial=0.5, factor=2.0, maximum=10.0)
    assert [backoff.ceiling(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 10, 10]
    rng = random.Random(1)
    delays = [backoff.delay(6, rng) for _ in range(200)]
    assert all(0 <= d <= 10 for d in delays) and max(delays) > 8 and min(delays) < 2
    assert Backoff(jitter=False).delay(3, rng) == 2.0
    assert backoff.ceiling(10_000) == 10.0  # no overflow for a camera that stays down


def test_only_connection_errors_are_retried() -> None:
    assert is_connection_error(av.error.ConnectionRefusedError(111, "Connection refused"))
    assert is_connection_error(av.error.ExitError(-1, "Immediate exit requested"))
    assert is_connection_error(av.error.HTTPNotFoundError(-1, "Server returned 404 Not Found"))
    assert is_connection_error(TimeoutError())
    assert not is_connection_error(av.error.DecoderNotFoundError(-1, "Decoder not found"))
    assert not is_connection_error(av.error.HTTPUnauthorizedError(-1, "Server returned 401"))
    assert not is_connection_error(ValueError("a bug"))


def test_a_fatal_error_is_raised_from_events_without_retrying(monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(*_args: Any, **_kwargs: Any) -> Any:
        raise av.error.DecoderNotFoundError(-1, "Decoder not found", "rtsp://u:topsecret@h/x")

    monkeypatch.setattr(rtsp_module.av, "open", unsupported)
    source = RtspSource("cam", "rtsp://u:topsecret@127.0.0.1:9/x", backoff=FAST_BACKOFF)
    with pytest.raises(SourceError, match="Decoder not found") as info:
        run(take(source, 10), timeout=5)
    assert "topsecret" not in str(info.value) and "***@127.0.0.1" in str(info.value)
    assert source.stats.connect_attempts == 1


# ---------------------------------------------------------------------------------------------- RTSP


def test_rtsp_dead_camera_retries_with_growing_delays_and_closes_promptly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"rtsp://admin:hunter2@127.0.0.1:{free_port()}/live"  # nothing listens there
    source = RtspSource("cam", url, backoff=Backoff(initial=0.05, factor=2.0, maximum=0.4), seed=7)

    async def main() -> tuple[list[Any], float]:
        events: list[Any] = []

        async def consume() -> None:
            async for event in source.events():
                events.append(event)

        task = asyncio.create_task(consume())
        await asyncio.sleep(1.5)
        started = time.monotonic()
        await source.close()
        await asyncio.wait_for(task, 2)
        return events, time.monotonic() - started

    with caplog.at_level(logging.INFO, logger="chromastream.stream.sources"):
        events, closing = run(main())
    retries = list(source.stats.retries)
    assert source.stats.connect_attempts >= 4 and len(retries) >= 3
    assert [r.attempt for r in retries] == list(range(1, len(retries) + 1))
    assert [r.ceiling for r in retries[:4]] == [0.05, 0.1, 0.2, 0.4]
    assert all(0 <= r.delay <= r.ceiling for r in retries)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "reconnect attempt 1 in" in warnings[0]  # one line per outage
    assert "Connection refused" in (source.stats.last_error or "")
    assert "hunter2" not in caplog.text and "admin" not in caplog.text and "***@127.0.0.1" in caplog.text
    assert events == [EndOfStream("cam")]
    assert closing < 0.5
    assert source.stats.reconnects == 0


@pytest.mark.integration
def test_rtsp_source_reads_the_served_clip(rtsp_server: RtspServer) -> None:
    source = RtspSource("cam", rtsp_server.play_url, backoff=FAST_BACKOFF)

    async def main() -> tuple[list[Any], float]:
        started = time.monotonic()
        events = await take(source, 40)
        elapsed = time.monotonic() - started
        await source.close()
        return events, elapsed

    events, elapsed = run(main())
    frames = frames_of(events)
    assert len(frames) == 40
    assert all(f.y.shape == (120, 160) and f.stream_id == "cam" for f in frames)
    assert strictly_increasing([f.pts for f in frames])
    assert frames[0].time_base == Fraction(1, 90000)
    assert elapsed > 1.0  # served at 25 fps: 40 frames cannot come in much less than 1.6 s
    assert source.stats.connect_attempts == 1 and source.stats.reconnects == 0
    assert rtsp_server.count("play_client") == 1


@pytest.mark.integration
def test_rtsp_source_reconnects_after_a_server_restart(rtsp_server: RtspServer) -> None:
    source = RtspSource("cam", rtsp_server.play_url, backoff=FAST_BACKOFF, read_timeout=2.0)
    marks: dict[str, float] = {}

    async def main() -> list[Any]:
        events: list[Any] = []
        after_reset = 0
        async for event in source.events():
            events.append(event)
            if len(events) == 10:
                await asyncio.to_thread(rtsp_server.stop)
                await asyncio.sleep(3.0)
                await asyncio.to_thread(rtsp_server.start)
                marks["restarted"] = time.monotonic()
            if isinstance(event, Reset):
                marks["reset"] = time.monotonic()
            elif "reset" in marks:
                marks.setdefault("first_frame", time.monotonic())
                after_reset += 1
                if after_reset == 10:
                    break
        await source.close()
        return events

    events = run(main(), timeout=40)
    resets = [e for e in events if isinstance(e, Reset)]
    assert resets == [Reset("cam", "reconnect")]
    assert source.stats.reconnects == 1
    assert source.stats.connect_attempts >= 3  # failed attempts while the server was down
    frames = frames_of(events)
    assert strictly_increasing([f.pts for f in frames])
    assert strictly_increasing([f.index for f in frames])
    assert all(f.y.shape == (120, 160) for f in frames)
    reconnect_time = marks["first_frame"] - marks["restarted"]
    print(f"first frame {reconnect_time:.2f} s after the server came back")
    assert reconnect_time < 5.0


@pytest.mark.integration
def test_rtsp_watchdog_reconnects_a_stalled_stream(rtsp_server: RtspServer) -> None:
    # read_timeout is long, so only the watchdog can notice that the server stopped sending.
    source = RtspSource(
        "cam", rtsp_server.play_url, backoff=FAST_BACKOFF, stall_timeout=1.0, read_timeout=30.0
    )

    async def main() -> list[Any]:
        events: list[Any] = []
        after_reset = 0
        async for event in source.events():
            events.append(event)
            if len(events) == 10:
                await asyncio.to_thread(rtsp_server.hold)
                for _ in range(100):
                    if source.stats.stalls:
                        break
                    await asyncio.sleep(0.05)
                await asyncio.to_thread(rtsp_server.resume)
            if any(isinstance(e, Reset) for e in events) and isinstance(event, Frame):
                after_reset += 1
                if after_reset == 5:
                    break
        await source.close()
        return events

    events = run(main(), timeout=30)
    assert source.stats.stalls >= 1
    assert source.stats.reconnects >= 1
    assert Reset("cam", "reconnect") in events
    assert "stalled" in (source.stats.last_error or "")
    assert strictly_increasing([f.pts for f in frames_of(events)])


@pytest.mark.integration
def test_rtsp_server_receives_a_record_push(rtsp_server: RtspServer) -> None:
    frames, width, height = 30, 96, 64
    with av.open(
        rtsp_server.record_url, mode="w", format="rtsp", options={"rtsp_transport": "tcp"}, timeout=10
    ) as out:
        stream = out.add_stream("libx264", rate=25, options={"preset": "ultrafast", "tune": "zerolatency"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            picture = np.full((height, width, 3), 40 + 5 * i, np.uint8)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            for packet in stream.encode(frame):
                out.mux(packet)
            time.sleep(0.01)
        for packet in stream.encode():
            out.mux(packet)
        rtsp_server.wait_for("record_frame", lambda e: e["frames"] >= frames, timeout=10)
    last = rtsp_server.wait_for("record_end")
    assert last["frames"] == frames
    first = rtsp_server.wait_for("record_frame")
    assert (first["width"], first["height"]) == (width, height)
    assert rtsp_server.record_out is not None
    with av.open(str(rtsp_server.record_out)) as received:
        lumas = [f.to_ndarray()[:height, :width].mean() for f in received.decode(video=0)]
    assert len(lumas) == frames
    assert lumas[-1] > lumas[0] + 50  # the pictures arrived in order, brightening
