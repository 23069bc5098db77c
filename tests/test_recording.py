"""Recordings an operator can trust: segments that survive a crash, a timeline that keeps real gaps as gaps,
every source frame accounted for, and a record target that is checked before the stream starts.

The end-to-end checks use the real pipeline with the shipped model (working size 64), the real GStreamer
RTSP server (``tests/rtsp_fixtures.py``) as the camera, and the real ``chromastream serve`` process; the
files are read back with PyAV (FFmpeg's own demuxers and decoders, as ``ffprobe`` would).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiohttp import ClientSession, web

from chromastream.stream import sinks
from chromastream.stream.config import ConfigError, RecordConfig, StreamConfig, parse_config
from chromastream.stream.frames import EndOfStream, Frame, SourceEvent
from chromastream.stream.recording import TICKS, WALL_TOLERANCE_S, RecordingClock, SegmentNames
from chromastream.stream.server import create_app
from chromastream.stream.sinks import FileRecorder
from chromastream.stream.sources import Backoff, RtspSource
from tests.rtsp_fixtures import RtspServer
from tests.test_sinks import TestSource, output_frame, pipeline, run, until

ROOT = Path(__file__).resolve().parents[1]


# --- reading a recording back --------------------------------------------------------------------------


def segments(folder: Path, suffix: str = ".mp4") -> list[Path]:
    """The segments in ``folder``, oldest first (their names sort by start time)."""
    return sorted(folder.glob(f"*{suffix}"))


def lines(segment: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in segment.with_suffix(".jsonl").read_text().splitlines()]


class Played:
    """One segment as a player sees it: decoded frames' times (seconds) and the file's duration."""

    def __init__(self, path: Path) -> None:
        with av.open(str(path)) as container:
            video = container.streams.video[0]
            frames = list(container.decode(video))
            self.duration = (container.duration or 0) / 1e6
        self.times = [float(f.pts * f.time_base) for f in frames]
        self.pictures = [f.to_ndarray(format="gray") for f in frames]


def timeline(played: list[Played]) -> list[float]:
    """All frames on one clock: each segment starts where the previous one's duration ends."""
    out: list[float] = []
    start = 0.0
    for segment in played:
        out += [start + t for t in segment.times]
        start += segment.duration
    return out


# --- configuration -------------------------------------------------------------------------------------


def test_record_takes_a_plain_path_or_a_mapping(tmp_path: Path) -> None:
    config = parse_config(
        {
            "streams": [
                {"id": "a", "url": "synthetic:", "record": "rec/a.mp4"},
                {
                    "id": "b",
                    "url": "synthetic:",
                    "record": {"path": "/rec/b.mkv", "segment_s": 300, "retain_hours": 72},
                },
            ]
        },
        tmp_path,
    )
    a, b = (s.record for s in config.streams)
    assert a == RecordConfig(tmp_path / "rec" / "a.mp4")  # relative to the config file's folder
    assert a.segment_s == 60 and a.retain_hours is None and a.retain_segments is None
    assert b == RecordConfig(Path("/rec/b.mkv"), segment_s=300, retain_hours=72)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"path": "x.mp4", "segment_s": 0}, "streams[0].record.segment_s: must be in 1..86400"),
        ({"path": "x.mp4", "retain_segments": 0}, "streams[0].record.retain_segments: must be at least 1"),
        ({"segment_s": 60}, "streams[0].record.path: is required"),
        ({"path": "x.mp4", "keep": 3}, "streams[0].record.keep: unknown key"),
    ],
)
def test_a_bad_record_setting_names_its_key(record: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"streams": [{"id": "a", "url": "synthetic:", "record": record}]})
    assert str(caught.value).startswith(message), str(caught.value)


# --- the clock -----------------------------------------------------------------------------------------


def place_all(clock: RecordingClock, frames: list[tuple[int | None, float]]) -> list[float]:
    """Seconds on the recording's clock of frames given as (source pts at 90 kHz, arrival time)."""
    return [clock.place(None if p is None else Fraction(p, TICKS), w) / TICKS for p, w in frames]


