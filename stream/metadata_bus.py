"""Per-stream metadata on an MQTT message bus (``metadata_sink: mqtt://host:port/prefix``).

What a building's other systems want to know about the streams without holding an HTTP connection open
per stream: whether each stream is up, what the deepfake detector says about it, a once-a-second summary
of how it runs, and, when asked for, every frame's metadata. Topics (``docs/MQTT.md`` has the table and a
JSON Schema for each message, in ``docs/schemas/``)::

    PREFIX/nodes/NODE                    retained, QoS 1: online / offline (the Last Will says offline)
    PREFIX/streams/ID/status             retained, QoS 1: up / down, with the pipeline's state
    PREFIX/streams/ID/verdict            retained, QoS 1: the detector's verdict, on every change
    PREFIX/streams/ID/summary            QoS 0, every second: fps in/out, latency p50/p95, drops, viewers
    PREFIX/streams/ID/frames             QoS 0, only with ``?frames=1``: the per-frame metadata object

**Who publishes.** Whoever runs a stream's pipeline publishes it: the bus is started by
:func:`chromastream.stream.server.create_app` next to a pipeline it owns, never next to a router. With
``serve --workers N`` each worker process therefore publishes its own streams with its own connection
(client id ``chromastream-NODE``, node ``HOST-wINDEX``), and the front publishes nothing. The front could
have published from the event streams it follows already, but then the bus would go down with the front
while the workers serve on, the per-second figures would cross a process boundary once more, and every
other way of running pipelines (a process on another machine running ``create_app``) would need its own
relay; with the bus beside the pipeline each of them publishes with no extra work, and the Last Will of
each connection describes exactly the streams that die with it.

**A Last Will covers one topic,** so it is the node's: a stream is up when its status says ``up`` *and*
the node named in that status is ``online``. A node that stops cleanly marks its streams ``down``
(``stopped``) and itself ``offline`` before it disconnects; one that crashes is marked ``offline`` by
the broker. Node names must be unique per broker (two connections with one client id take each other's
place over and over): the default, the host name, is unique per machine; a second server on one machine
sets ``?node=NAME``.

**It never slows or stops serving.** Nothing here runs on the frame path: the bus reads the pipeline's
snapshots twice a second and follows each stream through a subscription of its own (a small queue that
drops its oldest frame when the bus falls behind, as any slow viewer's does). Messages wait in one
bounded :class:`~chromastream.stream.queues.DropQueue`: summaries and frames are dropped oldest first
(``chromastream_bus_dropped_total``), while statuses, verdicts and the node's state are *state*, kept as
the latest value per topic and sent before anything else; they are never dropped, only merged when they
change faster than they can be sent. A broker that cannot be reached, at start or later, is one warning
line per outage; the connection is retried with backoff by itself and every current state is published
again once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from chromastream.errors import ChromastreamError
from chromastream.stream.urls import redact_url

if TYPE_CHECKING:
    import aiomqtt
    from prometheus_client import CollectorRegistry

    from chromastream.stream.metrics import BusMetrics
    from chromastream.stream.queues import DropQueue

logger = logging.getLogger("chromastream.stream.metadata_bus")

SCHEMES = {"mqtt": 1883, "mqtts": 8883}
DEFAULT_PREFIX = "chromastream"
NODE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: Query parameters of the sink URL and what they mean (``docs/MQTT.md``).
OPTIONS = ("frames", "node", "ca")
#: Kinds of message (of :data:`chromastream.stream.metrics.BUS_KINDS`) that are the latest value of a
#: state: retained, QoS 1, never dropped.
STATE_KINDS = frozenset({"node", "status", "verdict"})

POLL_S = 0.5
"""How often the pipeline's snapshots are read (a status change is published within this)."""
SUMMARY_S = 1.0
"""Period of the per-stream summary."""
QUEUE_SIZE = 256
"""Summaries and frames held while the broker is slow or away, before the oldest is dropped."""
FRAME_QUEUE = 8
"""Frames the bus's subscription to a stream holds before it drops its oldest (as a slow viewer does)."""
KEEPALIVE_S = 15
"""MQTT keepalive: the broker publishes the Last Will about 1.5 times this after a silent connection
(a process that dies outright closes its socket, and the will is published at once)."""
CONNECT_TIMEOUT_S = 5.0
STOP_FLUSH_S = 2.0
"""How long a stopping server waits for its last states (streams down, node offline) to be sent."""
RETRY_S = (0.5, 5.0)
"""First and longest pause between connection attempts (doubling, with jitter)."""
REMEMBER_REMOVED = 256
"""Removed streams whose ``down`` status is still published again after a reconnect."""


