"""No request can stall ``serve``, and WebRTC sessions that never connect do not hold their slots.

What an attacker with the token (or a careless client) can do, tried against the real server on
loopback: add the heaviest test pattern the API accepts and check that ``/healthz`` still answers at
once and SIGTERM still stops the process; send WHEP and WHIP offers from real aiortc peers that then go
away without ``DELETE`` and check that the viewer slots, publishers and streams come back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from aiortc import RTCSessionDescription
from prometheus_client.parser import text_string_to_metric_families
from pyee.asyncio import AsyncIOEventEmitter

from chromastream.stream.cli import SERVE_EXIT_GRACE_S
from chromastream.stream.config import ServeConfig, WebRTCConfig
from chromastream.stream.frames import Frame
from chromastream.stream.sources import SyntheticSource
from chromastream.stream.webrtc import allow_loopback_candidates, peer_connection, transport_lost
from tests.test_server import live_server, run, running, wait_for
from tests.test_webrtc import SDP, PatternTrack, frames_at_least, whep

TOKEN = "stall-token"
#: The largest and fastest test pattern ``POST /api/streams`` accepts.
HEAVIEST = "synthetic:?width=8192&height=8192&fps=1000"
#: Short session timeouts, so that the expiry tests run in seconds.
QUICK = ServeConfig(webrtc=WebRTCConfig(max_viewers=3, connect_timeout_s=2.0, disconnect_grace_s=1.0))


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called ``name`` in a /metrics page, keyed by its sorted labels."""
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


# ------------------------------------------------------------------------------------- the event loop


@pytest.mark.timeout(60)  # a source that holds the loop would keep asyncio's own timeouts from firing
def test_the_heaviest_synthetic_source_never_holds_the_event_loop() -> None:
    """An 8192x8192 pattern read as fast as it comes: a timer on the same loop still wakes on time."""

    async def main() -> tuple[list[float], int]:
        source = SyntheticSource("huge", 8192, 8192, 1000)
        frames: list[Frame] = []

        async def consume() -> None:
            async for event in source.events():
                if isinstance(event, Frame):
                    frames.append(event)

        reader = asyncio.create_task(consume())
        lags: list[float] = []
        loop = asyncio.get_running_loop()
        while len(lags) < 100 or len(frames) < 3:
            start = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - start - 0.01)
        await source.close()
        await asyncio.wait_for(reader, 5)
        assert all(f.y.shape == (8192, 8192) for f in frames)
        return sorted(lags), len(frames)

    lags, frames = asyncio.run(asyncio.wait_for(main(), 60))
    assert frames >= 3
    p99 = lags[int(0.99 * (len(lags) - 1))]
    assert p99 < 0.05, f"the loop was held up to {lags[-1]:.3f} s (p99 {p99:.3f} s)"


