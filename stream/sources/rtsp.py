"""An RTSP camera or media server as a live source that reconnects by itself, forever.

Three parts, each with one job:

* a **worker thread** per connection opens the stream with PyAV and decodes it (both block), handing each
  picture to the event loop with ``run_coroutine_threadsafe``;
* a **supervisor** task starts connections one after the other. A connection that ends with a
  *connection* error (refused, reset, timed out, the server closed the stream, 404 while a media server's
  path is not published yet) is retried after an exponential backoff with full jitter: attempt ``n`` waits
  a uniformly random time in ``[0, min(maximum, initial * factor ** (n - 1))]`` so that many cameras
  behind one failed switch do not reconnect in lockstep. The count restarts once a connection delivers
  frames again. Anything else (no decoder for the codec, credentials rejected, no video in the stream) is
  fatal and raised from ``events()``;
* a **watchdog** inside the supervisor declares a connection stalled when it delivered no frame for
  ``stall_timeout`` seconds while the socket stays open (a frozen encoder, a server that keeps the session
  but stops sending, packets that no longer decode) and moves on to a new connection.

PyAV cannot interrupt a blocking read from another thread, so a stalled connection is *abandoned*, not
killed: it is marked aborted, its frames are ignored from then on, and its thread exits and closes its
input when its next read returns or times out (``read_timeout``). Each connection owns its container, so a
new one can open while the old one winds down.

Timeouts: ``open_timeout`` bounds opening (connect, DESCRIBE/SETUP/PLAY and probing the stream) and
``read_timeout`` bounds the wait for each packet; both are enforced by PyAV's interrupt callback. The RTSP
demuxer's own ``timeout`` option (socket I/O, in microseconds; FFmpeg >= 5 dropped ``stimeout``) is set to
``read_timeout`` as well, so a silent socket fails inside FFmpeg too. Audio is not set up
(``allowed_media_types=video``) and the frame rate is not probed, so opening takes one round of RTSP
requests and the first key frame rather than a second of probing.

After a reconnection the source emits ``Reset(stream_id, "reconnect")`` before the first new frame and
its pts continue after the last one given out (the camera's new RTP clock starts anywhere).

Credentials in the URL are never logged: logs and error messages show it as
:func:`~chromastream.stream.urls.redact_url` does everywhere (``rtsp://***@host/path``), and FFmpeg errors
are reduced to their reason because their text contains the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal
from urllib.parse import urlsplit

import av
import av.error

from chromastream.stream.frames import U8, Frame, Reset
from chromastream.stream.hw_decode import live_decoder, live_hwaccel
from chromastream.stream.queues import DropPolicy
from chromastream.stream.sources._common import (
    AudioTap,
    InvalidSourceError,
    RetryRecord,
    SourceError,
    Stopped,
    ThreadedSource,
    Timeline,
    av_reason,
    frame_luma,
)
from chromastream.stream.urls import redact_url

logger = logging.getLogger("chromastream.stream.sources")

SCHEMES = ("rtsp", "rtsps")
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322}
Transport = Literal["tcp", "udp"]

#: FFmpeg errors that no retry can fix; everything else a connection raises is retried.
_FATAL = (
    av.error.DecoderNotFoundError,
    av.error.ProtocolNotFoundError,
    av.error.DemuxerNotFoundError,
    av.error.HTTPUnauthorizedError,
    av.error.HTTPForbiddenError,
    av.error.PatchWelcomeError,
    av.error.OptionNotFoundError,
    SourceError,
)
#: Errors a connection raises when the network or the server is the problem.
_CONNECTION = (
    OSError,  # refused, reset, unreachable, timed out (FFmpeg's errno-based errors derive from it)
    EOFError,  # the server closed the stream
    av.error.EOFError,
    av.error.ExitError,  # PyAV's interrupt callback: open_timeout or read_timeout ran out
    av.error.InvalidDataError,  # a half-written reply from a server going down
    av.error.HTTPNotFoundError,  # a media server's path that is not published (yet)
    av.error.HTTPServerError,
    av.error.HTTPOtherClientError,
    av.error.HTTPTooManyRequestsError,
    av.error.HTTPBadRequestError,
    av.error.UnknownError,
)


def is_connection_error(exc: BaseException) -> bool:
    """Whether reconnecting may cure ``exc`` (the supervisor retries only these)."""
    if isinstance(exc, _FATAL):
        return False
    return isinstance(exc, (*_CONNECTION, _Stalled, _Ended))


class _Stalled(Exception):
    """The watchdog's verdict on a connection that stopped delivering frames."""


