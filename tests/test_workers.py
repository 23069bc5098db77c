"""``serve --workers N``: real worker processes behind a real front on 127.0.0.1.

What a user of the API notices is checked: which worker owns each stream, frames on every stream,
``/metrics`` covering every worker, hints and resets reaching the owner (seen in the metadata events
read through the front), WebRTC video from a worker's peer connection, and a worker killed with SIGKILL
coming back with its streams and hints while the other worker's stream never stops; a worker stopped with
SIGSTOP (alive, but answering nothing) is found by the health checks, killed and restarted the same way.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import ClientSession

from chromastream.models.colorizer.hints import Hint
from chromastream.stream.cli import _serve_config, build_parser, main
from chromastream.stream.config import ConfigError, RecordConfig, StreamConfig, parse_config
from chromastream.stream.worker_main import from_wire, to_wire
from chromastream.stream.workers import worker_count
from tests.test_server import Served, served
from tests.test_webrtc import frames_at_least, whep

CAMERA = "synthetic:?width=96&height=64&fps=15"
RED = {"x": 0.5, "y": 0.5, "rgb": "#ff0000"}
BLUE = {"x": 0.2, "y": 0.2, "rgb": "#0000ff"}


# ------------------------------------------------------------------------------------------- settings


def test_auto_is_one_worker_per_gpu_else_one_per_two_cores_and_at_most_one_per_stream() -> None:
    assert worker_count("auto", 4, cores=2, gpus=0)[0] == 1
    count, why = worker_count("auto", 10, cores=16, gpus=0)
    assert count == 8 and "16 usable" in why
    count, why = worker_count("auto", 10, cores=16, gpus=2)
    assert count == 2 and "GPU" in why
    count, why = worker_count("auto", 3, cores=16, gpus=0)
    assert count == 3 and "at most one per stream it starts with (3)" in why
    assert worker_count("auto", 0, cores=16, gpus=0)[0] == 1
    assert worker_count(3, 0, cores=2, gpus=0) == (3, "as configured")


def test_workers_setting_in_the_file_and_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert parse_config({}).workers == "auto"
    assert parse_config({"workers": 3}).workers == 3
    for bad in (0, 65, "many", True):
        with pytest.raises(ConfigError, match=r"^workers: must be"):
            parse_config({"workers": bad})
    config = tmp_path / "serve.yaml"
    config.write_text("workers: 4\n")
    args = build_parser().parse_args(["serve", "--config", str(config), "--workers", "2"])
    assert _serve_config(args).workers == 2  # the flag wins over the file
    with pytest.raises(SystemExit):
        main(["serve", "--workers", "0"])
    assert "must be in 1..64, got 0 (or auto)" in capsys.readouterr().err


def test_a_stream_config_reaches_its_worker_whole(tmp_path: Path) -> None:
    """The control channel carries what the public API refuses (recording, push) and the hints exactly."""
    cfg = StreamConfig(
        id="gate",
        url="rtsp://viewer:secret@10.0.0.7/stream1",
        transport="udp",
        record=RecordConfig(tmp_path / "gate.mp4", segment_s=30.0, retain_segments=5),
        rtsp_push="rtsp://127.0.0.1:8554/gate-colour",
        hints=(Hint(0.25, 0.5, 20.0, -31.5, 0.05),),
    )
    assert from_wire(json.loads(json.dumps(to_wire(cfg)))) == cfg
    lobby = StreamConfig(id="lobby", url=str(tmp_path / "lobby.mp4"), loop=False, realtime=False)
    assert from_wire(json.loads(json.dumps(to_wire(lobby)))) == lobby


# ------------------------------------------------------------------------------- two real workers


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("workers")
    config = folder / "serve.yaml"
    streams = [{"id": f"cam{i}", "url": CAMERA} for i in (1, 2)]
    config.write_text(yaml.safe_dump({"workers": 2, "pipeline": {"detector_rate": 0}, "streams": streams}))
    with served(folder, "--config", str(config)) as server:
        yield server


def run(coro: Callable[[], Any]) -> None:
    asyncio.run(asyncio.wait_for(coro(), timeout=90))


async def streams_by_id(session: ClientSession, base: str) -> dict[str, dict[str, Any]]:
    async with session.get(f"{base}/api/streams") as r:
        assert r.status == 200
        return {s["id"]: s for s in (await r.json())["streams"]}


async def until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll the async ``condition`` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.1)


async def event_where(
    session: ClientSession, base: str, stream_id: str, predicate: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The first metadata event of ``stream_id`` read through the front that ``predicate`` accepts."""
    async with session.get(f"{base}/api/streams/{stream_id}/events") as r:
        assert r.status == 200 and r.content_type == "text/event-stream"
        async for raw in r.content:
            line = raw.decode().strip()
            if line.startswith("data:") and predicate(event := json.loads(line[5:])):
                return dict(event)
    raise AssertionError(f"the events of {stream_id} ended")


