"""A stream nobody watches is colorized but not encoded: the real ``serve`` in a child process.

What a user sees on ``/metrics``: ``chromastream_frames_out_total`` of the stream rises all the time, and
``chromastream_webrtc_encoded_frames_total`` rises only while a WHEP viewer is attached; it stands still
again within a couple of seconds of the viewer leaving, whether it says so (``DELETE``) or only closes its
peer connection. (The detector samples the stream's *input* frames, before any subscription, so it is
not affected either way.)
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.serve_throughput import serving
from chromastream.stream.webrtc import allow_loopback_candidates, peer_connection
from tests.test_webrtc import whep

STREAM = "cam"


def metric_total(text: str, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels`` (0 when there is none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def figures(session: ClientSession, base: str) -> tuple[float, float]:
    """Colorized frames published and frames encoded for WebRTC, of the stream."""
    async with session.get(f"{base}/metrics") as r:
        text = await r.text()
    out = metric_total(text, "chromastream_frames_out_total", stream=STREAM)
    encoded = metric_total(text, "chromastream_webrtc_encoded_frames_total", stream=STREAM)
    return out, encoded


async def offer_only(session: ClientSession, base: str) -> str:
    """Post a WHEP offer and never apply the answer; the session's address."""
    allow_loopback_candidates()
    pc = peer_connection()
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp"}
    try:
        async with session.post(f"{base}/whep/{STREAM}", data=pc.localDescription.sdp, headers=headers) as r:
            assert r.status == 201, await r.text()
            return r.headers["Location"]
    finally:
        await pc.close()


async def until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_stream_is_encoded_only_while_a_viewer_watches(workers: int) -> None:
    config = {
        "port": 0,
        "workers": workers,
        "streams": [{"id": STREAM, "url": "synthetic:?fps=15&width=160&height=120"}],
    }

    async def body(base: str) -> None:
        async with ClientSession() as session:

            async def running() -> bool:
                return (await figures(session, base))[0] >= 15

            await until(running, 90.0, "the stream did not start")
            out0, encoded0 = await figures(session, base)
            await asyncio.sleep(2.0)
            out1, encoded1 = await figures(session, base)
            assert out1 - out0 >= 10, "colorization goes on without a viewer"
            assert encoded0 == encoded1 == 0, "nothing is encoded without a viewer"

            # An offer whose client never connects (no ICE, no DTLS) holds a viewer slot, not an encoder.
            location = await offer_only(session, base)
            await asyncio.sleep(2.0)
            assert (await figures(session, base))[1] == 0, "nothing is encoded for a viewer not connected"
            async with session.delete(f"{base}{location}") as r:
                assert r.status in (200, 204)

            async with whep(session, base, STREAM) as viewer:

                async def encoding() -> bool:
                    return (await figures(session, base))[1] >= 10 and len(viewer.messages) > 0

                await until(encoding, 30.0, "a viewer attached but nothing was encoded")
                _, encoded2 = await figures(session, base)
                await asyncio.sleep(1.0)
                _, encoded3 = await figures(session, base)
                assert encoded3 > encoded2, "encoding goes on while the viewer watches"
                async with session.delete(f"{base}{viewer.location}") as r:
                    assert r.status in (200, 204)
            await asyncio.sleep(2.0)
            out4, encoded4 = await figures(session, base)
            await asyncio.sleep(2.0)
            out5, encoded5 = await figures(session, base)
            assert encoded5 == encoded4, "encoding stops within 2 s of the viewer leaving"
            assert out5 - out4 >= 10, "colorization goes on after the viewer left"

            # A viewer that goes away without DELETE (a closed tab): its peer's end frees the encoder too.
            async with whep(session, base, STREAM) as viewer:

                async def encoding_again() -> bool:
                    return (await figures(session, base))[1] >= encoded5 + 10 and len(viewer.messages) > 0

                await until(encoding_again, 30.0, "a second viewer attached but nothing was encoded")
            await asyncio.sleep(2.0)
            _, encoded6 = await figures(session, base)
            await asyncio.sleep(2.0)
            _, encoded7 = await figures(session, base)
            assert encoded7 == encoded6, "encoding stops within 2 s of the viewer's peer closing"

    with (
        tempfile.TemporaryDirectory(prefix="encode-on-demand-") as folder,
        serving(config, Path(folder)) as server,
    ):
        asyncio.run(body(server.base))