class _Ended(Exception):
    """The server ended the stream normally: for a camera that means it went away."""


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter between reconnection attempts."""

    initial: float = 0.5
    """Ceiling of the first wait, in seconds."""
    factor: float = 2.0
    """How much the ceiling grows per failed attempt."""
    maximum: float = 10.0
    """The ceiling never grows beyond this: a camera that comes back is found within this long."""
    jitter: bool = True
    """Wait a uniformly random time up to the ceiling ("full jitter") rather than the ceiling itself."""

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.factor < 1 or self.maximum < self.initial:
            raise InvalidSourceError(f"invalid backoff {self} (need 0 < initial <= maximum, factor >= 1)")

    def ceiling(self, attempt: int) -> float:
        exponent = min(max(attempt - 1, 0), 64)  # no float overflow for a camera down for weeks
        return float(min(self.maximum, self.initial * self.factor**exponent))

    def delay(self, attempt: int, rng: random.Random) -> float:
        ceiling = self.ceiling(attempt)
        return rng.uniform(0, ceiling) if self.jitter else ceiling


def check_rtsp_url(url: str) -> None:
    """Raise :class:`InvalidSourceError` unless ``url`` is a usable ``rtsp://`` / ``rtsps://`` URL."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidSourceError(f"malformed RTSP URL {shown}: {exc}") from None
    if parts.scheme.lower() not in SCHEMES:
        raise InvalidSourceError(f"not an RTSP URL: {shown} (expected rtsp://host[:port]/path)")
    if not parts.hostname:
        raise InvalidSourceError(f"RTSP URL without a host: {shown} (expected rtsp://host[:port]/path)")
    if port == 0:
        raise InvalidSourceError(f"RTSP URL with port 0: {shown}")
    if any(c.isspace() for c in url):
        raise InvalidSourceError(f"RTSP URL contains white space: {shown}")


@dataclass(eq=False)
class _Connection:
    """One attempt: shared between its worker thread (writes the times) and the supervisor."""

    number: int
    abort: threading.Event = field(default_factory=threading.Event)
    done: asyncio.Future[BaseException | None] | None = None
    thread: threading.Thread | None = None
    opened_at: float | None = None
    last_frame_at: float | None = None
    frames: int = 0


