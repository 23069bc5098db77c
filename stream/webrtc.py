"""WebRTC with aiortc: WHEP viewers of colorized streams and WHIP publishers as live sources.

Encode once per stream, fan out to every viewer
-----------------------------------------------
aiortc encodes inside each ``RTCRtpSender``: ``_next_encoded_frame`` awaits ``track.recv()`` and, for an
``av.VideoFrame``, runs that sender's own encoder, so N viewers of one stream would cost N encodes of the
same picture. The same method also accepts an ``av.Packet`` from ``recv()`` and then only packetizes it
(``Encoder.pack``: VP8 payload descriptors, H.264 STAP-A/FU-A). That public path is what this module uses:

* :class:`StreamEncoder` subscribes to the pipeline once per (stream, codec), encodes each output frame
  once in an executor (libvpx realtime or libx264 baseline/zerolatency) and hands the packet to every
  attached viewer's bounded queue.
* :class:`EncodedVideoTrack` is each viewer's track; its ``recv()`` returns those shared packets.
* The codec is pinned per viewer with the standard ``RTCRtpTransceiver.setCodecPreferences`` before the
  offer is applied: VP8 whenever the offer has it (Chromium and Firefox both do), H.264 otherwise, so
  all viewers of a stream normally share one encoder.

What sharing gives up, and how each gap is closed without patching aiortc:

* Keyframes on demand. aiortc answers a viewer's PLI/FIR by setting a flag that only its own encoder
  reads. A new viewer therefore asks the shared encoder for a keyframe when it attaches and skips packets
  until one arrives; the encoder also emits a keyframe every ``keyframe_interval`` frames so a viewer
  that lost packets recovers by itself; and the sender's ``_send_keyframe`` hook (an underscore method,
  called on PLI/FIR) is wrapped per sender instance, when present, to forward the request.
* Per-viewer bitrate adaptation (REMB). It would set ``target_bitrate`` on the sender's own encoder,
  which is not used here; the shared encoder runs at one configured bitrate for all viewers.
* A viewer that falls behind cannot drop single packets of a predicted stream; its queue is emptied and
  it waits for the next keyframe (one is requested), so a slow viewer never delays the others.

Viewers per stream stay capped (``max_viewers``): packetization, SRTP and sending are still per viewer.

Encode only while watched
-------------------------
A stream nobody watches is not encoded for WebRTC at all: its :class:`StreamEncoder` subscribes to the
pipeline when the first viewer's connection asks for its first packet (aiortc's sender starts reading the
track once ICE and DTLS are up, so an offer whose client never connects costs no encoding) and closes that
subscription, its task and its codec context when the last viewer's track stops (``DELETE``, or the
session's end when the peer goes away, see below). Colorization, metadata and the detector go on
regardless. Each encoded frame is
counted in ``chromastream_webrtc_encoded_frames_total{stream,codec}`` and its CPU time in
``chromastream_webrtc_encode_cpu_seconds`` (:class:`~chromastream.stream.metrics.EncoderMetrics`).

While the input is down
-----------------------
A camera that reboots stops the stream's frames for seconds; a browser would freeze on the last picture
with no sign of why. When no frame has come for ``idle_card_s``, the encoder keeps the output's clock: it
sends a "reconnecting" card (the last picture, dimmed and grey, with the words on it) a few times a second
until frames resume, and each card's data-channel message says ``{"card": "reconnecting"}``.

RTP timestamps and metadata
---------------------------
The packets carry the source's pts converted to the 90 kHz RTP clock, pushed forward where the source
goes back in time (a looped file), since receivers treat older timestamps as stale. Each data-channel
message is the same object that ``/api/streams/{id}/events`` sends (stream, pts, time_base, the
pipeline's metadata) plus ``rtp_time``, the 90 kHz timestamp of its frame before the sender's random
origin: a receiver matches metadata to pictures by a constant offset (``RTCRtpReceiver`` frame pts in
aiortc, ``requestVideoFrameCallback``'s ``rtpTimestamp`` in a browser).

Session lifetimes
-----------------
A WHEP or WHIP session holds a slot (a viewer of the stream's ``max_viewers``, a publisher's stream in the
pipeline) from the moment its offer is answered. A client that posts an offer and goes away without
``DELETE`` would hold it for ever: ICE may even succeed, but DTLS never completes and nothing in the
WebRTC library times such a peer out. Each session is therefore watched (:func:`transport_lost`): one
that does not reach ``connected`` (ICE and DTLS) within ``connect_timeout_s``, whose connection fails or is
closed by the peer, or that leaves ``connected`` for longer than ``disconnect_grace_s``, is closed and its
slot freed; a publisher's stream is removed with it. Each close is counted with its reason
(:class:`~chromastream.stream.metrics.SessionMetrics`). aiortc has no ``disconnected`` state of its own:
a peer that vanishes after connecting is reported ``failed``/``closed`` once its ICE consent checks fail
(about 30 s); the grace covers any other way of leaving ``connected``.

Nothing per frame on the event loop
-----------------------------------
Turning an output frame into an ``av.VideoFrame``, drawing the "reconnecting" card, encoding, and taking
the luma of a publisher's decoded picture all cost time in proportion to the picture's size, which a
client chooses (the size of the stream it adds or publishes). They run in executor threads; the loop only
passes packets along.

Loopback
--------
aioice leaves 127.0.0.1 out of its host candidates (``aioice.ice.get_host_addresses``) and has no
option to include it; :func:`allow_loopback_candidates` wraps that function so a server bound to, or
tested on, 127.0.0.1 can be reached. The wrapper only adds a candidate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from fractions import Fraction
from functools import partial
from typing import Any, Protocol

import av
import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import SessionDescription

from chromastream.errors import ChromastreamError
from chromastream.stream.av_glue import (
    NVENC,
    h264_level,
    live_h264_encoder,
    nvenc_options,
    to_video_frame,
    x264_options,
)
from chromastream.stream.frames import EndOfStream, Frame, OutputFrame, SourceEvent
from chromastream.stream.metrics import EncoderMetrics, SessionMetrics
from chromastream.stream.sources._common import frame_luma

logger = logging.getLogger("chromastream.stream.webrtc")

RTP_CLOCK = 90_000
RTP_TIME_BASE = Fraction(1, RTP_CLOCK)
#: Codecs the shared encoders produce, in order of preference.
CODECS = ("VP8", "H264")
DEFAULT_BITRATE = 1_500_000
DEFAULT_KEYFRAME_INTERVAL = 60
#: Seconds without a frame before the "reconnecting" card is shown, and the card's repeat period.
IDLE_CARD_S = 1.0
CARD_PERIOD_S = 0.25
#: Packets a viewer may hold before it is considered behind and resynchronized on a keyframe.
VIEWER_QUEUE = 30
#: Seconds a session has to connect (ICE and DTLS), and a connected one may stay disconnected, before it
#: is closed (the defaults of ``webrtc.connect_timeout_s`` and ``webrtc.disconnect_grace_s``).
CONNECT_TIMEOUT_S = 15.0
DISCONNECT_GRACE_S = 10.0


class WebRTCError(ChromastreamError):
    """Signalling failed for a reason the client can fix (bad SDP, no usable codec)."""


class TooManyViewers(WebRTCError):
    """The stream already has ``max_viewers`` viewers."""


class UnknownSession(WebRTCError):
    """No viewer or publisher has that id (closed already, or never existed)."""


class Subscription(Protocol):
    """The part of the pipeline's subscription used here: an async iterator that ends with the stream."""

    def __aiter__(self) -> AsyncIterator[OutputFrame]: ...

    def close(self) -> None: ...