class BusUrlError(ChromastreamError, ValueError):
    """The ``metadata_sink`` URL cannot be used; the message says why (never with the password)."""


@dataclass(frozen=True)
class BusTarget:
    """Where and how to publish, as the ``metadata_sink`` URL says:
    ``mqtt[s]://[user:password@]host[:port][/prefix][?frames=1&node=NAME&ca=/path/ca.pem]``."""

    url: str
    host: str
    port: int
    tls: bool
    prefix: str
    username: str | None = None
    password: str | None = None
    frames: bool = False
    """Also publish every frame's metadata (off by default: that is a message per frame per stream)."""
    node: str | None = None
    """This server's name in topics and client ids; ``None`` is the host name."""
    ca: Path | None = None
    """CA certificates that ``mqtts://`` trusts instead of the system's."""

    @property
    def shown(self) -> str:
        """The URL as logs show it (:func:`~chromastream.stream.urls.redact_url`)."""
        return redact_url(self.url)


def parse_sink_url(url: str) -> BusTarget:
    """The :class:`BusTarget` of ``url``, or :class:`BusUrlError` saying what is wrong with it."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BusUrlError(f"malformed URL {shown}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise BusUrlError(f"must be mqtt://host[:port][/prefix] or mqtts://..., got {shown}")
    if not parts.hostname:
        raise BusUrlError(f"no host in {shown} (expected {scheme}://host[:port][/prefix])")
    if port == 0:
        raise BusUrlError(f"port 0 in {shown}")
    if "#" in url:
        raise BusUrlError(f"no '#' (a topic wildcard or a fragment) belongs in {shown}")
    prefix = unquote(parts.path).strip("/") or DEFAULT_PREFIX
    if any(c in prefix for c in "+#\0") or "//" in prefix or prefix.startswith("$"):
        raise BusUrlError(f"prefix {prefix!r}: topic levels without +, #, empty levels or a leading $")
    options: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in OPTIONS:
            raise BusUrlError(f"unknown option {name!r} in {shown}; expected some of {', '.join(OPTIONS)}")
        options[name] = value
    frames = options.get("frames", "0")
    if frames not in ("0", "1"):
        raise BusUrlError(f"frames must be 0 or 1, got {frames!r}")
    node = options.get("node")
    if node is not None and not NODE_NAME.fullmatch(node):
        raise BusUrlError(f"node must be 1-64 of A-Z a-z 0-9 _ . -, got {node!r}")
    ca = Path(options["ca"]).expanduser() if options.get("ca") else None
    if ca is not None:
        if scheme != "mqtts":
            raise BusUrlError("ca is for mqtts:// only")
        if not ca.is_file():
            raise BusUrlError(f"ca: no such file {ca}")
    return BusTarget(
        url=url,
        host=parts.hostname,
        port=port or SCHEMES[scheme],
        tls=scheme == "mqtts",
        prefix=prefix,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        frames=frames == "1",
        node=node,
        ca=ca,
    )


def default_node() -> str:
    """This machine's host name as a node name (characters outside :data:`NODE_NAME` become ``-``)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64]
    return name or "chromastream"


def _dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), default=str)


def _now() -> float:
    return round(time.time(), 3)


@dataclass(frozen=True)
class _Message:
    kind: str
    topic: str
    payload: str

    @property
    def state(self) -> bool:
        return self.kind in STATE_KINDS


class _Tracked:
    """What the bus remembers of one stream between two looks at it."""

    def __init__(self, info: dict[str, Any], now: float) -> None:
        self.id: str = info["id"]
        self.url: str | None = info.get("url")
        self.status: tuple[str, str, str | None] | None = None
        self.verdict: dict[str, Any] | None = None
        self.latencies: list[float] = []
        self.since = now
        self.frames_in = int(info.get("frames_in", 0))
        self.frames_out = int(info.get("frames_out", 0))
        self.drops = int(info.get("drops", 0))
        self.reader: asyncio.Task[None] | None = None