def test_two_workers_share_the_streams_and_the_front_answers_for_all(two_workers: Served) -> None:
    base = two_workers.base

    async def body() -> None:
        async with ClientSession() as session:
            for stream_id in ("cam3", "cam4"):  # added while running: each to the worker with fewest
                async with session.post(f"{base}/api/streams", json={"id": stream_id, "url": CAMERA}) as r:
                    assert r.status == 201, await r.text()
            streams = await streams_by_id(session, base)
            owners = {i: s["worker"] for i, s in streams.items()}
            assert owners == {"cam1": 0, "cam2": 1, "cam3": 0, "cam4": 1}

            first = {i: s["frames_out"] for i, s in streams.items()}

            async def all_flowing() -> bool:
                now = await streams_by_id(session, base)
                return all(now[i]["frames_out"] >= first[i] + 5 for i in first)

            await until(all_flowing, 20, "frames on every stream")

            async with session.get(f"{base}/metrics") as r:
                text = await r.text()
            for stream_id, worker in owners.items():
                line = rf'^chromastream_frames_out_total\{{stream="{stream_id}",worker="{worker}"\}} (\S+)$'
                match = re.search(line, text, re.M)
                assert match and float(match.group(1)) > 0, stream_id
            assert 'chromastream_worker_up{worker="1"} 1.0' in text
            assert 'chromastream_worker_streams{worker="0"} 2.0' in text
            assert len(re.findall(r"^# TYPE chromastream_frames_out_total ", text, re.M)) == 1

            # Hints set through the front reach the owner: its frames' metadata counts them.
            async with session.put(f"{base}/api/streams/cam4/hints", json=[RED, BLUE]) as r:
                assert r.status == 200
                assert len((await r.json())["hints"]) == 2
            event = await event_where(session, base, "cam4", lambda e: e["colorizer"]["hints"] == 2)
            assert event["stream"] == "cam4"
            async with session.post(f"{base}/api/streams/cam4/reset") as r:
                assert r.status == 200
            event = await event_where(session, base, "cam4", lambda e: e["colorizer"]["reset"] == "request")
            assert event["colorizer"]["hints"] == 2

            async with session.delete(f"{base}/api/streams/cam3") as r:
                assert r.status == 200
            assert set(await streams_by_id(session, base)) == {"cam1", "cam2", "cam4"}
            async with session.get(f"{base}/metrics") as r:
                assert 'stream="cam3"' not in await r.text()
            async with session.get(f"{base}/api/streams/cam3/hints") as r:
                assert r.status == 404

    run(body)