class FrameFeed(Protocol):
    """What viewers need from the pipeline: one subscription per encoder."""

    def subscribe(self, stream_id: str, maxsize: int = 2) -> Any: ...


# --------------------------------------------------------------------------------------------- helpers


_loopback_installed = False


def allow_loopback_candidates() -> None:
    """Make aioice offer 127.0.0.1 as a host candidate (idempotent; see the module docstring)."""
    global _loopback_installed
    if _loopback_installed:
        return
    import aioice.ice

    original: Callable[[bool, bool], list[str]] = aioice.ice.get_host_addresses

    def with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = list(original(use_ipv4, use_ipv6))
        if use_ipv4 and "127.0.0.1" not in addresses:
            addresses.append("127.0.0.1")
        return addresses

    aioice.ice.get_host_addresses = with_loopback
    _loopback_installed = True


def peer_connection() -> RTCPeerConnection:
    """A peer with no outside STUN/TURN: host candidates only, so nothing outside this network is asked."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


def frame_event(frame: OutputFrame) -> dict[str, Any]:
    """The per-frame metadata object sent to clients, keyed by stream id and pts.

    The pipeline's own metadata comes first and wins; the keys are only filled in where it lacks them,
    so a client can always match an event to a frame.
    """
    event: dict[str, Any] = dict(frame.metadata)
    event.setdefault("stream", frame.stream_id)
    event.setdefault("pts", frame.pts)
    event.setdefault("time_base", f"{frame.time_base.numerator}/{frame.time_base.denominator}")
    event.setdefault("index", frame.index)
    return event


def to_json(event: dict[str, Any]) -> str:
    """Compact JSON; anything exotic a stage put in the metadata is written as text instead of failing."""
    return json.dumps(event, separators=(",", ":"), default=str)


def reconnecting_card(last: OutputFrame | None, stream_id: str) -> av.VideoFrame:
    """The picture shown while a stream's input is down: its last frame dimmed and without colour (or a
    dark 640x480 frame before any), with "reconnecting" written across it."""
    import cv2

    if last is not None:
        y = (last.y.astype(np.uint16) * 2 // 5 + 10).astype(np.uint8)
        full_range = last.full_range
    else:
        y = np.full((480, 640), 16, np.uint8)
        full_range = False
    height, width = y.shape
    scale = max(width / 640.0, 0.4)
    status = "reconnecting..." if last is not None else "connecting..."
    for text, dy in ((status, 0.0), (stream_id, 1.3)):
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, round(2 * scale)))
        org = ((width - tw) // 2, int(height / 2 + th / 2 + dy * th * 1.6))
        cv2.putText(y, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, 235, max(1, round(2 * scale)), cv2.LINE_AA)
    grey = np.full((height // 2, width // 2), 128, np.uint8)
    card = OutputFrame(stream_id, -1, None, RTP_TIME_BASE, y, grey, grey, full_range, time.monotonic())
    return to_video_frame(card)


def _parse_sdp(sdp: str) -> SessionDescription:
    try:
        return SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises whatever the malformed line triggers
        raise WebRTCError(f"the SDP offer cannot be parsed: {exc}") from exc


def offered_codec(sdp: str) -> str:
    """The codec the shared encoders should use for this offer: the first of :data:`CODECS` it has."""
    description = _parse_sdp(sdp)
    video = [m for m in description.media if m.kind == "video"]
    if not video:
        raise WebRTCError("the SDP offer has no video section")
    names = {c.mimeType.split("/", 1)[-1].upper() for c in video[0].rtp.codecs}
    for codec in CODECS:
        if codec in names:
            return codec
    raise WebRTCError(f"the offer has no codec this server sends ({', '.join(CODECS)})")


def _prefer(transceiver: Any, codec: str) -> None:
    capabilities = RTCRtpSender.getCapabilities("video").codecs
    chosen = [c for c in capabilities if c.mimeType.upper() == f"VIDEO/{codec}"]
    if codec == "H264":  # aiortc's packetizer is packetization-mode 1; keep one profile
        chosen = chosen[:1]
    rtx = [c for c in capabilities if c.mimeType.lower() == "video/rtx"]
    transceiver.setCodecPreferences(chosen + rtx)


def _wrap_keyframe_requests(sender: RTCRtpSender, request: Callable[[], None]) -> None:
    """Forward the sender's PLI/FIR handling to the shared encoder (see the module docstring)."""
    original = getattr(sender, "_send_keyframe", None)
    if not callable(original):
        return

    def send_keyframe() -> None:
        original()
        request()

    sender._send_keyframe = send_keyframe  # type: ignore[method-assign]