def test_a_camera_that_repeats_timestamps_and_restarts_its_clock_is_recorded_in_real_time() -> None:
    """The test camera's own pattern (measured): ~27 fps delivered with 40.4 ms timestamp steps, every 13th
    frame a repeated timestamp, arrivals in pairs, then a 20 s outage after which its timestamps crawl
    one tick per frame for 20 s."""
    rng = np.random.default_rng(1)
    frames: list[tuple[int | None, float]] = []
    pts, wall = 0, 100.0
    for i in range(1500):
        if i == 700:
            wall += 20.0  # the camera is down
            pts += 3640  # ... and the source's timeline simply carries on one frame later
        elif i > 700 and i < 1240:
            pts += 1
        else:
            pts += 1 if i % 13 == 0 else 3640
        wall += 0.0371 + (0.03 if i % 13 == 5 else -0.03 if i % 13 == 6 else 0) + rng.normal(0, 0.003)
        frames.append((pts, wall))
    times = place_all(RecordingClock(paced=True), frames)
    steps = np.diff(times)
    assert steps.min() > 0.0371 / 2 * 0.9  # never squeezed (half a frame interval at most)
    gap = int(np.argmax(steps))
    assert gap == 699 and steps[gap] == pytest.approx(20.037, abs=WALL_TOLERANCE_S)
    span = frames[-1][1] - frames[0][1]
    assert abs(times[-1] - span) <= WALL_TOLERANCE_S  # as long as the time it covers
    rest = np.delete(steps, gap)
    assert np.percentile(rest, 5) > 0.025 and np.percentile(rest, 95) < 0.05  # smooth: jitter filtered


def test_a_good_cameras_own_timing_is_kept_and_its_drift_followed() -> None:
    """Exact 40 ms timestamps, arrivals jittered by 15 ms and a camera clock 0.5 % slow: the steps are
    the camera's (to a fraction of a millisecond) while the total follows the wall clock."""
    rng = np.random.default_rng(2)
    frames = [(3600 * i, 10.0 + i * 0.0402 + rng.uniform(0, 0.015)) for i in range(3000)]
    times = place_all(RecordingClock(paced=True), frames)
    steps = np.diff(times)
    assert np.abs(steps - 0.04).max() < 0.002
    assert abs(times[-1] - (frames[-1][1] - frames[0][1])) < 0.1


def test_a_file_read_as_fast_as_possible_keeps_its_own_timestamps() -> None:
    clock = RecordingClock(paced=False)
    looped = [3600 * (i % 5) + 17 for i in range(10)]  # a looped file's pts start over
    times = place_all(clock, [(p, 0.0) for p in looped])
    assert times == pytest.approx([0.04 * i for i in range(10)])


# --- names and retention -------------------------------------------------------------------------------


def test_segment_names_never_reuse_a_name(tmp_path: Path) -> None:
    names = SegmentNames.for_path(tmp_path / "gate.mp4", "cam")
    start = datetime(2025, 1, 7, 2, 15, 30, 123456, tzinfo=UTC)
    first, second = names.claim(start), names.claim(start)
    assert first.name == "gate-20250107T021530.123Z.mp4"
    assert second.name == "gate-20250107T021530.123Z-1.mp4"
    assert SegmentNames.for_path(tmp_path, "cam").claim(start).name == "cam-20250107T021530.123Z.mp4"


def write_frames(recorder: FileRecorder, count: int) -> None:
    async def frames() -> AsyncIterator[Any]:
        for i in range(count):
            yield output_frame(i)

    run(recorder.run(frames()))