def test_a_blocked_event_loop_shows_in_the_lag_metric_and_the_log(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        async with running() as (client, _):
            await asyncio.sleep(0.2)  # a few undisturbed measurements first
            with caplog.at_level(logging.WARNING, logger="chromastream.stream.metrics"):
                time.sleep(0.7)  # what a step that holds the loop looks like from outside
                await asyncio.sleep(0.2)
            text = await (await client.get("/metrics")).text()
            buckets = samples(text, "chromastream_event_loop_lag_seconds_bucket")
            count = samples(text, "chromastream_event_loop_lag_seconds_count")[()]
            slow = count - buckets[(("le", "0.5"),)]
            assert slow == 1, f"{slow} measurements above 0.5 s, expected the one blocked wake-up"
            assert count >= 4
            logged = [
                re.search(r"event loop was blocked for ([0-9.]+) s", r.getMessage()) for r in caplog.records
            ]
            blocked = [float(m.group(1)) for m in logged if m is not None]
            assert len(blocked) == 1 and 0.6 <= blocked[0] < 1.5, [r.getMessage() for r in caplog.records]

    run(body)


def _serve(log: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """``serve`` in a process of its own; its log goes to ``log`` (a pipe nobody reads could fill up and
    block the server mid-test)."""
    with log.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "chromastream.stream.cli", "serve", "--port", "0", "--size", "64", *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert process.stdout is not None
    line = process.stdout.readline()  # blocks until the server is up (or the process ends)
    if "viewer at" not in line:
        process.kill()
        process.wait()
        raise AssertionError(f"serve did not start: {line!r} {log.read_text()}")
    url = line.split("viewer at", 1)[1].strip()
    return process, url.split("?", 1)[0].rstrip("/")  # the base URL, whether the token is shown or not


def _request(url: str, method: str = "GET", body: dict[str, Any] | None = None, timeout: float = 5) -> Any:
    request = urllib.request.Request(
        url,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data = response.read()
        return json.loads(data) if response.headers.get_content_type() == "application/json" else data


def test_healthz_stays_fast_under_the_heaviest_stream_and_sigterm_stops_serve(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    process, base = _serve(log, "--token", TOKEN, "--source", "synthetic:?width=64&height=48&fps=15")
    try:
        created = _request(f"{base}/api/streams", "POST", {"id": "huge", "url": HEAVIEST})
        assert created["id"] == "huge"

        def huge() -> dict[str, Any]:
            info: dict[str, Any] = _request(f"{base}/api/streams/huge")
            return info

        deadline = time.monotonic() + 90
        while huge()["frames_out"] < 1:  # 8192x8192 frames in every stage: render, colorize, convert
            assert time.monotonic() < deadline, f"the huge stream produced no output: {huge()}"
            time.sleep(0.5)
        frames_before = huge()["frames_in"]
        times = []
        for _ in range(50):
            started = time.perf_counter()
            with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:
                assert json.load(response) == {"ok": True, "streams": 2}
            times.append(time.perf_counter() - started)
            time.sleep(0.02)
        times.sort()
        p99 = times[int(0.99 * (len(times) - 1))]
        print(
            f"/healthz p50 {times[25] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {times[-1] * 1000:.1f} ms"
        )
        assert p99 < 0.1, f"/healthz p99 {p99 * 1000:.0f} ms (slowest {times[-1] * 1000:.0f} ms)"
        assert huge()["frames_in"] > frames_before  # the huge stream kept going meanwhile
        metrics = _request(f"{base}/metrics").decode()
        assert samples(metrics, "chromastream_event_loop_lag_seconds_count")[()] > 0

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=SERVE_EXIT_GRACE_S + 10)
        stopped_in = time.monotonic() - started
        err = log.read_text()
        assert status == 0, err
        assert stopped_in < SERVE_EXIT_GRACE_S, f"SIGTERM took {stopped_in:.1f} s"
        assert "Traceback" not in err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_process_that_cannot_finish_its_shutdown_is_ended_after_the_grace_period() -> None:
    """What ``serve`` arms on SIGTERM, in a process whose main thread never returns: it still ends, with
    a message and an error status, and a second signal ends it at once."""
    hang = (
        "import sys, threading\n"
        "from chromastream.stream.cli import _ExitDeadline\n"
        "deadline = _ExitDeadline(0.5)\n"
        "deadline.arm('SIGTERM')\n"
        "if sys.argv[1] == 'twice':\n"
        "    deadline.arm('SIGTERM')\n"
        "threading.Event().wait()\n"
    )
    for mode, at_least, at_most in (("once", 0.5, 10.0), ("twice", 0.0, 0.5)):
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", hang, mode], capture_output=True, text=True, timeout=30, check=False
        )
        elapsed = time.monotonic() - started
        assert done.returncode == 1, done
        if mode == "once":
            assert "shutdown did not finish within 0.5 s" in done.stderr
        else:
            assert "SIGTERM again: stopped without finishing the shutdown" in done.stderr
        # (the interpreter's own start-up is not timed by the deadline, hence the margin)
        assert at_least <= elapsed < at_most + 5.0, (mode, elapsed)


# --------------------------------------------------------------------------------- WebRTC sessions


async def _abandoned_offer(session: ClientSession, url: str, track: Any = None) -> int:
    """Post a real aiortc peer's offer, then close that peer without ``DELETE``: the server hears no more
    from it (no ICE checks, no DTLS). Returns the answer's status."""
    allow_loopback_candidates()
    pc = peer_connection()
    if track is None:
        pc.addTransceiver("video", direction="recvonly")
    else:
        pc.addTransceiver(track, direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    try:
        async with session.post(url, data=pc.localDescription.sdp, headers=SDP) as r:
            return r.status
    finally:
        await pc.close()


def test_abandoned_whep_offers_expire_and_a_new_viewer_gets_in() -> None:
    async def body() -> None:
        async with live_server(QUICK) as (base, _), ClientSession() as session:

            async def viewers() -> int:
                async with session.get(f"{base}/api/streams/cam1") as r:
                    return int((await r.json())["viewers"])

            statuses = [await _abandoned_offer(session, f"{base}/whep/cam1") for _ in range(6)]
            assert statuses == [201, 201, 201, 503, 503, 503]  # the flood took every slot
            assert await viewers() == 3

            async def freed() -> bool:
                return await viewers() == 0

            started = time.monotonic()
            await wait_for(freed, 30)
            assert time.monotonic() - started < 10  # about connect_timeout_s (2 s), not aiortc's 30 s

            text = await (await session.get(f"{base}/metrics")).text()
            kind = ("kind", "whep")
            assert samples(text, "chromastream_webrtc_sessions_opened_total")[(kind,)] == 3
            expired = samples(text, "chromastream_webrtc_sessions_expired_total")
            assert expired == {(kind, ("reason", "connect_timeout")): 3}
            closed = samples(text, "chromastream_webrtc_sessions_closed_total")
            assert closed == {(kind, ("reason", "connect_timeout")): 3}

            # A real viewer gets in, and one that connects is never expired by the connect timeout.
            async with whep(session, base, "cam1") as viewer:
                await frames_at_least(viewer, 3)
                await asyncio.sleep(3.0)  # past connect_timeout_s
                seen = len(viewer.frames)
                await frames_at_least(viewer, seen + 5)
                assert await viewers() == 1
                async with session.delete(base + viewer.location) as r:
                    assert r.status == 200
            # One that hangs up without DELETE (its peer closes the connection) is closed at once too.
            async with whep(session, base, "cam1") as viewer:
                await frames_at_least(viewer, 3)
            await wait_for(freed, 10)
            text = await (await session.get(f"{base}/metrics")).text()
            closed = samples(text, "chromastream_webrtc_sessions_closed_total")
            assert closed[(kind, ("reason", "client"))] == 1
            assert closed[(kind, ("reason", "closed"))] == 1

    run(body)


def test_abandoned_whip_offers_leave_no_publisher_and_no_stream() -> None:
    async def body() -> None:
        async with live_server(QUICK, streams=()) as (base, _), ClientSession() as session:

            async def state() -> tuple[float, list[str]]:
                text = await (await session.get(f"{base}/metrics")).text()
                publishers = samples(text, "chromastream_webrtc_publishers")[()]
                async with session.get(f"{base}/api/streams") as r:
                    streams = [s["id"] for s in (await r.json())["streams"]]
                return publishers, sorted(streams)

            for i in range(4):
                assert await _abandoned_offer(session, f"{base}/whip/pub{i}", PatternTrack()) == 201
            assert await state() == (4, ["pub0", "pub1", "pub2", "pub3"])

            async def gone() -> bool:
                return await state() == (0, [])

            await wait_for(gone, 30)
            text = await (await session.get(f"{base}/metrics")).text()
            expired = samples(text, "chromastream_webrtc_sessions_expired_total")
            assert expired == {(("kind", "whip"), ("reason", "connect_timeout")): 4}
            # The names are free again: a new publisher may take one.
            assert await _abandoned_offer(session, f"{base}/whip/pub0", PatternTrack()) == 201

    run(body)


def test_a_connected_publisher_outlives_the_connect_timeout() -> None:
    async def body() -> None:
        async with live_server(QUICK, streams=()) as (base, pipeline), ClientSession() as session:
            allow_loopback_candidates()
            pc = peer_connection()
            pc.addTransceiver(PatternTrack(), direction="sendonly")
            await pc.setLocalDescription(await pc.createOffer())
            try:
                async with session.post(f"{base}/whip/live", data=pc.localDescription.sdp, headers=SDP) as r:
                    assert r.status == 201
                    answer = await r.text()
                await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
                await asyncio.sleep(3.0)  # past connect_timeout_s
                first = pipeline.info("live").frames_in
                await asyncio.sleep(1.0)
                assert pipeline.info("live").frames_in > first  # still publishing, still a stream
                text = await (await session.get(f"{base}/metrics")).text()
                assert samples(text, "chromastream_webrtc_publishers")[()] == 1
                opened = samples(text, "chromastream_webrtc_sessions_opened_total")
                assert opened == {(("kind", "whep"),): 0, (("kind", "whip"),): 1}
                assert samples(text, "chromastream_webrtc_sessions_expired_total") == {}
            finally:
                await pc.close()

    run(body)


class StandInPeer(AsyncIOEventEmitter):
    """Only what :func:`transport_lost` reads of a peer connection: its state and the change event.
    aiortc never reports a state between ``connected`` and ``failed``; this one can, to check the grace."""

    def __init__(self) -> None:
        super().__init__()
        self.connectionState = "connecting"

    def becomes(self, state: str) -> None:
        self.connectionState = state
        self.emit("connectionstatechange")


def test_a_session_that_leaves_connected_gets_the_grace_period_and_no_more() -> None:
    async def main() -> None:
        peer: Any = StandInPeer()
        watch = asyncio.create_task(transport_lost(peer, connect_timeout=0.3, disconnect_grace=0.4))
        await asyncio.sleep(0.1)
        peer.becomes("connected")
        await asyncio.sleep(0.5)  # past the connect timeout: connected sessions are not timed
        assert not watch.done()
        peer.becomes("connecting")
        await asyncio.sleep(0.2)
        peer.becomes("connected")  # back within the grace period
        await asyncio.sleep(0.5)
        assert not watch.done()
        peer.becomes("connecting")
        started = time.monotonic()
        assert await asyncio.wait_for(watch, 2) == "disconnected"
        assert 0.35 <= time.monotonic() - started < 1.0

        never: Any = StandInPeer()
        assert await asyncio.wait_for(transport_lost(never, 0.3, 5.0), 2) == "connect_timeout"
        failing: Any = StandInPeer()
        watch = asyncio.create_task(transport_lost(failing, 5.0, 5.0))
        await asyncio.sleep(0.05)
        failing.becomes("failed")
        assert await asyncio.wait_for(watch, 1) == "failed"
        assert not failing.listeners("connectionstatechange")  # nothing left behind on the peer

    asyncio.run(main())
