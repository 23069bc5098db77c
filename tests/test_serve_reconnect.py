"""A camera that goes away and comes back: the served stream heals without restarting anything.

A real GStreamer RTSP server serves a clip; the real pipeline colorizes it with the shipped model behind
the real server app. The RTSP server is killed for 10 s and restarted on the same port: frames must stop,
then resume on the same pipeline, server and subscription, and the reconnect must be counted where an
operator looks (the stream's resets in the API, ``chromastream_reconnects_total`` in ``/metrics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientSession, web

from chromastream.stream.config import StreamConfig
from chromastream.stream.server import create_app
from chromastream.stream.sources import Backoff, RtspSource
from tests.rtsp_fixtures import RtspServer
from tests.test_server import make_pipeline

DOWN_S = 10.0
#: Small backoff ceiling: the camera is found again within about a second of coming back.
FAST_BACKOFF = Backoff(initial=0.2, factor=2.0, maximum=1.0)


@contextlib.asynccontextmanager
async def serving(url: str) -> AsyncIterator[tuple[str, Any]]:
    pipeline = make_pipeline()
    await pipeline.start()
    runner: web.AppRunner | None = None
    try:
        source = RtspSource("cam1", url, backoff=FAST_BACKOFF, read_timeout=2.0)
        await pipeline.add_stream(StreamConfig(id="cam1", url=url), source)
        runner = web.AppRunner(create_app(pipeline))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", pipeline
    finally:
        if runner is not None:
            await runner.cleanup()
        await pipeline.stop()


def reconnects(metrics_text: str) -> float:
    match = re.search(r'^chromastream_reconnects_total\{stream="cam1"\} (\S+)$', metrics_text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.mark.integration
def test_stream_resumes_after_the_camera_is_down_for_ten_seconds(rtsp_server: RtspServer) -> None:
    async def body() -> None:
        async with serving(rtsp_server.play_url) as (base, pipeline), ClientSession() as session:
            subscription = pipeline.subscribe("cam1", maxsize=64)
            seen: list[float] = []

            async def consume() -> None:
                async for _ in subscription:
                    seen.append(time.monotonic())

            consumer = asyncio.create_task(consume())
            try:
                await wait_until(lambda: len(seen) >= 10, 15.0)
                async with session.get(f"{base}/api/streams/cam1") as r:
                    before = await r.json()
                assert before["state"] == "running" and before["width"] == 160

                await asyncio.to_thread(rtsp_server.stop)
                stopped = time.monotonic()
                await asyncio.sleep(DOWN_S)
                # While the camera is down nothing comes out (the last frames may still be draining).
                assert not [t for t in seen if t > stopped + 2.5]
                assert consumer.done() is False  # the subscription did not end
                await asyncio.to_thread(rtsp_server.start)
                restarted = time.monotonic()

                await wait_until(lambda: len([t for t in seen if t > restarted]) >= 10, 10.0)
                first = min(t for t in seen if t > restarted)
                assert first - restarted < 5.0

                async with session.get(f"{base}/api/streams/cam1") as r:
                    after = await r.json()
                assert after["state"] == "running", after
                assert after["error"] is None
                assert after["frames_out"] > before["frames_out"] + 10
                assert after["resets"] >= before["resets"] + 1  # the reconnect reset the colour state
                async with session.get(f"{base}/metrics") as r:
                    text = await r.text()
                assert reconnects(text) == 1.0, [ln for ln in text.splitlines() if "reconnect" in ln]
                assert rtsp_server.count("play_client") >= 2  # it really connected a second time
            finally:
                consumer.cancel()
                subscription.close()

    asyncio.run(asyncio.wait_for(body(), timeout=40))


async def wait_until(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)