def test_retention_keeps_the_newest_segments_of_this_recording_only(tmp_path: Path) -> None:
    old = tmp_path / "cam-20000101T000000.000Z.mp4"
    other = tmp_path / "gate-20000101T000000.000Z.mp4"
    for path in (old, old.with_suffix(".jsonl"), other):
        path.write_bytes(b"earlier")
    recorder = FileRecorder(RecordConfig(tmp_path / "cam.mp4", segment_s=1, retain_segments=2), "cam")
    write_frames(recorder, 130)  # 5.2 s: six segments of one second (and a bit)
    assert len(recorder.segments) == 6
    # The newest two of this recording, and the other stream's segment.
    assert segments(tmp_path) == sorted([other, *recorder.segments[-2:]])
    assert not old.with_suffix(".jsonl").exists()
    assert all(len(Played(p).times) == len(lines(p)) for p in recorder.segments[-2:])


def test_retention_by_age_deletes_only_what_is_older(tmp_path: Path) -> None:
    old = tmp_path / "cam-20000101T000000.000Z.mp4"
    old.write_bytes(b"earlier")
    recorder = FileRecorder(RecordConfig(tmp_path / "cam.mp4", segment_s=1, retain_hours=1), "cam")
    write_frames(recorder, 60)
    assert not old.exists()
    assert segments(tmp_path) == recorder.segments and len(recorder.segments) == 3


# --- start-up check and disk failures -------------------------------------------------------------------


def test_an_unwritable_record_target_fails_its_stream_with_one_line_and_the_reason_in_the_api(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the recording's folder should be")
    target = blocker / "rec" / "gate.mp4"

    async def main() -> dict[str, Any]:
        p = pipeline()
        await p.add_stream(
            StreamConfig("gate", "synthetic:", record=RecordConfig(target)), TestSource("gate", 5)
        )
        await p.add_stream(StreamConfig("other", "synthetic:"), TestSource("other", 5))
        await p.start()
        runner = web.AppRunner(create_app(p))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            async with ClientSession() as session:
                url = f"http://127.0.0.1:{runner.addresses[0][1]}/api/streams"
                async with session.get(f"{url}/gate") as response:
                    gate: dict[str, Any] = await response.json()
                await until(lambda: p.info("other").state == "ended")  # the others run as usual
                return gate
        finally:
            await runner.cleanup()
            await p.stop()

    with caplog.at_level(logging.INFO):
        gate = run(main())
    assert gate["state"] == "failed" and gate["frames_out"] == 0
    assert gate["error"] == f"cannot record to {blocker / 'rec'}: Not a directory"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [f"stream gate not started: {gate['error']}"]
    assert errors[0].exc_info is None  # one clear line, no traceback


def test_a_recording_whose_disk_fails_says_so_and_resumes_when_it_can(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sinks, "RECORD_RETRY_S", 0.5)
    folder = tmp_path / "rec"
    seen: list[str | None] = []

    async def main() -> None:
        p = pipeline()
        cfg = StreamConfig("cam", "synthetic:", record=RecordConfig(folder / "cam.mp4", segment_s=1))
        await p.add_stream(cfg, TestSource("cam", 25 * 5, live=True))
        await p.start()
        # The metadata file is created a moment after the video file (once the encoder is open).
        await until(lambda: len(segments(folder)) == 1 and len(segments(folder, ".jsonl")) == 1)
        for segment in segments(folder):  # the disk goes away under the recording
            segment.unlink()
            segment.with_suffix(".jsonl").unlink()
        folder.rmdir()
        folder.write_text("not a folder any more")
        await until(lambda: p.info("cam").error is not None)
        seen.append(p.info("cam").error)
        assert p.info("cam").state == "running"  # the stream itself goes on
        folder.unlink()  # the disk is back
        await until(lambda: p.info("cam").error is None and len(segments(folder)) >= 1)
        seen.append(p.info("cam").error)
        await until(lambda: p.info("cam").state == "ended", 20)
        await p.stop()

    with caplog.at_level(logging.INFO):
        run(main())
    assert seen == [f"recording: cannot record to {folder}: File exists", None]
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if "recording stopped" in m] == [
        f"stream cam: recording stopped: cannot record to {folder}: File exists; trying again in 0.5 s"
    ]
    (summary,) = [m for m in messages if m.startswith("stream cam: recorded ")]
    match = re.search(r"(\d+) lost", summary)
    assert match is not None and int(match.group(1)) > 0, summary
    for segment in segments(folder):
        assert len(Played(segment).times) == len(lines(segment))