class RtspSource(ThreadedSource):
    """Frames of an RTSP stream; reconnects on connection errors forever, raises anything else.

    ``transport``: ``tcp`` (RTP interleaved in the RTSP connection: works through NAT and firewalls, no
    loss) or ``udp``. A slow consumer gets the newest frame; the ones it missed are dropped and counted.
    ``stats`` counts frames, drops, reconnects, stalls and the recent retry delays. ``seed`` fixes the
    jitter for reproducible tests. ``decode`` is ``sources.decode``: NVDEC or software
    (:func:`~chromastream.stream.hw_decode.live_hwaccel`); the device is checked once per process, apart
    from any connection, so a GPU that refuses never looks like a camera that is down.
    """

    live = True

    def __init__(
        self,
        stream_id: str,
        url: str,
        transport: Transport = "tcp",
        open_timeout: float = 10.0,
        read_timeout: float = 5.0,
        backoff: Backoff | None = None,
        stall_timeout: float = 10.0,
        decode: str = "auto",
        *,
        seed: int | None = None,
    ) -> None:
        check_rtsp_url(url)
        if transport not in ("tcp", "udp"):
            raise InvalidSourceError(f"unknown RTSP transport {transport!r}; expected 'tcp' or 'udp'")
        for name, value in (
            ("open_timeout", open_timeout),
            ("read_timeout", read_timeout),
            ("stall_timeout", stall_timeout),
        ):
            if not value > 0:
                raise InvalidSourceError(f"{name} must be positive, got {value}")
        super().__init__(stream_id, DropPolicy.DROP_OLDEST, decode)
        self._url = url
        self.display_url = redact_url(url)
        self.transport = transport
        self.open_timeout = open_timeout
        self.read_timeout = read_timeout
        self.backoff = backoff or Backoff()
        self.stall_timeout = stall_timeout
        self._rng = random.Random(seed)
        self._supervisor: asyncio.Task[None] | None = None
        self._current: _Connection | None = None
        self._connected_before = False
        self._down_since: float | None = None
        self._reported_down = False
        self._timeline: Timeline | None = None
        self._index = 0

    def __repr__(self) -> str:
        return f"RtspSource({self.stream_id!r}, {self.display_url!r}, transport={self.transport!r})"

    @property
    def av_options(self) -> dict[str, str]:
        """The demuxer options passed to FFmpeg (names as the bundled FFmpeg >= 7 spells them)."""
        return {
            "rtsp_transport": self.transport,
            "timeout": str(int(self.read_timeout * 1_000_000)),
            "allowed_media_types": "video",
            # No frame-rate probing: RTP timestamps time every frame, and FFmpeg would otherwise decode
            # ~20 frames (0.8 s at 25 fps) before open returns, on every reconnection.
            "fpsprobesize": "0",
        }

    def _begin(self) -> None:
        self._supervisor = asyncio.get_running_loop().create_task(
            self._supervise(), name=f"rtsp-supervisor-{self.stream_id}"
        )

    async def close(self) -> None:
        self._stop.set()
        connection = self._current
        if connection is not None:
            connection.abort.set()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await super().close()
        if connection is not None:
            await self._join(connection.thread, self.close_grace)

    # ------------------------------------------------------------------------------------ supervisor

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        try:
            while not self._stop.is_set():
                connection = _Connection(self.stats.connect_attempts + 1)
                connection.done = loop.create_future()
                self._current = connection
                self.stats.connect_attempts += 1
                connection.thread = threading.Thread(
                    target=self._worker,
                    args=(connection,),
                    name=f"rtsp-{self.stream_id}-{connection.number}",
                    daemon=True,
                )
                connection.thread.start()
                error = await self._watch(connection)
                if error is None or self._stop.is_set():
                    return
                if isinstance(error, SourceError):
                    raise error
                if not is_connection_error(error):
                    raise SourceError(f"{self.stream_id}: {self.display_url}: {av_reason(error)}") from None
                if connection.frames:
                    attempt = 0
                    # Down since its last frame, not since the watchdog noticed (stall_timeout later).
                    self._down_since = connection.last_frame_at or time.monotonic()
                elif self._down_since is None:
                    self._down_since = time.monotonic()
                attempt += 1
                reason = str(error) if isinstance(error, (_Stalled, _Ended)) else av_reason(error)
                self.stats.last_error = reason
                ceiling = self.backoff.ceiling(attempt)
                delay = self.backoff.delay(attempt, self._rng)
                self.stats.retries.append(RetryRecord(attempt, ceiling, delay))
                self._log_retry(reason, attempt, delay)
                await asyncio.sleep(delay)
        except SourceError as exc:
            logger.error("%s", exc)
            await self._end_with(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug, not the network: report it instead of retrying forever
            logger.exception("%s: the RTSP supervisor failed", self.stream_id)
            await self._end_with(SourceError(f"{self.stream_id}: {type(exc).__name__}: {exc}"))

    def _log_retry(self, reason: str, attempt: int, delay: float) -> None:
        """One warning when the stream goes down, not one per attempt: a camera that stays down for a day
        retries thousands of times, and thirty of them would bury everything else in the log. The
        attempts go on at debug level and are counted (``stats.connect_attempts``, exported as
        ``chromastream_connect_attempts_total``); the next state change is the reconnection, logged by
        :meth:`_opened`."""
        if self._reported_down:
            logger.debug(
                "%s: %s: %s; reconnect attempt %d in %.2f s",
                self.stream_id,
                self.display_url,
                reason,
                attempt,
                delay,
            )
            return
        self._reported_down = True
        logger.warning(
            "%s: %s: %s; reconnect attempt %d in %.2f s (retrying at most %g s apart until it is back; "
            "attempts are counted in metrics, not logged)",
            self.stream_id,
            self.display_url,
            reason,
            attempt,
            delay,
            self.backoff.maximum,
        )

    async def _watch(self, connection: _Connection) -> BaseException | None:
        """Wait for the connection to end; the watchdog ends it first when frames stop coming."""
        assert connection.done is not None
        check = min(0.25, self.stall_timeout / 4)
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(connection.done), check)
            except TimeoutError:
                pass
            opened = connection.opened_at
            if opened is None:
                continue
            quiet = time.monotonic() - max(opened, connection.last_frame_at or opened)
            if quiet > self.stall_timeout:
                connection.abort.set()
                self.stats.stalls += 1
                return _Stalled(f"no frame for {quiet:.1f} s (stalled)")

    async def _opened(self, connection: _Connection, time_base: Fraction, rate: Fraction) -> bool:
        """On the loop: a connection is up; count a reconnection and emit its Reset before any frame."""
        if connection is not self._current or connection.abort.is_set():
            return False
        if self._timeline is None:
            self._timeline = Timeline(time_base, rate)
        else:
            self._timeline.restart(time_base, rate)
        if self._connected_before:
            self.stats.reconnects += 1
            down = time.monotonic() - self._down_since if self._down_since is not None else 0.0
            logger.info(
                "%s: reconnected to %s (%d reconnection(s), down %.1f s)",
                self.stream_id,
                self.display_url,
                self.stats.reconnects,
                down,
            )
            await self._handover.put(Reset(self.stream_id, "reconnect"))
        else:
            logger.info("%s: connected to %s", self.stream_id, self.display_url)
        self._connected_before = True
        self._down_since = None
        self._reported_down = False
        return True

    async def _accept(self, connection: _Connection, raw_pts: int | None, y: U8, full_range: bool) -> None:
        """On the loop: number and time a frame of the current connection and hand it over."""
        if connection is not self._current or connection.abort.is_set() or self._timeline is None:
            return
        frame = Frame(
            stream_id=self.stream_id,
            index=self._index,
            pts=self._timeline(raw_pts),
            time_base=self._timeline.time_base,
            y=y,
            full_range=full_range,
            ingest_time=time.monotonic(),
        )
        self._index += 1
        self.stats.frames += 1
        await self._handover.put(frame)

    # ---------------------------------------------------------------------------------------- worker

    def _worker(self, connection: _Connection) -> None:
        outcome: BaseException | None = None
        try:
            self._read(connection)
            outcome = _Ended("the server ended the stream")
        except Stopped:
            outcome = None
        except BaseException as exc:
            outcome = exc
        if connection.abort.is_set() and not self._stop.is_set():
            outcome = None  # abandoned by the watchdog: the supervisor has moved on already
        loop = self._loop
        if loop is not None and connection.done is not None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits for this any more
                loop.call_soon_threadsafe(_settle, connection.done, outcome)

    def _read(self, connection: _Connection) -> None:
        container = av.open(
            self._url,
            options=self.av_options,
            timeout=(self.open_timeout, self.read_timeout),
            hwaccel=live_hwaccel(self.decode),
        )
        with container:
            if not container.streams.video:
                raise SourceError(f"{self.stream_id}: {self.display_url} has no video stream")
            video = container.streams.video[0]
            if video.codec_context is None or not video.codec_context.name:
                raise SourceError(f"{self.stream_id}: {self.display_url}: no decoder for its video codec")
            self.decoder = live_decoder(self.decode, video)
            rate = Fraction(video.average_rate or video.guessed_rate or 25)
            connection.opened_at = time.monotonic()
            if not self._call(self._opened(connection, _time_base(video), rate), connection.abort):
                return
            tap = AudioTap(self.stream_id, container.streams.audio[0]) if container.streams.audio else None
            streams = (video, tap.audio) if tap is not None else (video,)
            for packet in container.demux(*streams):
                if connection.abort.is_set() or self._stop.is_set():
                    raise Stopped
                if tap is not None and packet.stream.index == tap.audio.index:
                    timeline = self._timeline
                    offset = timeline.offset_seconds if timeline is not None else Fraction(0)
                    for chunk in tap.chunks(packet, offset):
                        self._call(self._handover.put(chunk), connection.abort)
                    continue
                for frame in self._decode(video, packet):
                    y, full_range = frame_luma(frame)
                    connection.last_frame_at = time.monotonic()
                    connection.frames += 1
                    self._call(self._accept(connection, frame.pts, y, full_range), connection.abort)

    def _decode(self, video: av.VideoStream, packet: av.Packet[Any]) -> list[av.VideoFrame]:
        try:
            return list(video.decode(packet))
        except av.error.EOFError:
            return []
        except _FATAL:
            raise
        except av.error.FFmpegError as exc:
            # Lost packets leave frames that reference missing pictures; skip until the next key frame.
            self.stats.skipped_packets += 1
            if self.stats.skipped_packets <= 5 or self.stats.skipped_packets % 100 == 0:
                logger.info(
                    "%s: skipped an undecodable packet (%s; %d so far)",
                    self.stream_id,
                    av_reason(exc),
                    self.stats.skipped_packets,
                )
            return []


def _time_base(video: av.VideoStream) -> Fraction:
    return Fraction(video.time_base) if video.time_base else Fraction(1, 90000)


def _settle(future: asyncio.Future[BaseException | None], outcome: BaseException | None) -> None:
    if not future.done():
        future.set_result(outcome)
