"""A bounded fuzz run against the real ``serve`` process: random and malformed requests on every route.

The server runs as a user starts it (``python -m chromastream.stream.cli serve``) on 127.0.0.1 with one
synthetic stream. A few hundred requests follow, some well-formed with random content, some broken at the
HTTP level (garbage request lines, lying Content-Length, cut-off bodies) on raw sockets. Afterwards the
process must still be alive, no answer may have been a 5xx, ``/healthz`` must say ok, the stream must
still produce frames, and the server's log must hold no traceback.

The run is bounded in requests and in time, and sends only to the server it started. It is reproducible
from its seed (``CHROMASTREAM_FUZZ_SEED``); ``CHROMASTREAM_FUZZ=long`` sends many more requests, with a
fresh seed that the test prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import string
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import yaml

from tests.fuzzing import LONG, SDP_LINES, WHEP_OFFER, WHIP_OFFER, edit_sdp, unlimited_requests

REQUESTS = 2000 if LONG else 300
SECONDS = 600.0 if LONG else 90.0
SEED = int(os.environ.get("CHROMASTREAM_FUZZ_SEED", random.randrange(2**32) if LONG else 20240607))
STREAM_URL = "synthetic:?width=96&height=64&fps=12"

pytestmark = pytest.mark.integration


@dataclass
class Server:
    process: subprocess.Popen[str]
    base: str
    log: Path


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    log = tmp_path / "serve.log"
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(unlimited_requests()), encoding="utf-8")
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chromastream.stream.cli",
                "serve",
                "--config",
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--size",
                "64",
                "--detector-rate",
                "0",
                "--source",
                STREAM_URL,
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # the viewer URL, once the server listens
        assert "viewer at" in line, f"serve did not start: {line!r} {log.read_text()}"
        base = line.split("viewer at", 1)[1].strip().rstrip("/")
        yield Server(process, base, log)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# ----------------------------------------------------------------------------------- random requests


def _text(rng: random.Random, size: int = 12) -> str:
    alphabet = rng.choice(
        [string.ascii_letters + string.digits + "_-", string.printable, "äöü€😀\x00\u2028/%."]
    )
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(size + 1)))


def _json_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, 1, -1, 255, 256, 10**400, rng.randrange(-(10**6), 10**6)])
    if kind == 3:
        return rng.choice([0.5, -0.0, 1e308, float("nan"), float("inf"), rng.uniform(-2, 2)])
    if kind in (4, 5):
        return _text(rng)
    if kind in (6, 7):
        keys = ["x", "y", "a", "b", "rgb", "radius", "hints", "id", "url", "loop", "transport", "record"]
        return {
            rng.choice(keys) if rng.random() < 0.7 else _text(rng, 6): _json_value(rng, depth + 1)
            for _ in range(rng.randrange(6))
        }
    return [_json_value(rng, depth + 1) for _ in range(rng.randrange(5))]


def _hint(rng: random.Random) -> dict[str, Any]:
    hint: dict[str, Any] = {"x": rng.random(), "y": rng.random()}
    if rng.random() < 0.5:
        hint["rgb"] = f"#{rng.randrange(2**24):06x}"
    else:
        hint["a"], hint["b"] = rng.uniform(-128, 128), rng.uniform(-128, 128)
    return hint


def _stream_body(rng: random.Random) -> Any:
    urls = [
        "synthetic:?width=32&height=32&fps=5",
        f"synthetic:?width={rng.randrange(-2, 300)}&fps={rng.choice(['0', '1e-9', 'nan', '5', 'x'])}",
        "synthetic:?pattern=nope",
        "file:///no/such/clip.mp4",
        "",
        _text(rng, 20).lstrip(),
    ]
    url = rng.choice(urls)
    if url.partition(":")[0].strip().lower() in ("rtsp", "rtsps"):
        url = "synthetic:"  # nothing that would connect out
    body: dict[str, Any] = {"id": rng.choice(["fz1", "fz2", "cam1", _text(rng, 8)]), "url": url}
    if rng.random() < 0.3:
        body["hints"] = [_hint(rng) for _ in range(rng.randrange(3))]
    if rng.random() < 0.2:
        body[rng.choice(["loop", "realtime", "transport", "record", "rtsp_push", _text(rng, 5)])] = (
            _json_value(rng)
        )
    return body


def _offer(rng: random.Random) -> str:
    edits: list[tuple[Any, ...]] = []
    for _ in range(rng.randrange(4)):
        op = rng.choice(["delete", "duplicate", "insert", "replace", "cut", "swap"])
        line = rng.choice(SDP_LINES) if rng.random() < 0.7 else _text(rng, 30)
        second = {"insert": line, "replace": line, "cut": rng.randrange(30), "swap": rng.randrange(200)}
        edits.append((op, rng.randrange(200), *([second[op]] if op in second else [])))
    return edit_sdp(rng.choice([WHEP_OFFER, WHIP_OFFER]), edits, rng.choice(["\r\n", "\n"]))


@dataclass
class Request:
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


def random_request(rng: random.Random) -> Request:
    """One request: usually a real route with a plausible body, sometimes anything at all."""
    stream = rng.choice(["cam1", "cam1", "nope", "fz1", quote(_text(rng, 10), safe="")]) or "x"
    json_type = {"Content-Type": "application/json"}
    sdp_type = {"Content-Type": "application/sdp"}
    choice = rng.randrange(14)
    if choice == 0:
        return Request("GET", rng.choice(["/", "/healthz", "/metrics", "/api/streams", "/web/app.js"]))
    if choice == 1:
        return Request("GET", f"/api/streams/{stream}")
    if choice == 2:
        return Request("POST", "/api/streams", json.dumps(_stream_body(rng)).encode(), json_type)
    if choice == 3:
        return Request("POST", "/api/streams", json.dumps(_json_value(rng)).encode(), json_type)
    if choice == 4:
        hints: Any = [_hint(rng) for _ in range(rng.randrange(4))] if rng.random() < 0.6 else _json_value(rng)
        method = rng.choice(["POST", "PUT", "DELETE", "GET"])
        return Request(method, f"/api/streams/{stream}/hints", json.dumps(hints).encode(), json_type)
    if choice == 5:
        return Request("POST", f"/api/streams/{stream}/reset")
    if choice == 6:
        return Request("GET", f"/api/streams/{stream}/events")
    if choice in (7, 8):
        return Request("POST", f"/whep/{stream}", _offer(rng).encode(), sdp_type)
    if choice == 9:
        return Request("POST", f"/whip/{rng.choice(['pub1', stream])}", _offer(rng).encode(), sdp_type)
    if choice == 10:
        route = rng.choice(["whep", "whip"])
        return Request("DELETE", f"/{route}/{stream}/{rng.choice(['0123', _text(rng, 32)]) or 'x'}")
    if choice == 11:
        return Request("DELETE", f"/api/streams/{rng.choice(['fz1', 'fz2', 'nope'])}")
    # Anything: any method, any path, any bytes, any content type.
    method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
    path = "/" + quote(_text(rng, 40), safe="/?=&%").lstrip("/")
    body = bytes(rng.randrange(256) for _ in range(rng.randrange(200))) if rng.random() < 0.5 else None
    content_type = rng.choice(
        ["application/json", "application/sdp", "text/plain", "application/x-www-form-urlencoded"]
    )
    return Request(method, path, body, {"Content-Type": content_type})


def malformed_http(rng: random.Random, host: str) -> bytes:
    """Bytes that are not a valid HTTP request, in the ways a broken client or a scanner sends them."""
    choice = rng.randrange(8)
    if choice == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    if choice == 1:
        return b"GET /" + _text(rng, 20).encode() + b" HTTP/9.9\r\nHost: " + host.encode() + b"\r\n\r\n"
    if choice == 2:  # a body longer than it says, then pipelined junk
        return (
            b"POST /api/streams HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5\r\n\r\n"
            b'{"id": "fz1", "url": "synthetic:"}GARBAGE'
        )
    if choice == 3:  # a body shorter than it says: the server waits, the client gives up
        return (
            b"POST /api/streams/cam1/hints HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 900\r\n\r\n[{"
        )
    if choice == 4:
        return (
            b"GET /healthz HTTP/1.1\r\n" + b"X-Junk: " + b"a" * rng.choice([100, 9000, 20000]) + b"\r\n\r\n"
        )
    if choice == 5:
        return (
            b"POST /whep/cam1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/sdp\r\n\r\nzz\r\n"
        )
    if choice == 6:
        return b"GET /api/streams HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"
    return (
        b"\r\n".join(_text(rng, 30).encode("utf-8", "surrogatepass") for _ in range(rng.randrange(1, 6)))
        + b"\r\n\r\n"
    )


# ----------------------------------------------------------------------------------------------- the run


STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3})")


async def send(session: aiohttp.ClientSession, base: str, request: Request) -> int:
    async with session.request(
        request.method,
        base + request.path,
        data=request.body,
        headers=request.headers,
        allow_redirects=False,
        timeout=aiohttp.ClientTimeout(total=10),
    ) as response:
        if not response.headers.get("Content-Type", "").startswith("text/event-stream"):
            await response.read()
        if response.status == 201 and "Location" in response.headers:  # clean up what it created
            async with session.delete(base + response.headers["Location"]) as cleanup:
                await cleanup.read()
                assert cleanup.status < 500, cleanup.status
        return response.status


async def send_raw(host: str, port: int, data: bytes) -> int | None:
    """The status the server answered malformed bytes with, or None if it closed without an answer."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        try:
            answer = await asyncio.wait_for(reader.read(4096), 3.0)
        except TimeoutError:
            return None  # waiting for the rest of a body that never comes: no answer is right
        match = STATUS_LINE.match(answer)
        return int(match.group(1)) if match else None
    except (ConnectionError, OSError):
        return None
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def frames_out(session: aiohttp.ClientSession, base: str) -> int:
    async with session.get(f"{base}/api/streams/cam1") as response:
        assert response.status == 200, await response.text()
        return int((await response.json())["frames_out"])