# --- every frame accounted for -------------------------------------------------------------------------


class FastCamera:
    """A live 640x480 source faster than two cores colorize: the live path has to drop frames."""

    def __init__(self, frames: int, fps: float) -> None:
        self.stream_id = "cam"
        self.live = True
        self.frames = frames
        self.fps = fps
        yy, xx = np.mgrid[0:480, 0:640]
        self._base = (xx + yy) // 2

    async def events(self) -> AsyncIterator[SourceEvent]:
        start = time.monotonic()
        for i in range(self.frames):
            await asyncio.sleep(max(0.0, start + i / self.fps - time.monotonic()))
            y = (16 + (self._base + 3 * i) % 220).astype(np.uint8)
            yield Frame("cam", i, i, Fraction(1, int(self.fps)), y, False, time.monotonic())
        yield EndOfStream("cam")

    async def close(self) -> None:
        pass


def test_frames_the_live_path_dropped_are_repeated_in_place_and_marked(tmp_path: Path) -> None:
    folder = tmp_path / "rec"

    async def main() -> int:
        p = pipeline()
        cfg = StreamConfig("cam", "synthetic:", record=RecordConfig(folder / "cam.mp4", segment_s=1))
        await p.add_stream(cfg, FastCamera(400, fps=200))
        await p.start()
        await until(lambda: p.info("cam").state == "ended", 30)
        drops = p.info("cam").drops
        await p.stop()
        return drops

    drops = run(main())
    assert drops > 0  # the situation under test did happen: the machine could not colorize them all
    records = [r for segment in segments(folder) for r in lines(segment)]
    indices = [r["index"] for r in records]
    assert indices == list(range(indices[0], indices[-1] + 1))  # each source frame once, in order
    filled = [r for r in records if r["filled"]]
    assert len(filled) >= drops - indices[0]  # every drop after the recording began is marked
    for previous, record in itertools.pairwise(records):
        if record["filled"]:
            assert record["repeats"] == (previous["repeats"] if previous["filled"] else previous["index"])
    for segment in segments(folder):
        played = Played(segment)
        marks = lines(segment)
        assert len(played.times) == len(marks)  # a picture for every line, filled or not
        assert [m["recording_time"] for m in marks] == pytest.approx(played.times, abs=1e-3)
        for before, picture, mark in zip(played.pictures, played.pictures[1:], marks[1:], strict=False):
            if mark["filled"]:  # the repeat shows the last picture
                assert np.abs(picture.astype(int) - before.astype(int)).mean() < 2
    assert min(np.diff(timeline([Played(s) for s in segments(folder)]))) > 0.5 / 200 * 0.9


# --- a camera outage -----------------------------------------------------------------------------------

#: As long as a camera's reboot: the recording must keep it as one gap of this length.
OUTAGE_S = 20.0
#: Reconnects within a second of the camera coming back: the outage is many times the backoff.
FAST_BACKOFF = Backoff(initial=0.2, factor=2.0, maximum=1.0)