async def transport_lost(pc: RTCPeerConnection, connect_timeout: float, disconnect_grace: float) -> str:
    """Wait until ``pc``'s session should end and say why (one of
    :data:`~chromastream.stream.metrics.SESSION_EXPIRY_REASONS`): ``connect_timeout`` when it is not
    ``connected`` within ``connect_timeout`` seconds of the call, ``failed`` or ``closed`` when its
    connection state becomes that, ``disconnected`` when, once connected, it stays in any other state for
    ``disconnect_grace`` seconds. Returns only then; the caller closes the session."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()

    def on_change() -> None:
        changed.set()

    pc.on("connectionstatechange", on_change)
    try:
        deadline: float | None = loop.time() + connect_timeout
        connected_once = False
        while True:
            changed.clear()
            state = pc.connectionState
            if state in ("failed", "closed"):
                return state
            if state == "connected":
                connected_once, deadline = True, None
            elif deadline is None:  # it was connected and is not any more
                deadline = loop.time() + disconnect_grace
            if deadline is None:
                await changed.wait()
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return "disconnected" if connected_once else "connect_timeout"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)
    finally:
        pc.remove_listener("connectionstatechange", on_change)


_EXPIRY_TEXT = {
    "connect_timeout": "it did not connect (ICE and DTLS) in time",
    "failed": "its connection failed",
    "closed": "its peer closed the connection",
    "disconnected": "it stayed disconnected past the grace period",
}


def _stop_watching(task: asyncio.Task[None] | None) -> None:
    """Cancel a session's watcher, unless it is the caller (a watcher closing its own session)."""
    if task is not None and task is not asyncio.current_task():
        task.cancel()


def _parse_offer(sdp: str) -> RTCSessionDescription:
    if "v=0" not in sdp[:64] or "m=" not in sdp:
        raise WebRTCError("the body is not an SDP offer (it must start with 'v=0' and have media)")
    # aiortc answers an offer without a DTLS fingerprint, then fails in the background when it connects.
    for media in _parse_sdp(sdp).media:
        if media.dtls is None or not media.dtls.fingerprints:
            raise WebRTCError(f"the offer's {media.kind} section has no DTLS fingerprint (a=fingerprint)")
    return RTCSessionDescription(sdp=sdp, type="offer")


async def _close_peer(pc: RTCPeerConnection) -> None:
    """Close ``pc`` whatever state an offer left it in: aiortc's ``close`` fails on a transceiver that
    never got a transport (an offer whose BUNDLE group names a missing section), and the caller is
    reporting the offer's own error."""
    try:
        await pc.close()
    except Exception:
        logger.debug("closing a peer after a failed offer", exc_info=True)


