"""The HTTP server against a running pipeline: every endpoint, its 4xx answers, auth, SSE and metrics.

The pipeline is the real one with a synthetic source at a small working size, so what the API reports
(frames, hints, metadata) is what the pipeline really did.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from chromastream.stream.cli import main
from chromastream.stream.config import EventsConfig, PipelineConfig, ServeConfig, StreamConfig
from chromastream.stream.frames import EndOfStream, Frame, Reset, SourceEvent
from chromastream.stream.server import MAX_BODY, create_app

TOKEN = "s3cret-token"
SIZE = (48, 64)


# ------------------------------------------------------------------------------------ shared helpers


class PatternSource:
    """A live synthetic camera: moving bars, ``fps`` frames per second, until closed."""

    live = True

    def __init__(self, stream_id: str, fps: float = 15.0, size: tuple[int, int] = SIZE) -> None:
        self.stream_id = stream_id
        self.fps = fps
        self.size = size
        self.closed = False

    async def events(self) -> AsyncIterator[SourceEvent]:
        loop = asyncio.get_running_loop()
        height, width = self.size
        yy, xx = np.mgrid[0:height, 0:width]
        start = loop.time()
        index = 0
        yield Reset(self.stream_id, "reconnect")
        while not self.closed:
            y = np.clip(50 + (xx * 2 + index * 3) % 120 + 20 * ((yy // 6) % 2), 16, 235).astype(np.uint8)
            yield Frame(self.stream_id, index, index, Fraction(1, 30), y, False, loop.time())
            index += 1
            await asyncio.sleep(max(0.0, start + index / self.fps - loop.time()))
        yield EndOfStream(self.stream_id)

    async def close(self) -> None:
        self.closed = True


def make_pipeline(size: int = 64, backend: Any = None) -> Any:
    """The real pipeline on the shipped model at a small working size (the tests check plumbing)."""
    from chromastream.stream.pipeline import Pipeline

    return Pipeline(PipelineConfig(size=size, max_wait_ms=2.0), backend or _backend())


class HintEchoBackend:
    """A colorizer that paints exactly its hints (grey elsewhere): a stand-in with a known answer.

    The shipped model may weigh hints little or not at all; this one makes "the hint's colour reaches the
    viewer's pixels" a sharp test of everything between the API and the screen.
    """

    name = "hint-echo"

    def __init__(self) -> None:
        from chromastream.models.runtime.base import ModelInfo

        self.info = ModelInfo(version="hint-echo")

    def run(self, L: Any, hints: Any, state: Any) -> tuple[Any, Any]:
        return np.ascontiguousarray(hints[:, :2], dtype=np.float32), state


_BACKEND: list[Any] = []


def _backend() -> Any:
    from chromastream.models.runtime.registry import create_backend

    if not _BACKEND:
        _BACKEND.append(create_backend("auto"))
    return _BACKEND[0]


async def add_pattern(pipeline: Any, stream_id: str, fps: float = 15.0) -> Any:
    return await pipeline.add_stream(
        StreamConfig(id=stream_id, url="synthetic:"), PatternSource(stream_id, fps)
    )


@contextlib.asynccontextmanager
async def running(
    config: ServeConfig | None = None, streams: tuple[str, ...] = ("cam1",)
) -> AsyncIterator[tuple[TestClient[Any, Any], Any]]:
    pipeline = make_pipeline()
    await pipeline.start()
    try:
        for stream_id in streams:
            await add_pattern(pipeline, stream_id)
        app = create_app(pipeline, config)
        async with TestClient(TestServer(app)) as client:
            yield client, pipeline
    finally:
        await pipeline.stop()


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), timeout=60))


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


# ----------------------------------------------------------------------------------------- basics


def test_page_health_static_and_streams() -> None:
    async def body() -> None:
        async with running() as (client, _):
            page = await client.get("/")
            assert page.status == 200
            assert "chromastream" in await page.text()
            for asset in ("/web/app.js", "/web/style.css"):
                assert (await client.get(asset)).status == 200
            health = await client.get("/healthz")
            assert health.status == 200
            assert await health.json() == {"ok": True, "streams": 1}
            streams = (await (await client.get("/api/streams")).json())["streams"]
            assert [s["id"] for s in streams] == ["cam1"]
            one = await client.get("/api/streams/cam1")
            assert one.status == 200
            assert (await one.json())["id"] == "cam1"

    run(body)


def test_add_and_remove_streams() -> None:
    async def body() -> None:
        async with running() as (client, pipeline):
            response = await client.post("/api/streams", json={"id": "cam2", "url": "synthetic:"})
            assert response.status == 201, await response.text()
            assert response.headers["Location"] == "/api/streams/cam2"
            assert {s.id for s in pipeline.streams()} == {"cam1", "cam2"}
            duplicate = await client.post("/api/streams", json={"id": "cam2", "url": "synthetic:"})
            assert duplicate.status == 409
            assert "exists" in (await duplicate.json())["error"]
            removed = await client.delete("/api/streams/cam2")
            assert removed.status == 200
            assert (await client.delete("/api/streams/cam2")).status == 404
            assert {s.id for s in pipeline.streams()} == {"cam1"}

    run(body)


def test_a_camera_url_reads_the_same_in_the_api_the_logs_and_a_sink_without_its_login(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from chromastream.stream.sinks import RtspPusher
    from tests.rtsp_fixtures import free_port

    port = free_port()  # nothing listens there: the source logs its failed connection
    url = f"rtsp://gatekeeper:hunter2@127.0.0.1:{port}/live?channel=1&token=tok3n"
    shown = f"rtsp://***@127.0.0.1:{port}/live?channel=1&token=***"
    seen: dict[str, str] = {}

    async def body() -> None:
        async with running(streams=()) as (client, _):
            added = await client.post("/api/streams", json={"id": "gate", "url": url})
            assert added.status == 201, await added.text()
            seen["added"] = (await added.json())["url"]
            listing = await (await client.get("/api/streams")).json()
            seen["listed"] = listing["streams"][0]["url"]
            seen["listing"] = json.dumps(listing)

            async def logged() -> bool:
                return any("reconnect attempt" in r.getMessage() for r in caplog.records)

            await wait_for(logged)
            seen["metrics"] = await (await client.get("/metrics")).text()

    with caplog.at_level(logging.INFO, logger="chromastream"):
        run(body)
    line = next(r.getMessage() for r in caplog.records if "reconnect attempt" in r.getMessage())
    pusher = RtspPusher(url, "gate")
    assert seen["added"] == seen["listed"] == pusher.shown_url == shown
    assert f"gate: {shown}: " in line
    for text in (seen["listing"], caplog.text, pusher.shown_url, seen["metrics"]):
        assert "gatekeeper" not in text and "hunter2" not in text and "tok3n" not in text


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        ({"url": "synthetic:"}, 400, "'id'"),
        ({"id": "bad id!", "url": "synthetic:"}, 400, "'id'"),
        ({"id": "cam9"}, 400, "'url'"),
        ({"id": "cam9", "url": "synthetic:", "record": "/tmp/x.mp4"}, 400, "config-file-only"),
        ({"id": "cam9", "url": "synthetic:", "transport": "carrier-pigeon"}, 400, "transport"),
        ([1, 2], 400, "object"),
    ],
)
def test_add_stream_rejects_bad_bodies(payload: Any, status: int, needle: str) -> None:
    async def body() -> None:
        async with running(streams=()) as (client, _):
            response = await client.post("/api/streams", json=payload)
            assert response.status == status
            assert needle in (await response.json())["error"]

    run(body)


def test_malformed_requests_get_clear_4xx() -> None:
    async def body() -> None:
        async with running() as (client, _):
            bad_json = await client.post(
                "/api/streams", data="{not json", headers={"Content-Type": "application/json"}
            )
            assert bad_json.status == 400
            assert "malformed JSON" in (await bad_json.json())["error"]
            wrong_type = await client.post(
                "/api/streams", data="id=cam", headers={"Content-Type": "text/plain"}
            )
            assert wrong_type.status == 415
            big = json.dumps({"id": "x", "url": "y" * (MAX_BODY + 10)})
            too_big = await client.post(
                "/api/streams", data=big, headers={"Content-Type": "application/json"}
            )
            assert too_big.status == 413
            assert "too large" in (await too_big.json())["error"]
            missing = await client.get("/api/streams/nope")
            assert missing.status == 404
            assert (await missing.json())["error"] == "no stream 'nope'"
            assert (await client.get("/api/streams/nope/hints")).status == 404
            assert (await client.post("/api/streams/nope/reset")).status == 404
            route = await client.get("/no/such/route")
            assert route.status == 404
            assert "error" in await route.json()
            method = await client.patch("/api/streams")
            assert method.status == 405
            assert "error" in await method.json()

    run(body)


# ------------------------------------------------------------------------------------------ hints


def test_hints_add_list_replace_clear_and_validation() -> None:
    async def body() -> None:
        async with running() as (client, pipeline):
            path = "/api/streams/cam1/hints"
            assert (await (await client.get(path)).json())["hints"] == []
            one = await client.post(path, json={"x": 0.5, "y": 0.25, "rgb": "#ff0000"})
            assert one.status == 200
            hints = (await one.json())["hints"]
            assert len(hints) == 1
            assert hints[0]["x"] == 0.5
            assert hints[0]["a"] > 40  # red: strongly positive a
            many = await client.post(
                path, json=[{"x": 0.1, "y": 0.1, "a": 10, "b": -20}, {"x": 1, "y": 1, "rgb": [0, 0, 255]}]
            )
            assert len((await many.json())["hints"]) == 3
            assert len(pipeline.hints("cam1")) == 3
            replaced = await client.put(path, json={"hints": [{"x": 0.2, "y": 0.2, "a": 0, "b": 50}]})
            assert [h["b"] for h in (await replaced.json())["hints"]] == [50]
            out_of_range = await client.post(path, json={"x": 1.5, "y": 0.2, "rgb": "#00ff00"})
            assert out_of_range.status == 400
            assert "normalized coordinates" in (await out_of_range.json())["error"]
            bad_colour = await client.post(path, json={"x": 0.5, "y": 0.2, "rgb": "green"})
            assert bad_colour.status == 400
            assert "#rrggbb" in (await bad_colour.json())["error"]
            bad_list = await client.put(path, json={"x": 0.5})
            assert bad_list.status == 400
            assert len(pipeline.hints("cam1")) == 1  # nothing half-applied
            cleared = await client.delete(path)
            assert (await cleared.json())["hints"] == []
            assert pipeline.hints("cam1") == []
            assert (await client.post("/api/streams/cam1/reset")).status == 200

    run(body)


# ------------------------------------------------------------------------------------------- auth


def test_auth_required_everywhere_but_health_and_assets() -> None:
    async def body() -> None:
        async with running(ServeConfig(token=TOKEN)) as (client, _):
            for method, path in [
                ("GET", "/"),
                ("GET", "/api/streams"),
                ("POST", "/api/streams"),
                ("GET", "/api/streams/cam1/events"),
                ("GET", "/metrics"),
                ("POST", "/whep/cam1"),
                ("POST", "/whip/cam9"),
                ("DELETE", "/api/streams/cam1/hints"),
            ]:
                response = await client.request(method, path)
                assert response.status == 401, (method, path)
                assert "token" in (await response.json())["error"]
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
            wrong = await client.get("/api/streams", headers={"Authorization": "Bearer nope"})
            assert wrong.status == 401
            assert "wrong token" in (await wrong.json())["error"]
            assert (await client.get("/healthz")).status == 200
            assert (await client.get("/web/app.js")).status == 200
            good = {"Authorization": f"Bearer {TOKEN}"}
            assert (await client.get("/api/streams", headers=good)).status == 200
            assert (await client.get("/metrics", headers=good)).status == 200
            # The page takes ?token= once and leaves a cookie good for later GETs only.
            page = await client.get(f"/?token={TOKEN}")
            assert page.status == 200
            assert (await client.get("/")).status == 200
            assert (await client.get("/api/streams")).status == 200
            assert (await client.delete("/api/streams/cam1/hints")).status == 401

    run(body)


def test_no_token_means_open() -> None:
    async def body() -> None:
        async with running() as (client, _):
            assert (await client.get("/api/streams")).status == 200
            assert (await client.get("/metrics")).status == 200

    run(body)


# ------------------------------------------------------------------------------------ SSE, metrics


def test_sse_delivers_metadata_with_stream_and_pts() -> None:
    async def body() -> None:
        async with running() as (client, _):
            response = await client.get("/api/streams/cam1/events")
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            events: list[dict[str, Any]] = []
            while len(events) < 5:
                line = (await response.content.readline()).decode()
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
            response.close()
            assert {e["stream"] for e in events} == {"cam1"}
            pts = [e["pts"] for e in events]
            assert all(isinstance(p, int) for p in pts)
            assert pts == sorted(pts)
            assert len(set(pts)) == len(pts)
            assert all(e["time_base"] == "1/30" for e in events)

    run(body)


def test_slow_sse_reader_never_holds_the_pipeline() -> None:
    async def body() -> None:
        async with running(ServeConfig(events=EventsConfig(queue_size=2))) as (client, pipeline):
            slow = await client.get("/api/streams/cam1/events")  # opened, never read
            before = pipeline.info("cam1").frames_out
            await asyncio.sleep(1.5)
            assert pipeline.info("cam1").frames_out > before + 5
            fast = await client.get("/api/streams/cam1/events")
            line = b""
            while not line.startswith(b"data: "):
                line = await fast.content.readline()
            slow.close()
            fast.close()

    run(body)


def test_metrics_text_has_pipeline_and_server_series() -> None:
    async def body() -> None:
        async with running() as (client, _):
            await client.get("/api/streams/missing")  # one 404 for the error counter

            async def has_frames() -> bool:
                text = await (await client.get("/metrics")).text()
                return 'chromastream_frames_out_total{stream="cam1"}' in text

            await wait_for(has_frames)
            text = await (await client.get("/metrics")).text()
            for name in (
                "chromastream_frames_in_total",
                "chromastream_dropped_frames_total",
                "chromastream_webrtc_publishers",
                "chromastream_sse_clients",
                'chromastream_http_errors_total{status="404"}',
            ):
                assert name in text, name

    run(body)


def test_flood_of_bad_requests_leaves_server_serving() -> None:
    async def body() -> None:
        async with running() as (client, pipeline):
            junk: list[Awaitable[Any]] = []
            for i in range(60):
                junk.append(
                    client.post(
                        "/api/streams", data=b"\xff\xfe" * i, headers={"Content-Type": "application/json"}
                    )
                )
                junk.append(
                    client.post("/whep/cam1", data="hello", headers={"Content-Type": "application/sdp"})
                )
                junk.append(
                    client.post(
                        "/whep/cam1", data="v=0\r\nm=video", headers={"Content-Type": "application/sdp"}
                    )
                )
                junk.append(client.post("/api/streams/cam1/hints", json={"x": i, "y": "?"}))
                junk.append(client.delete(f"/whep/cam1/{i}"))
                junk.append(client.post("/whip/cam1", data="v=0", headers={"Content-Type": "text/plain"}))
            responses = await asyncio.gather(*junk)
            statuses = {r.status for r in responses}
            assert statuses <= {400, 404, 409, 413, 415, 429}, statuses  # 429: the per-address rate
            assert (await client.get("/healthz")).status == 200
            before = pipeline.info("cam1").frames_out
            await asyncio.sleep(0.5)
            assert pipeline.info("cam1").frames_out > before

    run(body)


def test_whep_whip_signalling_errors() -> None:
    async def body() -> None:
        async with running() as (client, _):
            wrong_type = await client.post(
                "/whep/cam1", data="v=0", headers={"Content-Type": "application/json"}
            )
            assert wrong_type.status == 415
            assert "application/sdp" in (await wrong_type.json())["error"]
            huge = "v=0\r\n" + "a=x\r\n" * (MAX_BODY // 5)
            too_big = await client.post("/whep/cam1", data=huge, headers={"Content-Type": "application/sdp"})
            assert too_big.status == 413
            unknown = await client.post(
                "/whep/nope", data="v=0\r\nm=video 9", headers={"Content-Type": "application/sdp"}
            )
            assert unknown.status == 404
            garbage = await client.post(
                "/whep/cam1", data="hello", headers={"Content-Type": "application/sdp"}
            )
            assert garbage.status == 400
            assert "SDP" in (await garbage.json())["error"]
            taken = await client.post(
                "/whip/cam1", data="v=0\r\nm=video 9", headers={"Content-Type": "application/sdp"}
            )
            assert taken.status == 409
            assert (await client.delete("/whep/cam1/0123")).status == 404
            assert (await client.delete("/whip/cam1/0123")).status == 404

    run(body)


# Exported for the WebRTC and browser tests: a real server on a real port.
@contextlib.asynccontextmanager
async def live_server(
    config: ServeConfig | None = None,
    streams: tuple[str, ...] = ("cam1",),
    fps: float = 15.0,
    backend: Any = None,
    workers: int = 1,
) -> AsyncIterator[tuple[str, Any]]:
    """A server on 127.0.0.1 with a live 64x48 camera per stream id. With ``workers`` > 1 it is the real
    ``serve --workers N`` in a child process (synthetic cameras at ``fps``, the shipped model), and the
    pipeline handed back is ``None``: it lives in the workers."""
    if workers > 1:
        assert backend is None, "worker processes run the shipped model"
        with tempfile.TemporaryDirectory() as folder:
            cfg = Path(folder, "serve.yaml")
            cfg.write_text(yaml.safe_dump(_served_config(config or ServeConfig(), streams, fps, workers)))
            with served(Path(folder), "--config", str(cfg)) as server:
                yield server.base, None
        return
    pipeline = make_pipeline(backend=backend)
    await pipeline.start()
    runner: web.AppRunner | None = None
    try:
        for stream_id in streams:
            await add_pattern(pipeline, stream_id, fps)
        runner = web.AppRunner(create_app(pipeline, config))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}", pipeline
    finally:
        if runner is not None:
            await runner.cleanup()
        await pipeline.stop()


def _served_config(config: ServeConfig, streams: tuple[str, ...], fps: float, workers: int) -> dict[str, Any]:
    """The YAML of a ``serve`` run like :func:`make_pipeline` (no detector, small working size)."""
    return {
        "port": 0,
        "token": config.token,
        "workers": workers,
        "pipeline": {"size": 64, "max_wait_ms": 2.0, "detector_rate": 0},
        "webrtc": dataclasses.asdict(config.webrtc),
        "events": dataclasses.asdict(config.events),
        "streams": [{"id": s, "url": f"synthetic:?width=64&height=48&fps={fps:g}"} for s in streams],
    }


class Served:
    """``chromastream serve`` running in a child process, as a person starts it; its stderr is kept in a
    file so a test can read the log while it runs."""

    def __init__(self, folder: Path, *args: str) -> None:
        self.log = folder / "serve.log"
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chromastream.stream.cli", "serve", "--port", "0", "--size", "64", *args],
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # blocks until the server is up (or the process ends)
        if "viewer at" not in line:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"serve did not start: {line!r} {self.stderr()}")
        self.url = line.split("viewer at", 1)[1].strip()
        self.base = self.url.split("/?", 1)[0].rstrip("/")

    def stderr(self) -> str:
        return self.log.read_text()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, as ``docker stop`` or systemd would send it; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log_file.close()


@contextlib.contextmanager
def served(folder: Path, *args: str) -> Iterator[Served]:
    server = Served(folder, *args)
    try:
        yield server
    finally:
        server.close()


__all__ = [
    "HintEchoBackend",
    "PatternSource",
    "Served",
    "live_server",
    "make_pipeline",
    "run",
    "served",
    "wait_for",
]


# ------------------------------------------------------------------------------------ serve command


def test_serve_bad_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text("port: 99999\n")
    assert main(["serve", "--config", str(config)]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1
    assert err[0].startswith("chromastream: error:") and "port" in err[0], err


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_port_in_use_is_one_line(capsys: pytest.CaptureFixture[str], workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = main(
            ["serve", "--port", str(port), "--source", "synthetic:", "--size", "64", "--workers", workers]
        )
    assert status == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("chromastream: error")]
    assert len(err) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err[0]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_bad_source_url_is_one_line(capsys: pytest.CaptureFixture[str], workers: str) -> None:
    """With workers, the worker refuses the stream and the front says so, in the same one line."""
    status = main(
        ["serve", "--port", "0", "--source", "/no/such/clip.mp4", "--size", "64", "--workers", workers]
    )
    assert status == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("chromastream: error")]
    assert len(err) == 1 and "cam1" in err[0], err


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_default_demo_runs_and_stops_cleanly_on_sigterm(tmp_path: Path, workers: int) -> None:
    with served(tmp_path, "--token", TOKEN, "--workers", str(workers)) as server:
        assert TOKEN not in server.url  # the token is never printed (tests/test_security.py checks the log)
        headers = {"Authorization": f"Bearer {TOKEN}"}

        def streams() -> list[dict[str, Any]]:
            request = urllib.request.Request(f"{server.base}/api/streams", headers=headers)
            with urllib.request.urlopen(request, timeout=5) as response:
                found: list[dict[str, Any]] = json.load(response)["streams"]
            assert [s["id"] for s in found] == ["demo"]
            return found

        deadline = time.monotonic() + 30
        while streams()[0]["frames_out"] < 3:
            assert time.monotonic() < deadline, "the demo stream produced no frames"
            time.sleep(0.3)
        # One process serves everything as before; with workers the API says which one owns the stream.
        assert streams()[0].get("worker") == (None if workers == 1 else 0)
        with urllib.request.urlopen(f"{server.base}/healthz", timeout=5) as response:
            assert json.load(response) == {"ok": True, "streams": 1}
        assert server.stop() == 0
        assert "Traceback" not in server.stderr()
