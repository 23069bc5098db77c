"""WebRTC against a real server on 127.0.0.1: aiortc clients do WHEP (watch) and WHIP (publish).

With the shipped model the viewer must get colour (the model colours grey input) at the right size; the
exact colour is asserted with a stand-in colorizer that paints its hints, so "a hint clicked here turns
these pixels this colour" tests the whole path (API, pipeline, shared encoder, RTP, decoder) whatever
the shipped model's weights do with hints.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter as Tally
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest
from aiohttp import ClientSession
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from chromastream.stream.webrtc import allow_loopback_candidates, peer_connection
from tests.test_server import HintEchoBackend, live_server, run, wait_for

SDP = {"Content-Type": "application/sdp"}


def planes(frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    yuv = frame.reformat(format="yuv420p")
    out = []
    for plane in yuv.planes:
        view = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
        out.append(view[:, : plane.width].astype(np.int16))
    return out[0], out[1], out[2]


@dataclass
class WhepClient:
    pc: RTCPeerConnection
    location: str
    frames: list[av.VideoFrame] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None


@contextlib.asynccontextmanager
async def whep(session: ClientSession, base: str, stream_id: str) -> AsyncIterator[WhepClient]:
    allow_loopback_candidates()
    pc = peer_connection()
    pc.addTransceiver("video", direction="recvonly")
    channel = pc.createDataChannel("metadata")
    client = WhepClient(pc, "")

    @channel.on("message")
    def on_message(message: Any) -> None:
        with contextlib.suppress(Exception):  # an exception here would close the whole peer
            client.messages.append(json.loads(message))

    async def read(track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, av.VideoFrame)
                client.frames.append(frame)

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        client.reader = asyncio.get_running_loop().create_task(read(track))

    await pc.setLocalDescription(await pc.createOffer())
    async with session.post(f"{base}/whep/{stream_id}", data=pc.localDescription.sdp, headers=SDP) as r:
        assert r.status == 201, await r.text()
        assert r.content_type == "application/sdp"
        client.location = r.headers["Location"]
        answer = await r.text()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    try:
        yield client
    finally:
        if client.reader is not None:
            client.reader.cancel()
        await pc.close()


async def frames_at_least(client: WhepClient, n: int, timeout: float = 20.0) -> None:
    async def enough() -> bool:
        return len(client.frames) >= n

    await wait_for(enough, timeout)


def chroma(frame: av.VideoFrame, box: tuple[slice, slice]) -> tuple[float, float]:
    _, u, v = planes(frame)
    return float(u[box].mean() - 128), float(v[box].mean() - 128)


@pytest.mark.parametrize("workers", [1, 2])
def test_whep_viewer_gets_coloured_frames_and_matching_metadata(workers: int) -> None:
    """With workers, the viewer's peer connection is the owning worker's, signalled through the front."""

    async def body() -> None:
        async with (
            live_server(workers=workers) as (base, _),
            ClientSession() as session,
            whep(session, base, "cam1") as viewer,
        ):
            await frames_at_least(viewer, 12)
            last = viewer.frames[-1]
            assert (last.width, last.height) == (64, 48)
            # The shipped model colours grey input: the received chroma is not neutral.
            _, u, v = planes(last)
            assert float(np.abs(u - 128).mean() + np.abs(v - 128).mean()) > 1.0

            # Metadata: one message per frame, keyed by stream and pts, on the RTP clock of the video.
            async def messages() -> bool:
                return len(viewer.messages) >= 12

            await wait_for(messages)
            assert {m["stream"] for m in viewer.messages} == {"cam1"}
            assert all(isinstance(m["pts"], int) and "rtp_time" in m for m in viewer.messages)
            (time_base,) = {Fraction(m["time_base"]) for m in viewer.messages}  # the source's: 1/30, 1/15
            for m in viewer.messages:  # the 90 kHz time is the source's pts in its time base
                assert m["rtp_time"] == m["pts"] * 90_000 * time_base
            frame_times = [f.pts for f in viewer.frames]
            offsets = Tally((ft - m["rtp_time"]) % (1 << 32) for ft in frame_times for m in viewer.messages)
            _, matched = offsets.most_common(1)[0]
            # One offset (the sender's random RTP origin) maps (almost) every frame onto its metadata.
            assert matched >= 0.8 * min(len(frame_times), len(viewer.messages)), (matched, offsets)

            async with session.delete(base + viewer.location) as r:
                assert r.status == 200
            async with session.delete(base + viewer.location) as r:
                assert r.status == 404

    run(body)


def test_hint_colour_reaches_the_viewer() -> None:
    async def body() -> None:
        async with (
            live_server(backend=HintEchoBackend()) as (base, _),
            ClientSession() as session,
            whep(session, base, "cam1") as viewer,
        ):
            await frames_at_least(viewer, 5)
            box = (slice(8, 16), slice(12, 20))  # chroma planes are half size: the centre of 64x48
            u, v = chroma(viewer.frames[-1], box)
            assert abs(u) + abs(v) < 3, (u, v)  # no hint, no colour
            hint = {"x": 0.5, "y": 0.5, "rgb": "#ff0000", "radius": 0.25}
            async with session.post(f"{base}/api/streams/cam1/hints", json=hint) as r:
                assert r.status == 200
            seen = len(viewer.frames)
            await frames_at_least(viewer, seen + 8)
            u, v = chroma(viewer.frames[-1], box)
            assert v > 30 and u < 0, (u, v)  # red: V well above neutral, U below
            corner_u, corner_v = chroma(viewer.frames[-1], (slice(0, 3), slice(0, 3)))
            assert abs(corner_u) + abs(corner_v) < 4  # and only where the hint is

    run(body)


def test_two_viewers_share_one_encoder() -> None:
    async def body() -> None:
        async with live_server() as (base, _), ClientSession() as session:
            async with whep(session, base, "cam1") as one, whep(session, base, "cam1") as two:
                await frames_at_least(one, 8)
                await frames_at_least(two, 8)
                async with session.get(f"{base}/metrics") as r:
                    text = await r.text()
                assert 'chromastream_webrtc_viewers{stream="cam1"} 2.0' in text
                encoders = [
                    line for line in text.splitlines() if line.startswith("chromastream_webrtc_encoders{")
                ]
                assert encoders == ['chromastream_webrtc_encoders{codec="VP8",stream="cam1"} 1.0'], encoders
                async with session.get(f"{base}/api/streams/cam1") as r:
                    assert (await r.json())["viewers"] == 2

            async def gone() -> bool:
                async with session.get(f"{base}/api/streams/cam1") as r:
                    return bool((await r.json())["viewers"] == 0)

            await wait_for(gone)

    run(body)


class PatternTrack(VideoStreamTrack):
    """A synthetic camera for WHIP: moving grey bars, 64x48."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        yy, xx = np.mgrid[0:48, 0:64]
        y = (60 + (xx * 2 + self.count * 4) % 120 + 20 * ((yy // 6) % 2)).astype(np.uint8)
        frame = av.VideoFrame(64, 48, "yuv420p")
        for plane, value in zip(frame.planes, (y, 128, 128), strict=True):
            view = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
            view[:, : plane.width] = value
        frame.pts, frame.time_base = pts, time_base
        self.count += 1
        return frame


@pytest.mark.parametrize("workers", [1, 2])
def test_whip_publisher_becomes_a_stream(workers: int) -> None:
    """With workers, the publisher's peer connection and its stream are on the worker the front chose."""

    async def body() -> None:
        async with live_server(streams=(), workers=workers) as (base, _), ClientSession() as session:
            allow_loopback_candidates()
            pc = peer_connection()
            pc.addTransceiver(PatternTrack(), direction="sendonly")
            await pc.setLocalDescription(await pc.createOffer())
            try:
                async with session.post(f"{base}/whip/cam9", data=pc.localDescription.sdp, headers=SDP) as r:
                    assert r.status == 201, await r.text()
                    location = r.headers["Location"]
                    answer = await r.text()
                await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

                async def receiving() -> bool:
                    async with session.get(f"{base}/api/streams") as r:
                        streams = {s["id"]: s for s in (await r.json())["streams"]}
                    return "cam9" in streams and streams["cam9"]["frames_in"] > 3

                await wait_for(receiving, 20)
                async with session.get(f"{base}/api/streams/cam9") as r:
                    info = await r.json()
                assert (info["width"], info["height"]) == (64, 48)
                assert info.get("worker") == (None if workers == 1 else 0)
                # The published stream is viewable like any other (colorized, over WHEP).
                async with whep(session, base, "cam9") as viewer:
                    await frames_at_least(viewer, 3)
                    assert (viewer.frames[-1].width, viewer.frames[-1].height) == (64, 48)
                async with session.post(f"{base}/whip/cam9", data=pc.localDescription.sdp, headers=SDP) as r:
                    assert r.status == 409
                async with session.delete(base + location) as r:
                    assert r.status == 200
                async with session.get(f"{base}/api/streams") as r:
                    assert "cam9" not in {s["id"] for s in (await r.json())["streams"]}
            finally:
                await pc.close()

    run(body)


def test_whep_for_unknown_stream_and_viewer_cap() -> None:
    from chromastream.stream.config import ServeConfig, WebRTCConfig

    async def body() -> None:
        async with (
            live_server(ServeConfig(webrtc=WebRTCConfig(max_viewers=1))) as (base, _),
            ClientSession() as session,
        ):
            allow_loopback_candidates()
            pc = RTCPeerConnection()
            pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            offer = pc.localDescription.sdp
            await pc.close()
            async with session.post(f"{base}/whep/nope", data=offer, headers=SDP) as r:
                assert r.status == 404
            async with (
                whep(session, base, "cam1"),
                session.post(f"{base}/whep/cam1", data=offer, headers=SDP) as r,
            ):
                assert r.status == 503
                assert "limit" in (await r.json())["error"]

    run(body)


def test_shutdown_closes_every_peer() -> None:
    async def body() -> None:
        async with ClientSession() as session:
            server = live_server()
            base, _ = await server.__aenter__()
            viewer_context = whep(session, base, "cam1")
            try:
                viewer = await viewer_context.__aenter__()
                await frames_at_least(viewer, 3)
            finally:
                await server.__aexit__(None, None, None)  # shut down with the viewer connected
            try:
                # The server closed its peer: the viewer's track ends and its connection closes.
                assert viewer.reader is not None
                await asyncio.wait_for(viewer.reader, 10)

                async def closed() -> bool:
                    return viewer.pc.connectionState in ("closed", "failed")

                await wait_for(closed, 10)
            finally:
                await viewer_context.__aexit__(None, None, None)

    run(body)