# ------------------------------------------------------------------------------------ shared encoding


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One encoded picture shared by all viewers of a stream, with the metadata of its frame."""

    packet: av.Packet[Any]
    keyframe: bool
    event: dict[str, Any]


class _ViewerQueue:
    """A viewer's bounded packet queue. Overflow empties it and waits for a keyframe (named policy:
    RESYNC_ON_KEYFRAME), because a predicted stream cannot lose a single packet and stay decodable."""

    def __init__(self, request_keyframe: Callable[[], None], maxsize: int = VIEWER_QUEUE) -> None:
        self._items: deque[EncodedFrame | None] = deque()
        self._maxsize = maxsize
        self._ready = asyncio.Event()
        self._request_keyframe = request_keyframe
        self.waiting_for_keyframe = True
        self.resyncs = 0
        self.ended = False

    def put(self, item: EncodedFrame) -> None:
        if self.ended:
            return
        if self.waiting_for_keyframe:
            if not item.keyframe:
                return
            self.waiting_for_keyframe = False
        if len(self._items) >= self._maxsize:
            self._items.clear()
            self.resyncs += 1
            self.waiting_for_keyframe = not item.keyframe
            if self.waiting_for_keyframe:
                self._request_keyframe()
                return
        self._items.append(item)
        self._ready.set()

    def end(self) -> None:
        self.ended = True
        self._items.append(None)
        self._ready.set()

    async def get(self) -> EncodedFrame | None:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()


class StreamEncoder:
    """Encodes one stream's output once (per codec) and fans the packets out to its viewers."""

    def __init__(
        self,
        feed: FrameFeed,
        stream_id: str,
        codec: str,
        *,
        bitrate: int = DEFAULT_BITRATE,
        keyframe_interval: int = DEFAULT_KEYFRAME_INTERVAL,
        h264_encoder: str = "auto",
        on_idle: Callable[[StreamEncoder], None] | None = None,
        on_end: Callable[[StreamEncoder], None] | None = None,
        metrics: EncoderMetrics | None = None,
    ) -> None:
        if codec not in CODECS:
            raise WebRTCError(f"unsupported codec {codec!r}")
        self.h264_encoder = h264_encoder
        """``webrtc.h264_encoder``: which H.264 encoder to use (:func:`live_h264_encoder`)."""
        self.encoder: str | None = None
        """The FFmpeg encoder in use (``libvpx``, ``libx264``, ``h264_nvenc``); ``None`` before the first
        frame."""
        self.stream_id = stream_id
        self.codec = codec
        self.frames_encoded = 0
        self.cards_sent = 0
        self._feed = feed
        self._bitrate = bitrate
        self._keyframe_interval = keyframe_interval
        self._on_idle = on_idle
        self._on_end = on_end
        self._metrics = metrics
        self.ended = False
        self._queues: set[_ViewerQueue] = set()
        self._reserved = 0  # tracks made for viewers whose peers have not connected yet
        self._context: av.VideoCodecContext | None = None
        self._force_keyframe = True
        self._since_keyframe = 0
        self._last_rtp: int | None = None
        self._rtp_offset = 0
        self._task: asyncio.Task[None] | None = None
        self._subscription: Any = None

    @property
    def viewers(self) -> int:
        return len(self._queues)

    @property
    def running(self) -> bool:
        """Subscribed to the stream and encoding (it has a viewer that is connected)."""
        return self._task is not None

    def reserve(self) -> None:
        """A viewer's track will :meth:`attach` once its peer connects; until then the encoder stays the
        stream's shared one (its hub keeps it) without encoding anything."""
        self._reserved += 1

    def attach(self) -> _ViewerQueue:
        self._reserved = max(0, self._reserved - 1)
        queue = _ViewerQueue(self.request_keyframe)
        self._queues.add(queue)
        self.request_keyframe()
        if self._task is None:
            self._subscription = self._feed.subscribe(self.stream_id, maxsize=2)
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"encode-{self.stream_id}-{self.codec}"
            )
        return queue

    def detach(self, queue: _ViewerQueue) -> None:
        self._queues.discard(queue)
        if not self._queues:
            self._shutdown()

    def release(self) -> None:
        """A reserved track ended before it attached: the encoder is let go if nobody else uses it."""
        self._reserved = max(0, self._reserved - 1)
        if not self._queues:
            self._shutdown()

    def request_keyframe(self) -> None:
        self._force_keyframe = True

    def _shutdown(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        self._task = None
        if self._on_idle is not None and not self._reserved:
            self._on_idle(self)

    async def close(self) -> None:
        task = self._task
        for queue in list(self._queues):
            queue.end()
        self._queues.clear()
        self._shutdown()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        subscription = self._subscription
        frames = aiter(subscription)
        last: OutputFrame | None = None
        waiting: asyncio.Future[OutputFrame] | None = None
        idle_since = time.monotonic()
        try:
            while True:
                if waiting is None:
                    waiting = asyncio.ensure_future(anext(frames))
                # The pending read is never cancelled on a timeout: the subscription stays intact.
                timeout = CARD_PERIOD_S if time.monotonic() - idle_since >= IDLE_CARD_S else IDLE_CARD_S
                done, _ = await asyncio.wait({waiting}, timeout=timeout)
                if not done:
                    await self._send_card(loop, last)
                    continue
                try:
                    frame = waiting.result()
                except StopAsyncIteration:
                    break
                waiting = None
                idle_since = time.monotonic()
                last = frame
                event = frame_event(frame)
                await self._send(loop, partial(to_video_frame, frame), self._rtp_time(frame), event)
            self.ended = self._subscription is subscription  # not closed by the last viewer leaving
        except asyncio.CancelledError:
            pass
        except Exception:
            self.ended = True
            logger.exception("encoder of stream %s failed; its viewers are disconnected", self.stream_id)
        finally:
            if waiting is not None:
                if waiting.done():
                    if not waiting.cancelled():
                        waiting.exception()  # retrieved: the end of the subscription is no error
                else:
                    waiting.cancel()
            for queue in list(self._queues):
                queue.end()
            if self._task is asyncio.current_task():
                self._queues.clear()
                self._shutdown()
            if self.ended and self._on_end is not None:
                self._on_end(self)

    async def _send_card(self, loop: asyncio.AbstractEventLoop, last: OutputFrame | None) -> None:
        """One "reconnecting" card, timed on from the last picture so receivers keep playing."""
        step = round(CARD_PERIOD_S * RTP_CLOCK)
        rtp_time = (
            (self._last_rtp + step) if self._last_rtp is not None else round(time.monotonic() * RTP_CLOCK)
        )
        self._last_rtp = rtp_time
        self.cards_sent += 1
        card = partial(reconnecting_card, last, self.stream_id)
        await self._send(loop, card, rtp_time, {"stream": self.stream_id, "card": "reconnecting"})

    async def _send(
        self,
        loop: asyncio.AbstractEventLoop,
        picture: Callable[[], av.VideoFrame],
        rtp_time: int,
        event: dict[str, Any],
    ) -> None:
        """Make the picture and encode it in an executor (both cost time in proportion to its size),
        then hand the packet to every viewer."""
        force = self._force_keyframe or self._since_keyframe + 1 >= self._keyframe_interval
        self._force_keyframe = False
        packet, cpu_s = await loop.run_in_executor(None, self._encode_picture, picture, force)
        if self._metrics is not None:
            self._metrics.count(self.stream_id, self.codec, cpu_s)
        if packet is None:
            return
        packet.pts = rtp_time
        packet.dts = rtp_time
        packet.time_base = RTP_TIME_BASE
        keyframe = bool(packet.is_keyframe)
        self._since_keyframe = 0 if keyframe else self._since_keyframe + 1
        self.frames_encoded += 1
        event["rtp_time"] = rtp_time % (1 << 32)
        item = EncodedFrame(packet, keyframe, event)
        for queue in list(self._queues):
            queue.put(item)

    def _rtp_time(self, frame: OutputFrame) -> int:
        if frame.pts is None:
            ts = round(frame.ingest_time * RTP_CLOCK)
        else:
            ts = round(frame.pts * frame.time_base * RTP_CLOCK)
        ts += self._rtp_offset
        if self._last_rtp is not None and ts <= self._last_rtp:
            step = RTP_CLOCK // 30
            self._rtp_offset += self._last_rtp + step - ts
            ts = self._last_rtp + step
        self._last_rtp = ts
        return ts

    def _encode_picture(
        self, picture: Callable[[], av.VideoFrame], keyframe: bool
    ) -> tuple[av.Packet[Any] | None, float]:
        """Runs in an executor: the picture made and encoded, with the CPU time this thread spent on both."""
        start = time.thread_time()
        packet = self._encode(picture(), keyframe)
        return packet, time.thread_time() - start

    def _encode(self, video: av.VideoFrame, keyframe: bool) -> av.Packet[Any] | None:
        """Runs in an executor: one frame in, at most one packet out (no lag, no B-frames)."""
        context = self._context
        if context is None or context.width != video.width or context.height != video.height:
            context = self._context = self._open(video.width, video.height)
            keyframe = True
        # The encoder sees a frame counter as its clock; the caller restores the stream's own time.
        video.pts = self.frames_encoded
        video.time_base = context.time_base
        video.pict_type = av.video.frame.PictureType.I if keyframe else av.video.frame.PictureType.NONE
        data = b"".join(bytes(p) for p in context.encode(video))
        if not data:
            return None
        packet = av.Packet(data)
        if keyframe or self._looks_like_keyframe(data):
            packet.is_keyframe = True
        return packet

    def _looks_like_keyframe(self, data: bytes) -> bool:
        if self.codec == "VP8":
            return not data[0] & 0x01  # VP8 frame tag: bit 0 clear on key frames
        return b"\x00\x00\x01\x65" in data or b"\x00\x00\x01\x67" in data  # IDR slice or SPS

    def _open(self, width: int, height: int) -> av.VideoCodecContext:
        if self.codec == "VP8":
            context = av.CodecContext.create("libvpx", "w")
            context.options = {
                "deadline": "realtime",
                "cpu-used": "8",
                "lag-in-frames": "0",
                "error-resilient": "1",
                "static-thresh": "1",
                "undershoot-pct": "100",
                "overshoot-pct": "15",
                "bufsize": str(self._bitrate),
            }
            context.qmin, context.qmax = 2, 56
            context.thread_count = 1
        else:
            context = self._open_h264(width, height)
        self.encoder = context.name
        assert isinstance(context, av.VideoCodecContext)
        context.width, context.height = width, height
        context.pix_fmt = "yuv420p"
        context.bit_rate = self._bitrate
        context.time_base = Fraction(1, 30)
        context.framerate = Fraction(30, 1)
        context.gop_size = max(self._keyframe_interval, 1)
        return context

    def _open_h264(self, width: int, height: int) -> av.VideoCodecContext:
        """The H.264 encoder (libx264 or NVENC, ``webrtc.h264_encoder``) with its live options.

        The SPS states the level the picture needs (:func:`h264_level`: 3.1 allows at most 1280x720). The
        SDP keeps aiortc's ``profile-level-id`` (``42001f``/``42e01f``, level 3.1): aiortc matches H.264
        codecs by profile only, and browsers decode beyond the level they announce (headless Chromium
        plays 1080p at level 4.0 under ``42e01f``, ``tests/test_hw_video.py``; docs/PERFORMANCE.md,
        "Encoder choice")."""
        level = h264_level(width, height, 30, self._bitrate)
        name = live_h264_encoder(self.h264_encoder)
        context = av.CodecContext.create(name, "w")
        assert isinstance(context, av.VideoCodecContext)
        if name == NVENC:
            context.options = {
                **nvenc_options(self._bitrate, self._keyframe_interval),
                "profile": "baseline",
                "level": level,
            }
        else:
            context.options = {**x264_options(width, height, "live"), "level": level}
            context.profile = "Baseline"
        return context


class EncodedVideoTrack(MediaStreamTrack):
    """A viewer's video track: the shared packets of its stream, metadata sent as each one leaves.

    It joins its stream's encoder on the first ``recv()``, which aiortc's sender makes once the peer is
    connected, so a session that never connects never starts the encoder (see "Encode only while watched").
    """

    kind = "video"

    def __init__(self, encoder: StreamEncoder, on_event: Callable[[dict[str, Any]], None]) -> None:
        super().__init__()
        self._encoder = encoder
        encoder.reserve()
        self._queue: _ViewerQueue | None = None
        self._on_event = on_event
        self.frames_sent = 0

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        if self._queue is None:
            try:
                self._queue = self._encoder.attach()
            except Exception as exc:  # the stream went away before the peer connected
                logger.info(
                    "stream %s: a viewer connected after its stream ended (%s)", self._encoder.stream_id, exc
                )
                self.stop()
                raise MediaStreamError from exc
        item = await self._queue.get()
        if item is None:
            self.stop()
            raise MediaStreamError
        self.frames_sent += 1
        self._on_event(item.event)
        return item.packet

    def request_keyframe(self) -> None:
        self._encoder.request_keyframe()

    def stop(self) -> None:
        if self.readyState == "live":
            if self._queue is not None:
                self._encoder.detach(self._queue)
            else:
                self._encoder.release()
        super().stop()


# ------------------------------------------------------------------------------------------- viewers


@dataclass(eq=False)
class Viewer:
    """One WHEP session: its peer, its track and, if the client opened one, its data channel."""

    id: str
    stream_id: str
    pc: RTCPeerConnection
    track: EncodedVideoTrack | None = None
    channel: RTCDataChannel | None = None
    created: float = field(default_factory=time.monotonic)
    messages_sent: int = 0
    watcher: asyncio.Task[None] | None = None
    """Closes the session when it does not connect in time or loses its transport."""

    def send_event(self, event: dict[str, Any]) -> None:
        channel = self.channel
        if channel is None or channel.readyState != "open":
            return
        try:
            channel.send(to_json(event))
            self.messages_sent += 1
        except Exception:  # an exception escaping here would close the whole peer connection
            logger.warning("viewer %s: metadata not sent", self.id, exc_info=True)


# ------------------------------------------------------------------------------------------ ingest


class WhipSource:
    """A live :class:`~chromastream.stream.frames.Source` fed by a WebRTC publisher's video track.

    Only the luma of each received picture is used (the colorizer's input); chroma the publisher sent is
    ignored. Odd sizes are cropped to even, as the 4:2:0 output needs. The source ends when the publisher
    hangs up (the track ends) and ``close()`` closes the peer.
    """

    live = True

    def __init__(self, stream_id: str, pc: RTCPeerConnection) -> None:
        self.stream_id = stream_id
        self.frames_received = 0
        self._pc = pc
        self._track: MediaStreamTrack | None = None
        self._track_ready = asyncio.Event()
        self._closed = False

    def set_track(self, track: MediaStreamTrack) -> None:
        if self._track is None and track.kind == "video":
            self._track = track
            self._track_ready.set()

    async def events(self) -> AsyncIterator[SourceEvent]:
        await self._track_ready.wait()
        track = self._track
        assert track is not None
        index = 0
        while not self._closed:
            try:
                received = await track.recv()
            except MediaStreamError:
                break
            if not isinstance(received, av.VideoFrame):
                continue
            y, full_range = await asyncio.to_thread(frame_luma, received)
            self.frames_received += 1
            yield Frame(
                stream_id=self.stream_id,
                index=index,
                pts=received.pts,
                time_base=Fraction(received.time_base) if received.time_base else RTP_TIME_BASE,
                y=y,
                full_range=full_range,
                ingest_time=time.monotonic(),
            )
            index += 1
        yield EndOfStream(self.stream_id)

    async def close(self) -> None:
        self._closed = True
        self._track_ready.set()
        if self._track is not None:
            self._track.stop()
        await self._pc.close()


@dataclass(eq=False)
class Publisher:
    """One WHIP session: its peer and the source its video feeds."""

    id: str
    stream_id: str
    pc: RTCPeerConnection
    source: WhipSource
    watcher: asyncio.Task[None] | None = None
    """Closes the session (and removes its stream) when it does not connect in time or loses its
    transport."""


# -------------------------------------------------------------------------------------------- hub


class WebRTCHub:
    """Owns every peer connection of the server: WHEP viewers, WHIP publishers and shared encoders.

    ``add_source`` is how a publisher's stream enters the pipeline (the server passes a function that
    builds the stream's config and calls ``pipeline.add_stream``); ``remove_source`` takes it out again.
    Sessions that do not connect within ``connect_timeout`` seconds or lose their transport (see the
    module docstring) are closed by the hub itself; ``metrics`` counts every session opened and closed, and
    ``encoder_metrics`` every frame encoded and its CPU time.
    """

    def __init__(
        self,
        feed: FrameFeed,
        *,
        add_source: Callable[[str, WhipSource], Any] | None = None,
        remove_source: Callable[[str], Any] | None = None,
        max_viewers: int = 8,
        bitrate: int = DEFAULT_BITRATE,
        keyframe_interval: int = DEFAULT_KEYFRAME_INTERVAL,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        disconnect_grace: float = DISCONNECT_GRACE_S,
        h264_encoder: str = "auto",
        metrics: SessionMetrics | None = None,
        encoder_metrics: EncoderMetrics | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._feed = feed
        self._add_source = add_source
        self._remove_source = remove_source
        self.max_viewers = max_viewers
        self.connect_timeout = connect_timeout
        self.disconnect_grace = disconnect_grace
        self._metrics = metrics
        self._encoder_metrics = encoder_metrics
        self._bitrate = bitrate
        self._keyframe_interval = keyframe_interval
        self._h264_encoder = h264_encoder
        self._on_change = on_change
        self.viewers: dict[str, Viewer] = {}
        self.publishers: dict[str, Publisher] = {}
        self._encoders: dict[tuple[str, str], StreamEncoder] = {}
        self._closing = False
        self._background: set[asyncio.Task[None]] = set()

    def viewer_count(self, stream_id: str | None = None) -> int:
        return sum(1 for v in self.viewers.values() if stream_id is None or v.stream_id == stream_id)

    def encoders(self) -> list[StreamEncoder]:
        """The shared encoders running now (a viewer that has not connected yet starts none)."""
        return [e for e in self._encoders.values() if e.running]

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def _opened(self, kind: str) -> None:
        if self._metrics is not None:
            self._metrics.count_open(kind)

    def _closed(self, kind: str, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.count_close(kind, reason)

    def _watch(self, kind: str, session_id: str, pc: RTCPeerConnection) -> asyncio.Task[None]:
        """Start the task that closes a session once :func:`transport_lost` says it should end."""

        async def watch() -> None:
            reason = await transport_lost(pc, self.connect_timeout, self.disconnect_grace)
            logger.info("%s session %s ended by the server: %s", kind, session_id, _EXPIRY_TEXT[reason])
            try:
                if kind == "whep":
                    await self.close_viewer(session_id, reason)
                else:
                    await self.close_publisher(session_id, reason)
            except UnknownSession:
                pass  # closed meanwhile by its client or its stream
            except Exception:
                logger.exception("%s session %s: closing it failed", kind, session_id)

        task = asyncio.get_running_loop().create_task(watch(), name=f"{kind} session {session_id}")
        self._background.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._background.discard)
        return task

    def _encoder(self, stream_id: str, codec: str) -> StreamEncoder:
        key = (stream_id, codec)
        encoder = self._encoders.get(key)
        if encoder is None:
            encoder = StreamEncoder(
                self._feed,
                stream_id,
                codec,
                bitrate=self._bitrate,
                keyframe_interval=self._keyframe_interval,
                h264_encoder=self._h264_encoder,
                on_idle=self._forget_encoder,
                on_end=self._encoder_ended,
                metrics=self._encoder_metrics,
            )
            self._encoders[key] = encoder
        return encoder

    def _forget_encoder(self, encoder: StreamEncoder) -> None:
        key = (encoder.stream_id, encoder.codec)
        if self._encoders.get(key) is encoder:
            del self._encoders[key]

    def _encoder_ended(self, encoder: StreamEncoder) -> None:
        """The stream ended or was removed: hang up its viewers rather than leave them on a still picture."""
        if self._encoder_metrics is not None:
            self._encoder_metrics.forget(encoder.stream_id, encoder.codec)
        if not self._closing:
            task = asyncio.get_running_loop().create_task(
                self.close_viewers_of(encoder.stream_id, "stream_ended")
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def whep(self, stream_id: str, offer_sdp: str) -> tuple[Viewer, str]:
        """Answer a viewer's offer; the caller has checked that the stream exists."""
        if self._closing:
            raise WebRTCError("the server is shutting down")
        if self.viewer_count(stream_id) >= self.max_viewers:
            raise TooManyViewers(f"stream {stream_id!r} already has {self.max_viewers} viewers (the limit)")
        offer = _parse_offer(offer_sdp)
        codec = offered_codec(offer_sdp)
        pc = peer_connection()
        viewer = Viewer(uuid.uuid4().hex, stream_id, pc)
        self.viewers[viewer.id] = viewer
        try:
            transceiver = pc.addTransceiver("video", direction="sendonly")
            _prefer(transceiver, codec)

            @pc.on("datachannel")
            def on_datachannel(channel: RTCDataChannel) -> None:
                viewer.channel = channel

                @channel.on("message")
                def on_message(message: Any) -> None:
                    try:  # clients may ping; anything they send is only logged
                        logger.debug("viewer %s says %r", viewer.id, message)
                    except Exception:
                        logger.warning("viewer %s: message handler failed", viewer.id, exc_info=True)

            await pc.setRemoteDescription(offer)
            track = EncodedVideoTrack(self._encoder(stream_id, codec), viewer.send_event)
            viewer.track = track
            sender = pc.addTrack(track)
            _wrap_keyframe_requests(sender, track.request_keyframe)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            self.viewers.pop(viewer.id, None)  # never opened: not counted
            if viewer.track is not None:
                viewer.track.stop()
            await _close_peer(pc)
            if isinstance(exc, WebRTCError):
                raise
            raise WebRTCError(f"the offer cannot be answered: {exc}") from exc
        viewer.watcher = self._watch("whep", viewer.id, pc)
        self._opened("whep")
        self._changed()
        return viewer, pc.localDescription.sdp

    async def close_viewer(self, viewer_id: str, reason: str = "client") -> None:
        """End a viewer's session and free its slot; ``reason`` is counted (see
        :data:`~chromastream.stream.metrics.SESSION_CLOSE_REASONS`)."""
        viewer = self.viewers.pop(viewer_id, None)
        if viewer is None:
            raise UnknownSession(f"no viewer {viewer_id!r}")
        _stop_watching(viewer.watcher)
        if viewer.track is not None:
            viewer.track.stop()
        self._closed("whep", reason)
        await _close_peer(viewer.pc)
        self._changed()

    async def close_viewers_of(self, stream_id: str, reason: str = "stream_ended") -> None:
        for viewer in [v for v in self.viewers.values() if v.stream_id == stream_id]:
            with contextlib.suppress(UnknownSession):
                await self.close_viewer(viewer.id, reason)

    async def whip(self, stream_id: str, offer_sdp: str) -> tuple[Publisher, str]:
        """Accept a publisher: its video becomes a live source named ``stream_id`` in the pipeline."""
        if self._closing:
            raise WebRTCError("the server is shutting down")
        if self._add_source is None:
            raise WebRTCError("this server does not take WebRTC ingest")
        offer = _parse_offer(offer_sdp)
        pc = peer_connection()
        source = WhipSource(stream_id, pc)
        publisher = Publisher(uuid.uuid4().hex, stream_id, pc, source)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            source.set_track(track)

        try:
            await pc.setRemoteDescription(offer)
            if source._track is None:
                raise WebRTCError("the offer publishes no video track")
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            await _close_peer(pc)
            if isinstance(exc, WebRTCError):
                raise
            raise WebRTCError(f"the offer cannot be answered: {exc}") from exc
        result = self._add_source(stream_id, source)
        if asyncio.iscoroutine(result):
            try:
                await result
            except BaseException:
                await pc.close()
                raise
        self.publishers[publisher.id] = publisher
        publisher.watcher = self._watch("whip", publisher.id, pc)
        self._opened("whip")
        self._changed()
        return publisher, pc.localDescription.sdp

    async def close_publisher(self, publisher_id: str, reason: str = "client") -> None:
        """End a publisher's session and remove its stream; ``reason`` is counted as for viewers."""
        publisher = self.publishers.pop(publisher_id, None)
        if publisher is None:
            raise UnknownSession(f"no publisher {publisher_id!r}")
        _stop_watching(publisher.watcher)
        self._closed("whip", reason)
        await publisher.source.close()
        if self._remove_source is not None:
            result = self._remove_source(publisher.stream_id)
            if asyncio.iscoroutine(result):
                with contextlib.suppress(Exception):
                    await result
        self._changed()

    async def close(self) -> None:
        """Close every peer (viewers first, so nothing waits on a stream being removed)."""
        self._closing = True
        for viewer_id in list(self.viewers):
            with contextlib.suppress(UnknownSession):
                await self.close_viewer(viewer_id, "shutdown")
        for encoder in list(self._encoders.values()):
            await encoder.close()
        for publisher_id in list(self.publishers):
            with contextlib.suppress(UnknownSession):
                await self.close_publisher(publisher_id, "shutdown")