class MetadataBus:
    """Publishes the streams of ``pipeline`` (the server's ``StreamsAPI``) to the broker ``target``.

    ``viewers`` gives a stream's viewer count as the API shows it; ``registry`` takes the bus's metrics.
    ``node_suffix`` tells apart processes of one server that publish under one node name (a worker's
    ``-w1``). :meth:`start` and :meth:`stop` run on the server's event loop.
    """

    def __init__(
        self,
        target: BusTarget,
        pipeline: Any,
        viewers: Callable[[str], int],
        registry: CollectorRegistry,
        node_suffix: str = "",
    ) -> None:
        from chromastream.stream.metrics import BusMetrics
        from chromastream.stream.queues import DropPolicy, DropQueue

        self.target = target
        self.pipeline = pipeline
        self.viewers = viewers
        self.node = f"{target.node or default_node()}{node_suffix}"[:64]
        self.metrics: BusMetrics = BusMetrics(registry)
        self._queue: DropQueue[_Message] = DropQueue(
            QUEUE_SIZE, DropPolicy.DROP_OLDEST, on_drop=lambda m: self.metrics.dropped.labels(m.kind).inc()
        )
        self._current: dict[str, _Message] = {}  # state topics: the value to publish again on reconnect
        self._pending: dict[str, _Message] = {}  # state topics not yet sent on this connection
        self._removed: deque[str] = deque()
        self._wake = asyncio.Event()
        self._flushed = asyncio.Event()
        self._streams: dict[str, _Tracked] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = False

    # --- topics ------------------------------------------------------------------------------------

    @property
    def node_topic(self) -> str:
        return f"{self.target.prefix}/nodes/{self.node}"

    def stream_topic(self, stream_id: str, kind: str) -> str:
        return f"{self.target.prefix}/streams/{stream_id}/{kind}"

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start publishing in the background (the connection is made there, never waited for here)."""
        if self._tasks:
            return
        self._set_state("node", self.node_topic, self._node_message("online"))
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._connection(), name="metadata bus"),
            loop.create_task(self._watch(), name="metadata bus watch"),
        ]
        logger.info("metadata bus: publishing to %s as node %s", self.target.shown, self.node)

    async def stop(self) -> None:
        """Mark every stream ``down`` (``stopped``) and the node ``offline``, give those messages up to
        :data:`STOP_FLUSH_S` to go out, and disconnect cleanly (so the broker keeps the Last Will)."""
        if not self._tasks:
            return
        connection, watch = self._tasks
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        for tracked in list(self._streams.values()):
            self._forget(tracked, "stopped", None)
        self._queue.clear()
        self._current.pop(self.node_topic, None)
        self._set_state("node", self.node_topic, self._node_message("offline", "stopped"))
        if self._connected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flushed.wait(), STOP_FLUSH_S)
        connection.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await connection
        self._tasks = []

    # --- what is published -------------------------------------------------------------------------

    def _node_message(self, status: str, reason: str | None = None) -> str:
        return _dumps({"node": self.node, "status": status, "reason": reason, "time": _now()})

    def _set_state(self, kind: str, topic: str, payload: str) -> None:
        message = _Message(kind, topic, payload)
        self._current[topic] = message
        self._pending.pop(topic, None)  # the latest value goes last, after what changed before it
        self._pending[topic] = message
        self._flushed.clear()
        self._wake.set()

    def _put(self, kind: str, topic: str, payload: str) -> None:
        self._queue.put_nowait(_Message(kind, topic, payload))
        self._flushed.clear()
        self._wake.set()

    def _publish_status(self, tracked: _Tracked, state: str, error: str | None) -> None:
        up = state in ("starting", "running")
        key = ("up" if up else "down", state, error)
        if key == tracked.status:
            return
        tracked.status = key
        message = {
            "stream": tracked.id,
            "node": self.node,
            "status": key[0],
            "state": state,
            "url": tracked.url,
            "error": error,
            "time": _now(),
        }
        self._set_state("status", self.stream_topic(tracked.id, "status"), _dumps(message))

    def _publish_verdict(self, tracked: _Tracked, deepfake: dict[str, Any], pts: int | None) -> None:
        label = str(deepfake.get("label", "off"))
        previous = None if tracked.verdict is None else str(tracked.verdict.get("label"))
        if label == previous:
            tracked.verdict = deepfake
            return
        tracked.verdict = deepfake
        message = {
            "stream": tracked.id,
            "node": self.node,
            "verdict": label,
            "previous": previous,
            "probability": deepfake.get("probability"),
            "faces": len(deepfake.get("faces") or []),
            "pts": pts,
            "detector": deepfake.get("detector"),
            "time": _now(),
        }
        self._set_state("verdict", self.stream_topic(tracked.id, "verdict"), _dumps(message))

    def _publish_summary(self, tracked: _Tracked, info: dict[str, Any], now: float) -> None:
        elapsed = max(now - tracked.since, 1e-6)
        frames_in, frames_out = int(info.get("frames_in", 0)), int(info.get("frames_out", 0))
        drops = int(info.get("drops", 0))
        latencies = sorted(tracked.latencies)
        verdict = tracked.verdict or info.get("deepfake") or {"label": "off", "probability": None}
        message = {
            "stream": tracked.id,
            "node": self.node,
            "time": _now(),
            "interval_s": round(elapsed, 3),
            "state": info.get("state"),
            "fps_in": round(max(frames_in - tracked.frames_in, 0) / elapsed, 3),
            "fps_out": round(max(frames_out - tracked.frames_out, 0) / elapsed, 3),
            "latency_ms_p50": _percentile(latencies, 0.50),
            "latency_ms_p95": _percentile(latencies, 0.95),
            "drops": max(drops - tracked.drops, 0),
            "frames_in": frames_in,
            "frames_out": frames_out,
            "drops_total": drops,
            "viewers": self._viewers(tracked.id),
            "verdict": verdict.get("label", "off"),
            "probability": verdict.get("probability"),
        }
        tracked.since, tracked.latencies = now, []
        tracked.frames_in, tracked.frames_out, tracked.drops = frames_in, frames_out, drops
        self._put("summary", self.stream_topic(tracked.id, "summary"), _dumps(message))

    def _viewers(self, stream_id: str) -> int:
        try:
            return int(self.viewers(stream_id))
        except Exception:  # a viewer count is never worth a summary
            return 0

    # --- following the pipeline --------------------------------------------------------------------

    async def _watch(self) -> None:
        """Twice a second: statuses of new, changed and removed streams; each stream's summary once a
        second; a subscription to each running stream for its latencies, verdicts and frames."""
        while True:
            now = time.monotonic()
            try:
                infos = [_as_dict(info) for info in self.pipeline.streams()]
            except Exception:
                logger.debug("metadata bus: reading the streams failed", exc_info=True)
                infos = []
            seen = set()
            for info in infos:
                seen.add(info["id"])
                tracked = self._streams.get(info["id"])
                if tracked is None:
                    tracked = self._streams[info["id"]] = _Tracked(info, now)
                tracked.url = info.get("url")
                self._publish_status(tracked, str(info.get("state")), info.get("error"))
                unfollowed = tracked.reader is None or tracked.reader.done()  # new, or re-added under its id
                if unfollowed and info.get("state") in ("starting", "running", "reconnecting"):
                    self._follow(tracked)
                if now - tracked.since >= SUMMARY_S - POLL_S / 4:  # on the look nearest a second on
                    self._publish_summary(tracked, info, now)
            for stream_id in set(self._streams) - seen:
                self._forget(self._streams[stream_id], "removed", None)
            await asyncio.sleep(POLL_S)

    def _follow(self, tracked: _Tracked) -> None:
        try:
            subscription = self.pipeline.subscribe(tracked.id, maxsize=FRAME_QUEUE)
        except Exception:  # removed between the snapshot and now: the next look forgets it
            return
        tracked.reader = asyncio.get_running_loop().create_task(
            self._read(tracked, subscription), name=f"metadata bus {tracked.id}"
        )

    async def _read(self, tracked: _Tracked, subscription: Any) -> None:
        from chromastream.stream.webrtc import frame_event

        topic = self.stream_topic(tracked.id, "frames")
        try:
            async for frame in subscription:
                metadata = frame.metadata
                latency = metadata.get("latency_ms")
                if isinstance(latency, int | float):
                    tracked.latencies.append(float(latency))
                deepfake = metadata.get("deepfake")
                if isinstance(deepfake, dict):
                    self._publish_verdict(tracked, deepfake, frame.pts)
                if self.target.frames:
                    self._put("frame", topic, _dumps(frame_event(frame)))
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("metadata bus: following stream %s failed", tracked.id)
        finally:
            subscription.close()

    def _forget(self, tracked: _Tracked, state: str, error: str | None) -> None:
        if tracked.reader is not None:
            tracked.reader.cancel()
        self._publish_status(tracked, state, error)
        self._streams.pop(tracked.id, None)
        self._current.pop(self.stream_topic(tracked.id, "verdict"), None)
        self._removed.append(tracked.id)
        while len(self._removed) > REMEMBER_REMOVED:
            old = self._removed.popleft()
            if old not in self._streams:
                self._current.pop(self.stream_topic(old, "status"), None)

    # --- the connection ----------------------------------------------------------------------------

    def _client(self) -> aiomqtt.Client:
        import aiomqtt

        target = self.target
        tls = None
        if target.tls:
            tls = ssl.create_default_context(cafile=str(target.ca) if target.ca else None)
        will = aiomqtt.Will(self.node_topic, self._node_message("offline", "lost"), qos=1, retain=True)
        return aiomqtt.Client(
            target.host,
            target.port,
            username=target.username,
            password=target.password,
            identifier=f"chromastream-{self.node}",
            will=will,
            keepalive=KEEPALIVE_S,
            timeout=CONNECT_TIMEOUT_S,
            tls_context=tls,
            logger=logging.getLogger("chromastream.stream.metadata_bus.mqtt"),
        )

    async def _connection(self) -> None:
        """Connect, publish, and when the broker cannot be reached or goes away, say so once and try
        again with backoff; every current state is published again on each new connection."""
        import aiomqtt

        from chromastream.stream.sources.rtsp import Backoff

        backoff = Backoff(initial=RETRY_S[0], maximum=RETRY_S[1])
        rng = random.Random()
        attempt, warned, ever = 0, False, False
        while True:
            reason = "connection closed"
            try:
                async with self._client() as client:
                    attempt = 0
                    self._connected = True
                    self.metrics.connected.set(1)
                    if warned or ever:
                        logger.info("metadata bus: connected to %s again", self.target.shown)
                    warned, ever = False, True
                    node = self._current[self.node_topic]  # the node's state first, then every stream's
                    self._pending = {self.node_topic: node, **self._current}
                    await self._session(client)
            except aiomqtt.MqttError as exc:
                reason = str(exc) or type(exc).__name__
            except OSError as exc:  # a TLS handshake, a name that does not resolve
                reason = exc.strerror or str(exc)
            finally:
                self._connected = False
                self.metrics.connected.set(0)
            if not warned:
                what = "lost the connection to" if ever else "cannot reach"
                logger.warning(
                    "metadata bus: %s %s (%s); serving goes on, retrying in the background",
                    what,
                    self.target.shown,
                    reason,
                )
                warned = True
            else:
                logger.debug("metadata bus: %s still unreachable (%s)", self.target.shown, reason)
            attempt += 1
            await asyncio.sleep(backoff.delay(attempt, rng))

    async def _session(self, client: aiomqtt.Client) -> None:
        """Publish until the connection breaks: states first, then summaries and frames. The message
        iterator of the client ends with an error when the broker goes away, even while nothing is sent."""

        async def gone() -> None:
            async for _ in client.messages:
                pass

        loop = asyncio.get_running_loop()
        watcher = loop.create_task(gone(), name="metadata bus connection")
        sender = loop.create_task(self._send(client), name="metadata bus sender")
        try:
            done, _ = await asyncio.wait({watcher, sender}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watcher, sender):
                task.cancel()
            await asyncio.gather(watcher, sender, return_exceptions=True)
        for task in done:
            task.result()  # the error that ended the session
        raise _closed()

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            if self._pending:
                topic, message = next(iter(self._pending.items()))
                await client.publish(topic, message.payload, qos=1, retain=True)
                if self._pending.get(topic) is message:
                    del self._pending[topic]
            elif self._queue.qsize():
                message = await self._queue.get()
                await client.publish(message.topic, message.payload, qos=0)
            else:
                self._flushed.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            self.metrics.messages.labels(message.kind).inc()


def _closed() -> Exception:
    import aiomqtt

    return aiomqtt.MqttError("the broker closed the connection")


def _percentile(ordered: list[float], q: float) -> float | None:
    """The ``q`` quantile of sorted values (nearest rank), or ``None`` when there are none."""
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return round(ordered[index], 3)


def _as_dict(info: Any) -> dict[str, Any]:
    return dict(info.to_json() if hasattr(info, "to_json") else info)