def test_a_viewer_gets_video_from_the_worker_that_owns_the_stream(two_workers: Served) -> None:
    base = two_workers.base

    async def body() -> None:
        async with ClientSession() as session:
            assert (await streams_by_id(session, base))["cam2"]["worker"] == 1
            async with whep(session, base, "cam2") as viewer:
                await frames_at_least(viewer, 10)
                assert (viewer.frames[-1].width, viewer.frames[-1].height) == (96, 64)
                assert {m["stream"] for m in viewer.messages} == {"cam2"}
                assert (await streams_by_id(session, base))["cam2"]["viewers"] == 1
                async with session.get(f"{base}/metrics") as r:
                    text = await r.text()
                assert 'chromastream_webrtc_viewers{stream="cam2",worker="1"} 1.0' in text
                async with session.delete(base + viewer.location) as r:
                    assert r.status == 200
                async with session.delete(base + viewer.location) as r:
                    assert r.status == 404
            async with session.post(
                f"{base}/whep/nope", data="v=0", headers={"Content-Type": "application/sdp"}
            ) as r:
                assert r.status == 404 and "nope" in (await r.json())["error"]

    run(body)


def test_a_killed_worker_comes_back_with_its_streams_and_hints_and_the_other_never_stops(
    tmp_path: Path,
) -> None:
    config = tmp_path / "serve.yaml"
    streams = [{"id": "left", "url": CAMERA}, {"id": "right", "url": CAMERA}]
    config.write_text(yaml.safe_dump({"workers": 2, "pipeline": {"detector_rate": 0}, "streams": streams}))
    with served(tmp_path, "--config", str(config)) as server:
        base = server.base
        pids = dict(re.findall(r"worker (\d+) pid (\d+)", server.stderr()))

        async def body() -> None:
            async with ClientSession() as session:
                owners = {i: s["worker"] for i, s in (await streams_by_id(session, base)).items()}
                assert owners == {"left": 0, "right": 1}
                async with session.put(f"{base}/api/streams/left/hints", json=[RED, BLUE, RED]) as r:
                    assert r.status == 200
                await event_where(session, base, "left", lambda e: e["colorizer"]["hints"] == 3)

                # The other worker's stream is watched all along: its counter must keep rising.
                samples: list[tuple[float, int]] = []

                async def watch() -> None:
                    while True:
                        now = await streams_by_id(session, base)
                        samples.append((time.monotonic(), now["right"]["frames_out"]))
                        await asyncio.sleep(0.25)

                watcher = asyncio.create_task(watch())
                try:
                    await asyncio.sleep(1.0)
                    os.kill(int(pids["0"]), signal.SIGKILL)
                    killed = time.monotonic()

                    async def restarting() -> bool:
                        return bool((await streams_by_id(session, base))["left"]["state"] == "restarting")

                    await until(restarting, 5, "the stream shown as restarting")

                    async def back() -> bool:
                        left = (await streams_by_id(session, base))["left"]
                        return left["state"] == "running" and left["frames_out"] >= 3

                    await until(back, 10 - (time.monotonic() - killed), "frames again within 10 s")
                    async with session.get(f"{base}/api/streams/left/hints") as r:
                        assert len((await r.json())["hints"]) == 3
                    event = await event_where(session, base, "left", lambda e: True)
                    assert event["colorizer"]["hints"] == 3  # the new worker colours with the same hints
                    await asyncio.sleep(1.0)
                finally:
                    watcher.cancel()
                # Rising throughout: every second of the run (kill and restart included) brought frames.
                assert samples[-1][0] - samples[0][0] > 3
                for (t0, n0), (t1, n1) in zip(samples, samples[4:], strict=False):
                    stalled = f"between {t0 - killed:+.1f} s and {t1 - killed:+.1f} s of the kill"
                    assert n1 > n0, f"the other worker's stream stalled {stalled}"
                async with session.get(f"{base}/metrics") as r:
                    text = await r.text()
                assert 'chromastream_worker_restarts_total{reason="exited",worker="0"} 1.0' in text
                assert 'chromastream_worker_restarts_total{reason="hung",worker="0"} 0.0' in text
                assert 'chromastream_worker_restarts_total{reason="exited",worker="1"} 0.0' in text

        run(body)
        assert server.stop() == 0
        log = server.stderr()
        assert re.search(rf"worker 0 \(pid {pids['0']}\) exited with status -9; restarting it", log), log
        assert "Traceback" not in log