@pytest.mark.integration
def test_a_camera_outage_is_a_gap_of_its_real_length_in_a_recording_as_long_as_the_wall_time(
    rtsp_server: RtspServer, tmp_path: Path
) -> None:
    folder = tmp_path / "rec"
    arrivals: dict[int, float] = {}

    async def main() -> None:
        p = pipeline()
        url = rtsp_server.play_url
        source = RtspSource("cam", url, backoff=FAST_BACKOFF, read_timeout=2.0)
        cfg = StreamConfig("cam", url, record=RecordConfig(folder / "cam.mp4", segment_s=4))
        await p.add_stream(cfg, source)
        watch = p.subscribe("cam", maxsize=100_000)

        async def note() -> None:
            async for frame in watch:
                arrivals[frame.index] = frame.ingest_time

        noting = asyncio.create_task(note())
        await p.start()
        await until(lambda: len(arrivals) >= 125, 20)
        await asyncio.to_thread(rtsp_server.stop)
        await asyncio.sleep(OUTAGE_S)
        await asyncio.to_thread(rtsp_server.start)
        back = len(arrivals)
        await until(lambda: len(arrivals) >= back + 125, 20)
        await p.stop()
        await noting

    run(main(), timeout=90)
    paths = segments(folder)
    played = [Played(p) for p in paths]  # every segment opens and decodes
    assert len(paths) >= 3 and all(s.times and s.duration > 0 for s in played)
    records = [r for path in paths for r in lines(path)]
    assert [len(s.times) for s in played] == [len(lines(p)) for p in paths]
    times = np.array(timeline(played))
    steps = np.diff(times)
    # The gap is one step as long as the camera was away (measured on the frames' arrival times).
    gap = int(np.argmax(steps))
    before, after = records[gap], records[gap + 1]
    assert not after["filled"]
    away = arrivals[after["index"]] - arrivals[before["index"] if not before["filled"] else before["repeats"]]
    assert away > OUTAGE_S
    assert steps[gap] == pytest.approx(away, abs=WALL_TOLERANCE_S + 0.1)
    # No other step is squeezed: none shorter than half the typical frame step.
    typical = float(np.median(steps))
    assert 0.03 < typical < 0.045
    assert np.delete(steps, gap).min() >= typical / 2 * 0.9, sorted(steps)[:5]
    # The recording lasts as long as the time it covers.
    real = [r["index"] for r in records if not r["filled"]]
    wall = arrivals[real[-1]] - arrivals[real[0]] + typical
    total = sum(s.duration for s in played)
    assert total == pytest.approx(wall, rel=0.02)


# --- a crash, and the run after it ---------------------------------------------------------------------


def serve(config: Path) -> subprocess.Popen[str]:
    script = Path(sys.executable).with_name("chromastream")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "chromastream.stream.cli"]
    return subprocess.Popen(
        [*command, "serve", "--config", str(config), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def started(segment: Path) -> datetime:
    stamp = segment.name.split("-", 1)[1].split("Z")[0]
    return datetime.strptime(stamp, "%Y%m%dT%H%M%S.%f").replace(tzinfo=UTC)


def wait_for(condition: Any, timeout: float, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"serve exited early: {process.stderr.read() if process.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.mark.integration
def test_a_killed_server_leaves_playable_segments_and_the_next_run_leaves_them_alone(tmp_path: Path) -> None:
    folder = tmp_path / "rec"
    config = tmp_path / "serve.yaml"
    config.write_text(
        "port: 0\n"
        "pipeline: {size: 64, detector_rate: 0}\n"
        "streams:\n"
        "  - id: cam\n"
        '    url: "synthetic:?width=160&height=120&fps=25"\n'
        "    record: {path: rec/cam.mp4, segment_s: 4}\n"
    )

    readable = 0

    def newest_has_a_fragment() -> bool:
        nonlocal readable
        found = segments(folder)
        if len(found) < 3:  # two finished segments, and one being written
            return False
        try:
            readable = len(Played(found[-1]).times)
        except av.error.FFmpegError:  # its header is not written yet
            return False
        return readable >= 25

    first = serve(config)
    try:
        wait_for(newest_has_a_fragment, 60, first)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    killed = segments(folder)
    *finished, last = (Played(p) for p in killed)
    for path, segment in zip(killed, finished, strict=False):
        assert len(segment.times) == len(lines(path)) and segment.duration == pytest.approx(4.0, abs=0.1)
    # The one being written plays up to its last fragment: what was readable before the kill still is.
    assert len(last.times) >= readable
    assert last.times == pytest.approx([i * 0.04 for i in range(len(last.times))], abs=0.01)
    assert len(lines(killed[-1])) >= len(last.times)
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}

    second = serve(config)
    try:
        wait_for(lambda: len(segments(folder)) > len(killed), 40, second)
        time.sleep(1.0)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in before} == before  # untouched
    new = [p for p in segments(folder) if p not in before]
    assert new and all(Played(p).times and len(Played(p).times) == len(lines(p)) for p in new)
