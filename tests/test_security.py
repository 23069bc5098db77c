"""What a careless client or an attacker on the server's own machine can make the server do, against the
real server (aiohttp's test client, or ``chromastream serve`` itself on 127.0.0.1).

Each test names what a user or operator would notice: the answer to a request (status, body, headers,
cookie), what the log shows, what the metrics count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient

from chromastream.stream.config import (
    HttpConfig,
    LimitsConfig,
    ServeConfig,
    SourcesConfig,
    StreamConfig,
)
from chromastream.stream.http_guard import json_too_deep
from chromastream.stream.source_policy import REFUSED
from chromastream.stream.sources import Backoff, RtspSource
from chromastream.stream.webrtc import allow_loopback_candidates, peer_connection
from tests import test_browser
from tests.conftest import ClipSpec, make_clip
from tests.rtsp_fixtures import RtspServer, free_port
from tests.test_browser import ServerThread, poll
from tests.test_server import TOKEN, live_server, make_pipeline, run, running, wait_for
from tests.test_webrtc import SDP, PatternTrack, whep

REPO = Path(__file__).resolve().parents[1]
chromium = test_browser.browser  # the headless Chromium fixture of the browser tests, as ``chromium``


async def post_stream(client: TestClient[Any, Any], stream_id: str, url: str) -> tuple[int, Any]:
    response = await client.post("/api/streams", json={"id": stream_id, "url": url})
    return response.status, await response.json()


# ------------------------------------------------------------------------------------ source policy


def test_files_outside_the_allowed_folders_get_one_answer_that_reveals_nothing(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    outside_clip = make_clip(tmp_path / "secret.mp4")
    (allowed / "escape.mp4").symlink_to(outside_clip)
    attempts = [
        "/etc/passwd",
        "file:///etc/passwd",
        "/proc/self/environ",
        str(outside_clip),  # a real video outside the allowed folder: it would be streamed back
        str(tmp_path / "missing.mp4"),  # and one that does not exist: the answer must be the same
        f"{allowed}/../secret.mp4",
        f"file://{allowed}/../secret.mp4",
        str(allowed / "escape.mp4"),  # a symlink inside that leads outside
        "concat:/etc/passwd|/etc/hostname",  # FFmpeg protocols in front of a path
    ]

    async def body() -> None:
        config = ServeConfig(sources=SourcesConfig(folders=(allowed,)))
        async with running(config, streams=()) as (client, pipeline):
            answers = [await post_stream(client, f"s{i}", url) for i, url in enumerate(attempts)]
            assert pipeline.streams() == []
        assert {status for status, _ in answers} == {403}, answers
        assert {repr(data) for _, data in answers} == {repr({"error": REFUSED})}

    run(body)


def test_no_file_at_all_by_default() -> None:
    async def body() -> None:
        async with running(streams=()) as (client, _):
            existing = str(REPO / "stream" / "assets" / "demo_cctv.mp4")
            assert await post_stream(client, "demo", existing) == (403, {"error": REFUSED})

    run(body)


def test_a_video_in_an_allowed_folder_plays(tmp_path: Path) -> None:
    allowed = tmp_path / "videos"
    allowed.mkdir()
    make_clip(allowed / "lobby.mp4", ClipSpec(frames=24))

    async def body() -> None:
        config = ServeConfig(sources=SourcesConfig(folders=(allowed,)))
        async with running(config, streams=()) as (client, pipeline):
            status, data = await post_stream(client, "lobby", str(allowed / "lobby.mp4"))
            assert status == 201, data
            # Inside an allowed folder the usual answers apply (a missing file is named as such).
            status, data = await post_stream(client, "gone", str(allowed / "gone.mp4"))
            assert status == 400 and "not found" in data["error"], data

            async def colorized() -> bool:
                return bool(pipeline.info("lobby").frames_out >= 5)

            await wait_for(colorized)

    run(body)


@pytest.mark.parametrize(
    "url",
    [
        "rtsp://169.254.169.254/x",  # the cloud metadata service
        "rtsp://user:pw@169.254.169.254:554/latest/meta-data",
        "rtsp://[fe80::1]/x",
        "rtsp://[::ffff:169.254.169.254]/x",  # the same address, IPv4-mapped
        "rtsp://2852039166/x",  # the same address as one number: resolved, then refused
        "rtsp://metadata.google.internal/x",
        "http://127.0.0.1:8080/x",  # a scheme the server does not take from the API
    ],
)
def test_metadata_and_link_local_addresses_are_refused(url: str) -> None:
    async def body() -> None:
        async with running(streams=()) as (client, pipeline):
            assert await post_stream(client, "meta", url) == (403, {"error": REFUSED})
            assert pipeline.streams() == []

    run(body)


def test_listed_networks_and_schemes_are_all_that_is_allowed(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens: the stream is accepted and then retries in the background

    async def body() -> None:
        config = ServeConfig(sources=SourcesConfig(schemes=("rtsp",), hosts=("127.0.0.0/8",)))
        async with running(config, streams=()) as (client, _):
            assert (await post_stream(client, "local", f"rtsp://127.0.0.1:{port}/x"))[0] == 201
            assert (await post_stream(client, "lan", "rtsp://192.168.1.20/x"))[0] == 403
            assert (await post_stream(client, "test", "synthetic:"))[0] == 403
            whip = await client.post("/whip/pub", data="v=0", headers=SDP)
            assert whip.status == 403 and (await whip.json())["error"] == REFUSED

    with caplog.at_level(logging.INFO, logger="chromastream"):
        run(body)
    # The operator learns why from the log, the caller does not.
    assert "192.168.1.20 is not allowed by sources.hosts" in caplog.text
    assert "scheme synthetic: not among sources.schemes" in caplog.text


# ------------------------------------------------------------------------------------------ limits


def test_stream_limit_answers_503_naming_the_limit() -> None:
    async def body() -> None:
        async with running(ServeConfig(limits=LimitsConfig(streams=2))) as (client, pipeline):
            assert (await post_stream(client, "cam2", "synthetic:"))[0] == 201
            response = await client.post("/api/streams", json={"id": "cam3", "url": "synthetic:"})
            assert response.status == 503
            assert "limits.streams" in (await response.json())["error"]
            assert response.headers["Retry-After"].isdigit()
            assert len(pipeline.streams()) == 2

    run(body)


def test_event_clients_are_limited_per_stream_and_in_all() -> None:
    async def body() -> None:
        config = ServeConfig(limits=LimitsConfig(sse_clients=2, sse_per_stream=1))
        async with running(config, streams=("cam1", "cam2")) as (client, _):
            first = await client.get("/api/streams/cam1/events")
            assert first.status == 200
            same_stream = await client.get("/api/streams/cam1/events")
            assert same_stream.status == 503
            assert "limits.sse_per_stream" in (await same_stream.json())["error"]
            second = await client.get("/api/streams/cam2/events")
            assert second.status == 200
            third = await client.get("/api/streams/cam2/events")
            assert third.status == 503
            assert "limits.sse_clients" in (await third.json())["error"]
            first.close()

            async def freed() -> bool:
                response = await client.get("/api/streams/cam1/events")
                ok = response.status == 200
                response.close()
                return ok

            await wait_for(freed)  # a client that leaves gives its place back
            second.close()

    run(body)


def test_publishers_and_viewers_in_all_are_limited() -> None:
    async def body() -> None:
        config = ServeConfig(limits=LimitsConfig(publishers=1, viewers=1))
        async with live_server(config, streams=("cam1", "cam2")) as (base, _), ClientSession() as session:
            allow_loopback_candidates()
            publisher = peer_connection()
            publisher.addTransceiver(PatternTrack(), direction="sendonly")
            await publisher.setLocalDescription(await publisher.createOffer())
            offer = publisher.localDescription.sdp
            try:
                async with session.post(f"{base}/whip/pub1", data=offer, headers=SDP) as r:
                    assert r.status == 201, await r.text()
                async with session.post(f"{base}/whip/pub2", data=offer, headers=SDP) as r:
                    assert r.status == 503
                    assert "limits.publishers" in (await r.json())["error"]
                async with whep(session, base, "cam1"):
                    viewer = peer_connection()
                    viewer.addTransceiver("video", direction="recvonly")
                    await viewer.setLocalDescription(await viewer.createOffer())
                    async with session.post(
                        f"{base}/whep/cam2", data=viewer.localDescription.sdp, headers=SDP
                    ) as r:
                        assert r.status == 503
                        assert "limits.viewers" in (await r.json())["error"]
                    await viewer.close()
            finally:
                await publisher.close()

    run(body)


def test_request_rate_per_address_gets_429_with_retry_after() -> None:
    async def body() -> None:
        config = ServeConfig(limits=LimitsConfig(requests_per_s=0.5, request_burst=3))
        async with running(config) as (client, _):
            statuses = [(await client.get("/api/streams")).status for _ in range(3)]
            assert statuses == [200, 200, 200]
            limited = await client.get("/api/streams")
            assert limited.status == 429
            assert "limits.requests_per_s" in (await limited.json())["error"]
            assert int(limited.headers["Retry-After"]) >= 1
            # Probes and the page's files are not counted.
            assert (await client.get("/healthz")).status == 200
            assert (await client.get("/web/app.js")).status == 200

    run(body)


# --------------------------------------------------------------------------------------- requests


def test_deeply_nested_json_is_a_400_not_a_500() -> None:
    deep = "[" * 30_000 + "]" * 30_000

    async def body() -> None:
        async with running() as (client, _):
            for path in ("/api/streams", "/api/streams/cam1/hints"):
                response = await client.post(path, data=deep, headers={"Content-Type": "application/json"})
                assert response.status == 400, path
                assert "nested too deeply" in (await response.json())["error"]
            # Brackets inside a string are text, not nesting.
            url = "synthetic:?pattern=" + "[" * 100
            response = await client.post("/api/streams", json={"id": "cam9", "url": url})
            assert response.status == 400
            assert "nested" not in (await response.json())["error"]

    run(body)
    assert json_too_deep("[" * 33 + "]" * 33) and not json_too_deep("[" * 32 + "]" * 32)


def test_page_api_and_errors_carry_the_security_headers() -> None:
    async def body() -> None:
        async with running() as (client, _):
            for path in ("/", "/api/streams", "/web/app.js", "/no/such/page"):
                response = await client.get(path)
                headers = response.headers
                csp = headers["Content-Security-Policy"]
                assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
                assert headers["X-Frame-Options"] == "DENY", path
                assert headers["X-Content-Type-Options"] == "nosniff", path
                assert headers["Referrer-Policy"] == "no-referrer", path
                assert headers["Server"] == "chromastream", path  # no aiohttp or Python version

    run(body)


def test_the_page_has_no_inline_code_the_policy_would_block() -> None:
    page = (REPO / "stream" / "web" / "index.html").read_text()
    assert "<style" not in page and not re.search(r"\sstyle=", page)
    assert not re.search(r"\son[a-z]+=", page)  # no inline event handlers
    assert all('src="' in tag for tag in re.findall(r"<script[^>]*>", page))


# ---------------------------------------------------------------------------------- token, cookie


def test_the_cookie_is_a_session_value_not_the_token() -> None:
    async def body() -> None:
        async with running(ServeConfig(token=TOKEN)) as (client, _):
            opened = await client.get(f"/?token={TOKEN}", allow_redirects=False)
            assert opened.status == 303 and opened.headers["Location"] == "/"  # the token leaves the URL
            set_cookie = opened.headers["Set-Cookie"]
            assert TOKEN not in set_cookie
            assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
            assert "Secure" not in set_cookie  # plain HTTP: a Secure cookie would never come back
            # The cookie reads, and changes only from the server's own page.
            assert (await client.get("/api/streams")).status == 200
            assert (await client.post("/api/streams/cam1/reset")).status == 401
            origin = f"http://{client.host}:{client.port}"
            reset = await client.post("/api/streams/cam1/reset", headers={"Origin": origin})
            assert reset.status == 200
            behind_tls = await client.get(
                f"/?token={TOKEN}", allow_redirects=False, headers={"X-Forwarded-Proto": "https"}
            )
            assert "Secure" in behind_tls.headers["Set-Cookie"]
        async with running(ServeConfig(token=TOKEN)) as (client, _):
            client.session.cookie_jar.update_cookies({"chromastream_session": TOKEN})
            assert (await client.get("/api/streams")).status == 401  # the raw token is no cookie

    run(body)


def test_the_page_keeps_no_token_in_the_browser() -> None:
    script = (REPO / "stream" / "web" / "app.js").read_text()
    assert "localStorage.setItem" not in script and "sessionStorage" not in script
    assert "Authorization" not in script


def test_the_page_opened_once_with_the_token_works_on_its_cookie_alone(chromium: Any) -> None:
    from selenium.webdriver.common.by import By

    with ServerThread(ServeConfig(token=TOKEN)) as base:
        chromium.get(f"{base}/?token={TOKEN}")
        poll(lambda: chromium.current_url == f"{base}/", what="the token left the address bar")

        def js(expr: str) -> Any:
            return chromium.execute_script(f"return {expr}")

        def frames_decoded() -> int:
            return int(
                chromium.execute_async_script(
                    "const done = arguments[arguments.length - 1];"
                    "window.chromastream.framesDecoded('cam1').then(done, () => done(0));"
                )
            )

        poll(lambda: "cam1" in (js("window.chromastream.streams()") or []), what="stream listed")
        poll(lambda: frames_decoded() > 3, what="video over WHEP")
        form = chromium.find_element(By.ID, "add-stream")
        form.find_element(By.NAME, "id").send_keys("cam5")
        form.find_element(By.NAME, "url").send_keys("synthetic:")
        form.find_element(By.TAG_NAME, "button").click()  # a POST on the cookie, from the page's origin
        poll(lambda: "cam5" in (js("window.chromastream.streams()") or []), what="stream added")
        assert js("localStorage.getItem('chromastream.token')") is None
        assert js("document.cookie") == ""  # HttpOnly: no script on the page can read the session
        assert TOKEN not in js("document.documentElement.outerHTML")


def test_changes_from_another_origin_or_host_are_refused() -> None:
    async def body() -> None:
        config = ServeConfig(http=HttpConfig(allowed_hosts=("cams.example.org",)))
        async with running(config) as (client, _):
            here = f"{client.host}:{client.port}"

            async def reset(**headers: str) -> int:
                return (await client.post("/api/streams/cam1/reset", headers=headers)).status

            assert await reset(Origin="http://evil.example") == 403
            assert await reset(Origin=f"http://localhost:{client.port + 1}") == 403  # another local page
            assert await reset(Host="rebound.evil.example:8080") == 403  # DNS rebinding
            response = await client.delete("/api/streams/cam1", headers={"Host": "evil.example"})
            assert response.status == 403 and "http.allowed_hosts" in (await response.json())["error"]
            assert await reset() == 200  # API clients send no Origin
            assert await reset(Origin=f"http://{here}") == 200
            assert await reset(Host=f"localhost:{client.port}") == 200
            assert await reset(Host="cams.example.org", Origin="https://cams.example.org") == 200
            # Reads are not changes: the page may be fetched under any name.
            assert (await client.get("/api/streams", headers={"Host": "evil.example"})).status == 200

    run(body)


SERVE_ARGS = ("--source", "synthetic:", "--token", TOKEN)


def test_serve_logs_neither_the_token_nor_a_traceback_for_a_malformed_request() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chromastream.stream.cli",
            "serve",
            "--port",
            "0",
            "--size",
            "64",
            *SERVE_ARGS,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # the server is up once it prints the viewer's address
        assert "viewer at http://127.0.0.1:" in line, line
        port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
            assert connection.recv(100).startswith(b"HTTP/1.0 400")
        time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    everything = line + out + err
    assert TOKEN not in everything
    assert "?token=TOKEN" in err and "--token" in err  # where to find the token instead
    assert "Traceback" not in err
    assert "malformed HTTP request (400 Invalid character in Content-Length" in err


# ------------------------------------------------------------------------------------------- logs


def test_a_dead_stream_logs_once_while_it_retries_and_metrics_count_the_attempts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"rtsp://127.0.0.1:{free_port()}/live"  # nothing listens there

    async def body() -> str:
        pipeline = make_pipeline()
        await pipeline.start()
        try:
            source = RtspSource("dead", url, backoff=Backoff(initial=0.02, maximum=0.05))
            await pipeline.add_stream(StreamConfig(id="dead", url=url), source)
            await asyncio.sleep(2.0)
            assert source.stats.connect_attempts >= 15  # it really retried many times
            async with running_app(pipeline) as client:
                return await (await client.get("/metrics")).text()
        finally:
            await pipeline.stop()

    with caplog.at_level(logging.INFO, logger="chromastream"):
        text = run_value(body())
    lines = [r.getMessage() for r in caplog.records if "dead" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "Connection refused" in lines[0] and "reconnect attempt 1 " in lines[0]
    match = re.search(r'^chromastream_connect_attempts_total\{stream="dead"\} (\S+)$', text, re.M)
    assert match is not None and float(match.group(1)) >= 15


def test_a_file_that_cannot_be_read_is_one_line_without_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    allowed = tmp_path / "videos"
    allowed.mkdir()
    (allowed / "notes.mp4").write_text("not a video\n")

    async def body() -> None:
        config = ServeConfig(sources=SourcesConfig(folders=(allowed,)))
        async with running(config, streams=()) as (client, pipeline):
            assert (await post_stream(client, "notes", str(allowed / "notes.mp4")))[0] == 201

            async def failed() -> bool:
                return bool(pipeline.info("notes").state == "failed")

            await wait_for(failed)

    with caplog.at_level(logging.INFO, logger="chromastream"):
        run(body)
    failures = [r for r in caplog.records if "notes" in r.getMessage() and r.levelno >= logging.WARNING]
    assert len(failures) == 1 and "cannot read video" in failures[0].getMessage()
    assert all(r.exc_info is None for r in caplog.records)
    assert "Traceback" not in caplog.text


@pytest.mark.integration
def test_the_reported_down_time_is_the_time_since_the_last_frame(
    rtsp_server: RtspServer, caplog: pytest.LogCaptureFixture
) -> None:
    held_s = 4.0
    source = RtspSource(
        "cam", rtsp_server.play_url, stall_timeout=1.5, backoff=Backoff(initial=0.1, maximum=0.3)
    )

    async def body() -> None:
        frames = 0

        async def consume() -> None:
            nonlocal frames
            async for _ in source.events():
                frames += 1

        task = asyncio.create_task(consume())
        try:
            await wait_for(_at_least(lambda: frames, 10), 15)
            await asyncio.to_thread(rtsp_server.hold)
            await asyncio.sleep(held_s)
            await asyncio.to_thread(rtsp_server.resume)
            await wait_for(_at_least(lambda: source.stats.reconnects, 1), 15)
        finally:
            await source.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    with caplog.at_level(logging.INFO, logger="chromastream.stream.sources"):
        run(body)
    line = next(r.getMessage() for r in caplog.records if "reconnected" in r.getMessage())
    match = re.search(r"down (\d+\.\d) s", line)
    assert match is not None, line
    assert float(match.group(1)) >= held_s - 0.5, line  # not "down 2.5 s" counted from the stall verdict


# ---------------------------------------------------------------------------------------- helpers


def _at_least(value: Any, n: int) -> Any:
    async def check() -> bool:
        return bool(value() >= n)

    return check


@contextlib.asynccontextmanager
async def running_app(pipeline: Any) -> AsyncIterator[TestClient[Any, Any]]:
    from aiohttp.test_utils import TestServer

    from chromastream.stream.server import create_app

    async with TestClient(TestServer(create_app(pipeline))) as client:
        yield client


def run_value(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, timeout=60))