async def fuzz_run(base: str, statuses: Counter[Any]) -> None:
    rng = random.Random(SEED)
    host, port = base.removeprefix("http://").rsplit(":", 1)
    deadline = time.monotonic() + SECONDS
    async with aiohttp.ClientSession() as session:
        sent = 0
        while sent < REQUESTS and time.monotonic() < deadline:
            batch = []
            for _ in range(min(8, REQUESTS - sent)):
                if rng.random() < 0.15:
                    batch.append(send_raw(host, int(port), malformed_http(rng, host)))
                else:
                    batch.append(send(session, base, random_request(rng)))
            sent += len(batch)
            for result in await asyncio.gather(*batch):
                statuses[result] += 1


def test_a_fuzzed_server_stays_up_answers_4xx_and_keeps_streaming(server: Server) -> None:
    print(f"fuzz seed {SEED} (CHROMASTREAM_FUZZ_SEED={SEED} repeats this run)")
    statuses: Counter[Any] = Counter()
    health_s: list[float] = []

    async def run() -> tuple[int, int, int, dict[str, Any]]:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 30
            while (before := await frames_out(session, server.base)) < 3:  # the stream is up
                assert time.monotonic() < deadline, "the stream produced no frames"
                await asyncio.sleep(0.2)
            fuzzing = asyncio.create_task(fuzz_run(server.base, statuses))
            while not fuzzing.done():  # a health probe's answer time, all through the fuzz
                started = time.perf_counter()
                async with session.get(f"{server.base}/healthz") as response:
                    await response.read()
                health_s.append(time.perf_counter() - started)
                await asyncio.sleep(0.005)
            await fuzzing
            during = await frames_out(session, server.base)
            await asyncio.sleep(1.5)
            after = await frames_out(session, server.base)
            async with session.get(f"{server.base}/healthz") as response:
                health = await response.json()
            return before, during, after, health

    before, during, after, health = asyncio.run(asyncio.wait_for(run(), SECONDS + 90))
    answered = {status: n for status, n in statuses.items() if isinstance(status, int)}
    print(f"answers by status: {dict(sorted(answered.items()))}; no answer: {statuses[None]}")
    assert sum(answered.values()) + statuses[None] >= min(REQUESTS, 100)
    assert all(status < 500 for status in answered), answered
    assert server.process.poll() is None, "the server process died"
    assert health["ok"] is True
    health_s.sort()
    p99 = health_s[int(0.99 * (len(health_s) - 1))]
    print(f"/healthz during the fuzz: {len(health_s)} probes, p99 {p99 * 1000:.1f} ms")
    assert len(health_s) >= 5 and p99 <= 0.1, f"/healthz p99 {p99 * 1000:.0f} ms during the fuzz"
    assert during > before and after > during, (before, during, after)  # frames kept flowing
    log = server.log.read_text()
    assert "Traceback" not in log, log[-4000:]