def _our_worker(pid: int, front: int) -> bool:
    """Whether ``pid`` is still a child of the front (so a signal reaches our worker, never a process that
    took its number later)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return int(stat.rsplit(")", 1)[1].split()[1]) == front  # the fields after the name: state, ppid, ...


def test_a_hung_worker_is_killed_and_restarted_with_its_streams_and_hints_and_the_other_never_stops(
    tmp_path: Path,
) -> None:
    config = tmp_path / "serve.yaml"
    streams = [{"id": "left", "url": CAMERA}, {"id": "right", "url": CAMERA}]
    config.write_text(yaml.safe_dump({"workers": 2, "pipeline": {"detector_rate": 0}, "streams": streams}))
    with served(tmp_path, "--config", str(config)) as server:
        base = server.base
        pids = dict(re.findall(r"worker (\d+) pid (\d+)", server.stderr()))
        hung = int(pids["0"])

        async def body() -> None:
            async with ClientSession() as session:
                owners = {i: s["worker"] for i, s in (await streams_by_id(session, base)).items()}
                assert owners == {"left": 0, "right": 1}
                async with session.put(f"{base}/api/streams/left/hints", json=[RED, BLUE, RED]) as r:
                    assert r.status == 200
                await event_where(session, base, "left", lambda e: e["colorizer"]["hints"] == 3)

                samples: list[tuple[float, int]] = []

                async def watch() -> None:
                    while True:
                        now = await streams_by_id(session, base)
                        samples.append((time.monotonic(), now["right"]["frames_out"]))
                        await asyncio.sleep(0.25)

                watcher = asyncio.create_task(watch())
                try:
                    await asyncio.sleep(1.0)
                    os.kill(hung, signal.SIGSTOP)  # alive, holding its socket, answering nothing
                    stopped = time.monotonic()

                    async def restarting() -> bool:
                        return bool((await streams_by_id(session, base))["left"]["state"] == "restarting")

                    await until(restarting, 12, "the hung worker's stream shown as restarting")
                    assert time.monotonic() - stopped > 4, "a worker silent for a moment must not be killed"

                    async def back() -> bool:
                        left = (await streams_by_id(session, base))["left"]
                        return left["state"] == "running" and left["frames_out"] >= 3

                    await until(back, 15 - (time.monotonic() - stopped), "frames again within 15 s")
                    async with session.get(f"{base}/api/streams/left/hints") as r:
                        assert len((await r.json())["hints"]) == 3
                    event = await event_where(session, base, "left", lambda e: True)
                    assert event["colorizer"]["hints"] == 3
                    await asyncio.sleep(1.0)
                finally:
                    watcher.cancel()
                # While worker 0 was silent the front answered the list with its last figures for it;
                # the other worker's stream rose throughout.
                assert samples[-1][0] - samples[0][0] > 5
                for (t0, n0), (t1, n1) in zip(samples, samples[4:], strict=False):
                    stalled = f"between {t0 - stopped:+.1f} s and {t1 - stopped:+.1f} s of the stop"
                    assert n1 > n0, f"the other worker's stream stalled {stalled}"
                async with session.get(f"{base}/metrics") as r:
                    text = await r.text()
                assert 'chromastream_worker_restarts_total{reason="hung",worker="0"} 1.0' in text
                assert 'chromastream_worker_restarts_total{reason="exited",worker="0"} 0.0' in text
                assert 'chromastream_worker_restarts_total{reason="hung",worker="1"} 0.0' in text

        try:
            run(body)
        finally:
            if _our_worker(hung, server.process.pid):  # the test failed before the front killed it
                os.kill(hung, signal.SIGKILL)
        assert server.stop() == 0
        log = server.stderr()
        assert not _our_worker(hung, server.process.pid)
        line = rf"worker 0 \(pid {hung}\) hung: no answer to its health check for (\d+\.\d) s \(3 checks"
        match = re.search(line, log)
        assert match, log
        assert 4 < float(match[1]) < 10, match[0]
        assert "exited with status" not in log, log
        assert "Traceback" not in log
