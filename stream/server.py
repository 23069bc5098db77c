"""The HTTP face of a running pipeline: viewer page, REST API, metadata events, metrics and signalling.

Every failure a client can cause is answered with a 4xx and a JSON ``{"error": ...}`` that says what to
fix; nothing a request sends can stop the server or the pipeline. Request bodies are capped at 64 KiB
(JSON and SDP alike): anything larger is refused before it is read into memory.

Authentication is one optional bearer token. API clients and signalling send ``Authorization: Bearer``;
GET requests may instead carry ``?token=``. The page is opened once with ``?token=`` and gets a session
cookie derived from the token (never the token itself), which it uses from then on; the cookie changes
things only from the server's own origin (:mod:`chromastream.stream.http_guard`). ``/healthz`` stays open
for probes.

Around every request :class:`~chromastream.stream.http_guard.HttpGuard` adds the security headers, checks
the Host and Origin of requests that change things and paces each client address; the handlers check the
capacity limits (``limits.*``) and, for sources added through the API, the source policy
(:mod:`chromastream.stream.source_policy`).

Metadata events are bounded per client: each SSE client has its own queue that drops its oldest event
when the client reads too slowly (policy DROP_OLDEST, counted in ``chromastream_sse_dropped_total``), and
the pipeline's subscription is drained by a separate task, so a slow reader never holds the pipeline.

``viewers`` in the API's stream objects is the number of WebRTC viewers (``chromastream_webrtc_viewers``).
The pipeline's own ``viewers`` counts its subscriptions, and all viewers of a stream share one
subscription through the shared encoder (see :mod:`chromastream.stream.webrtc`), so the server reports its own
count.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import signal
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from chromastream.errors import ChromastreamError
from chromastream.models.colorizer.hints import MAX_HINTS, Hint, HintError, parse_hint, parse_hints
from chromastream.stream import metrics as stream_metrics
from chromastream.stream.config import STREAM_ID, ConfigError, ServeConfig, StreamConfig, parse_config
from chromastream.stream.http_guard import (
    MAX_JSON_DEPTH,
    HttpGuard,
    Refusal,
    json_too_deep,
    protocol_logger,
)
from chromastream.stream.source_policy import SourcePolicy, SourceRefused
from chromastream.stream.webrtc import (
    TooManyViewers,
    UnknownSession,
    WebRTCError,
    WebRTCHub,
    WhipSource,
    allow_loopback_candidates,
    frame_event,
    to_json,
)

if TYPE_CHECKING:
    from chromastream.stream.deepfake import DeepfakeSampler
    from chromastream.stream.metadata_bus import MetadataBus
    from chromastream.stream.pipeline import Pipeline

logger = logging.getLogger("chromastream.stream.server")

MAX_BODY = 64 * 1024
SESSION_COOKIE = "chromastream_session"


class StreamsAPI(Protocol):
    """What the server needs from :class:`chromastream.stream.pipeline.Pipeline` (it is typed against
    this)."""

    registry: CollectorRegistry

    async def add_stream(self, cfg: Any, source: Any = None) -> Any: ...

    async def remove_stream(self, stream_id: str) -> None: ...

    def streams(self) -> list[Any]: ...

    def info(self, stream_id: str) -> Any: ...

    def subscribe(self, stream_id: str, maxsize: int = 2) -> Any: ...

    def set_hints(self, stream_id: str, hints: list[Hint]) -> None: ...

    def add_hint(self, stream_id: str, hint: Hint) -> None: ...

    def clear_hints(self, stream_id: str) -> None: ...

    def hints(self, stream_id: str) -> list[Hint]: ...

    def reset(self, stream_id: str) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@runtime_checkable
class StreamRouter(Protocol):
    """Streams that live in other processes: ``serve --workers N``'s
    :class:`chromastream.stream.workers.WorkerPool`.

    A server whose :class:`StreamsAPI` is also one of these forwards WHEP/WHIP signalling to the process
    that owns the stream (the peer connection lives there) and asks for fresh figures before it answers
    the stream list, a stream, ``/healthz`` or ``/metrics``; its viewer counts are the owners'.
    """

    async def forward(self, request: web.Request, stream_id: str, body: bytes) -> web.Response: ...

    async def refresh(self, *, metrics: bool = False) -> None: ...

    def viewer_count(self, stream_id: str) -> int: ...


class StreamConfigFactory(Protocol):
    def __call__(self, body: dict[str, Any]) -> StreamConfig: ...


# --------------------------------------------------------------------------------------- utilities


class ApiError(Refusal):
    """A request the server refuses: answered as ``status`` with ``{"error": message}``."""


def _json(data: Any, status: int = 200, **headers: str) -> web.Response:
    return web.Response(
        text=json.dumps(data, default=str), status=status, content_type="application/json", headers=headers
    )


def _stream_id(request: web.Request) -> str:
    stream_id = request.match_info["id"]
    if not STREAM_ID.fullmatch(stream_id):
        raise ApiError(400, f"bad stream id {stream_id!r}: use 1-64 of A-Z a-z 0-9 _ -")
    return stream_id


async def _read_json(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise ApiError(
            415,
            f"send JSON with Content-Type application/json (got {request.content_type or 'none'})",
        )
    text = await _read_text(request)
    if json_too_deep(text):
        raise ApiError(400, f"JSON nested too deeply: at most {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from None
    except RecursionError:  # the scan above makes this unreachable; kept as the last line of defence
        raise ApiError(400, f"JSON nested too deeply: at most {MAX_JSON_DEPTH} levels") from None


async def _read_text(request: web.Request) -> str:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, f"body too large: at most {MAX_BODY} bytes")
    data = await request.read()  # client_max_size enforces the cap on chunked bodies too
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "the body is not UTF-8 text") from None


def _info_json(info: Any) -> dict[str, Any]:
    data = info.to_json() if hasattr(info, "to_json") else dict(info)
    return dict(data)


# ------------------------------------------------------------------------------------------ metrics


class _ServerCollector(Collector):
    """Gauges read at scrape time from the live objects, so they can never drift from the truth."""

    def __init__(self, state: _State) -> None:
        self._state = state

    def collect(self) -> Iterable[Metric]:
        if self._state.router is None:  # routed streams: the workers report their own peers
            yield from self._peers()
        yield GaugeMetricFamily(
            "chromastream_sse_clients", "Clients reading metadata events", value=len(self._state.sse)
        )

    def _peers(self) -> Iterable[Metric]:
        hub = self._state.hub
        viewers = GaugeMetricFamily(
            "chromastream_webrtc_viewers", "WebRTC viewers connected, per stream", labels=["stream"]
        )
        per_stream: dict[str, int] = {}
        for viewer in hub.viewers.values():
            per_stream[viewer.stream_id] = per_stream.get(viewer.stream_id, 0) + 1
        for stream_id, count in sorted(per_stream.items()):
            viewers.add_metric([stream_id], count)
        yield viewers
        yield GaugeMetricFamily(
            "chromastream_webrtc_publishers", "WHIP publishers connected", value=len(hub.publishers)
        )
        encoders = GaugeMetricFamily(
            "chromastream_webrtc_encoders",
            "Shared encoders running (one per stream and codec, whatever the number of viewers)",
            labels=["stream", "codec"],
        )
        for encoder in hub.encoders():
            encoders.add_metric([encoder.stream_id, encoder.codec], 1)
        yield encoders


class _State:
    """Everything one app instance owns; kept on the app so handlers share it without globals."""

    def __init__(
        self,
        pipeline: StreamsAPI,
        config: ServeConfig,
        stream_config: StreamConfigFactory,
        unknown: tuple[type[BaseException], ...],
        duplicate: tuple[type[BaseException], ...],
        own_pipeline: bool,
        bus_node_suffix: str = "",
    ) -> None:
        self.pipeline = pipeline
        self.router = pipeline if isinstance(pipeline, StreamRouter) else None
        self.config = config
        self.stream_config = stream_config
        self.unknown = unknown
        self.duplicate = duplicate
        self.own_pipeline = own_pipeline
        self.sse: set[_SseClient] = set()
        self.whip_streams: dict[str, str] = {}  # stream id -> publisher id
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_errors = Counter(
            "chromastream_http_errors",
            "HTTP requests answered with an error, by status",
            ["status"],
            registry=self.registry,
        )
        self.sse_dropped = Counter(
            "chromastream_sse_dropped",
            "Metadata events dropped because an SSE client read too slowly (oldest first)",
            registry=self.registry,
        )
        self.loop_lag = stream_metrics.LoopLagMonitor(self.registry)
        self.hub = WebRTCHub(
            pipeline,
            add_source=self._add_whip_source,
            remove_source=self._remove_whip_source,
            max_viewers=config.webrtc.max_viewers,
            bitrate=config.webrtc.bitrate,
            keyframe_interval=config.webrtc.keyframe_interval,
            connect_timeout=config.webrtc.connect_timeout_s,
            disconnect_grace=config.webrtc.disconnect_grace_s,
            h264_encoder=config.webrtc.h264_encoder,
            metrics=stream_metrics.SessionMetrics(self.registry),
            encoder_metrics=stream_metrics.EncoderMetrics(self.registry),
        )
        self.registry.register(_ServerCollector(self))
        self.bus: MetadataBus | None = None
        if config.metadata_sink is not None and self.router is None:  # who runs the pipeline publishes
            from chromastream.stream.metadata_bus import MetadataBus, parse_sink_url

            target = parse_sink_url(config.metadata_sink)
            self.bus = MetadataBus(target, pipeline, self.viewers, self.registry, bus_node_suffix)

    async def _add_whip_source(self, stream_id: str, source: WhipSource) -> None:
        cfg = self.stream_config({"id": stream_id, "url": f"whip://{stream_id}"})
        await self.pipeline.add_stream(cfg, source)

    async def _remove_whip_source(self, stream_id: str) -> None:
        self.whip_streams.pop(stream_id, None)
        with contextlib.suppress(*self.unknown):
            await self.pipeline.remove_stream(stream_id)

    def require_stream(self, stream_id: str) -> Any:
        try:
            return self.pipeline.info(stream_id)
        except self.unknown:
            raise ApiError(404, f"no stream {stream_id!r}") from None

    def viewers(self, stream_id: str) -> int:
        if self.router is not None:
            return self.router.viewer_count(stream_id)
        return self.hub.viewer_count(stream_id)


STATE: web.AppKey[_State] = web.AppKey("chromastream_state", _State)
GUARD: web.AppKey[HttpGuard] = web.AppKey("chromastream_guard", HttpGuard)
SOURCE_POLICY: web.AppKey[SourcePolicy] = web.AppKey("chromastream_source_policy", SourcePolicy)


class _SseClient:
    """One metadata reader: a pump task drains the pipeline into a bounded deque the writer empties."""

    def __init__(self, subscription: Any, maxlen: int, dropped: Counter) -> None:
        self.subscription = subscription
        self.events: deque[dict[str, Any] | None] = deque()
        self.maxlen = maxlen
        self.dropped = dropped
        self.ready = asyncio.Event()
        self.pump: asyncio.Task[None] | None = None

    async def run_pump(self) -> None:
        try:
            async for frame in self.subscription:
                if len(self.events) >= self.maxlen:
                    self.events.popleft()
                    self.dropped.inc()
                self.events.append(frame_event(frame))
                self.ready.set()
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("metadata events: subscription failed")
        finally:
            self.events.append(None)
            self.ready.set()

    async def next(self) -> dict[str, Any] | None:
        while not self.events:
            self.ready.clear()
            await self.ready.wait()
        return self.events.popleft()

    def close(self) -> None:
        self.subscription.close()
        if self.pump is not None:
            self.pump.cancel()


# ------------------------------------------------------------------------------------- middlewares


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as JSON, every unexpected exception logged and answered 500, never raised further."""
    state = request.app[STATE]
    try:
        response = await handler(request)
    except Refusal as exc:
        state.http_errors.labels(str(exc.status)).inc()
        return _json({"error": exc.message}, status=exc.status, **exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        state.http_errors.labels(str(exc.status)).inc()
        # aiohttp's own errors (404 route, 405, 413 from the body cap) come as text: answer JSON too.
        message = exc.text if exc.text and not exc.text.startswith("<") else exc.reason
        if exc.status == 413:
            message = f"body too large: at most {MAX_BODY} bytes"
        keep = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")}
        return _json({"error": message}, status=exc.status, **keep)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        logger.exception("%s %s failed", request.method, request.path)
        state.http_errors.labels("500").inc()
        return _json({"error": "internal error; the server log has the details"}, status=500)
    return response


def _presented_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None
    if request.method in ("GET", "HEAD"):
        return request.query.get("token")
    return None


def _public(path: str) -> bool:
    return path == "/healthz" or path.startswith("/web/") or path == "/favicon.ico"


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[STATE].config.token
    if token and not _public(request.path):
        presented = _presented_token(request)
        if presented is None and request.app[GUARD].cookie_authenticates(
            request, request.cookies.get(SESSION_COOKIE)
        ):
            return await handler(request)
        if presented is None or not hmac.compare_digest(presented.encode(), token.encode()):
            reason = "missing" if presented is None else "wrong"
            raise ApiError(
                401,
                f"{reason} token: send 'Authorization: Bearer <token>' (or open the page once with ?token=)",
                **{"WWW-Authenticate": 'Bearer realm="chromastream"'},
            )
    return await handler(request)


@web.middleware
async def _refresh(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With a :class:`StreamRouter`, the answers that show live figures fetch them first."""
    router = request.app[STATE].router
    assert router is not None  # the middleware is only installed with a router
    target = request.match_info.handler
    if target in (list_streams, get_stream, healthz, metrics):
        await router.refresh(metrics=target is metrics)
    return await handler(request)


async def _forward(request: web.Request, stream_id: str, body: str = "") -> web.Response:
    """With a :class:`StreamRouter`: WebRTC signalling goes to the process that owns the stream (the peer
    connection lives there) once this server's own checks have passed, and its answer comes back."""
    state = request.app[STATE]
    assert state.router is not None
    try:
        response = await state.router.forward(request, stream_id, body.encode())
    except state.unknown:
        raise ApiError(404, f"no stream {stream_id!r}") from None
    except state.duplicate:
        raise ApiError(409, f"stream {stream_id!r} exists already") from None
    except ChromastreamError as exc:  # its worker is restarting
        raise ApiError(503, str(exc), **{"Retry-After": "2"}) from None
    if response.status >= 400:
        state.http_errors.labels(str(response.status)).inc()
    return response


# ----------------------------------------------------------------------------------------- handlers


def _web_dir() -> Path:
    return Path(str(resources.files("chromastream.stream") / "web"))


async def index(request: web.Request) -> web.StreamResponse:
    """The viewer page. Opened with ``?token=`` (checked by ``_auth``), it sets the session cookie and
    sends the browser to the page without the token, so the token leaves the address bar at once."""
    if request.app[STATE].config.token and "token" in request.query:
        response = web.Response(status=303, headers={"Location": "/", "Cache-Control": "no-store"})
        request.app[GUARD].set_session_cookie(request, response, SESSION_COOKIE)
        return response
    return web.FileResponse(_web_dir() / "index.html", headers={"Cache-Control": "no-cache"})


async def healthz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return _json({"ok": True, "streams": len(state.pipeline.streams())})


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.pipeline.streams()  # brings the sources' own counters (connection attempts, ...) into the metrics
    body = generate_latest(state.pipeline.registry) + generate_latest(state.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def list_streams(request: web.Request) -> web.Response:
    state = request.app[STATE]
    streams = []
    for info in state.pipeline.streams():
        data = _info_json(info)
        data["viewers"] = state.viewers(data["id"])
        streams.append(data)
    return _json({"streams": streams})


async def get_stream(request: web.Request) -> web.Response:
    state = request.app[STATE]
    stream_id = _stream_id(request)
    data = _info_json(state.require_stream(stream_id))
    data["viewers"] = state.viewers(stream_id)
    return _json(data)


async def add_stream(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await _read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, 'send an object like {"id": "cam1", "url": "rtsp://..."}')
    stream_id, url = body.get("id"), body.get("url")
    if not isinstance(stream_id, str) or not STREAM_ID.fullmatch(stream_id):
        raise ApiError(400, "'id' is required: 1-64 of A-Z a-z 0-9 _ -")
    if not isinstance(url, str) or not url.strip():
        raise ApiError(400, "'url' is required (rtsp://..., a file path, or synthetic://)")
    with request.app[GUARD].streams.reserve(len(state.pipeline.streams())):
        body = {**body, "url": await _allowed_source(request, stream_id, url)}
        try:
            cfg = state.stream_config(body)
        except (ChromastreamError, ValueError, TypeError) as exc:
            raise ApiError(400, str(exc)) from None
        try:
            info = await state.pipeline.add_stream(cfg)
        except state.duplicate:
            raise ApiError(409, f"stream {stream_id!r} exists already") from None
        except (ChromastreamError, ValueError) as exc:
            raise ApiError(400, str(exc)) from None
    return _json(_info_json(info), status=201, Location=f"/api/streams/{stream_id}")


async def _allowed_source(request: web.Request, stream_id: str, url: str) -> str:
    """``url`` as the source policy lets it be opened, or the policy's one 403 (the reason is logged)."""
    try:
        return await request.app[SOURCE_POLICY].check(url)
    except SourceRefused as exc:
        logger.info("refused source for stream %s from %s: %s", stream_id, request.remote, exc.reason)
        raise ApiError(403, str(exc)) from None


async def remove_stream(request: web.Request) -> web.Response:
    state = request.app[STATE]
    stream_id = _stream_id(request)
    state.require_stream(stream_id)
    publisher = state.whip_streams.pop(stream_id, None)
    if publisher is not None:
        with contextlib.suppress(UnknownSession):
            await state.hub.close_publisher(publisher)
    try:
        await state.pipeline.remove_stream(stream_id)
    except state.unknown:
        if publisher is None:
            raise ApiError(404, f"no stream {stream_id!r}") from None
    await state.hub.close_viewers_of(stream_id)
    return _json({"removed": stream_id})


def _hints_json(state: _State, stream_id: str) -> web.Response:
    return _json({"stream": stream_id, "hints": [h.to_json() for h in state.pipeline.hints(stream_id)]})


def _parse_hint_body(body: Any) -> list[Hint]:
    if isinstance(body, dict) and "hints" not in body:
        return [parse_hint(body)]
    return parse_hints(body)


async def get_hints(request: web.Request) -> web.Response:
    state = request.app[STATE]
    stream_id = _stream_id(request)
    state.require_stream(stream_id)
    return _hints_json(state, stream_id)


async def change_hints(request: web.Request) -> web.Response:
    """POST adds one hint or a list; PUT replaces them all; DELETE clears them."""
    state = request.app[STATE]
    stream_id = _stream_id(request)
    state.require_stream(stream_id)
    if request.method == "DELETE":
        state.pipeline.clear_hints(stream_id)
        return _hints_json(state, stream_id)
    body = await _read_json(request)
    try:
        hints = _parse_hint_body(body) if request.method == "POST" else parse_hints(body)
    except HintError as exc:
        raise ApiError(400, str(exc)) from None
    try:
        if request.method == "PUT":
            state.pipeline.set_hints(stream_id, hints)
        else:
            existing = len(state.pipeline.hints(stream_id))
            if existing + len(hints) > MAX_HINTS:
                raise HintError(f"too many hints: {existing} + {len(hints)} (at most {MAX_HINTS})")
            for hint in hints:
                state.pipeline.add_hint(stream_id, hint)
    except HintError as exc:
        raise ApiError(400, str(exc)) from None
    except state.unknown:
        raise ApiError(404, f"no stream {stream_id!r}") from None
    return _hints_json(state, stream_id)


async def reset_stream(request: web.Request) -> web.Response:
    state = request.app[STATE]
    stream_id = _stream_id(request)
    state.require_stream(stream_id)
    state.pipeline.reset(stream_id)
    return _json({"reset": stream_id})


async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: one ``data: {json}`` per output frame, ``id`` the frame's pts."""
    state = request.app[STATE]
    stream_id = _stream_id(request)
    state.require_stream(stream_id)
    with request.app[GUARD].sse.hold(stream_id):
        return await _send_events(request, state, stream_id)


async def _send_events(request: web.Request, state: _State, stream_id: str) -> web.StreamResponse:
    client = _SseClient(
        state.pipeline.subscribe(stream_id, maxsize=2), state.config.events.queue_size, state.sse_dropped
    )
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    state.sse.add(client)
    client.pump = asyncio.get_running_loop().create_task(client.run_pump(), name=f"sse-{stream_id}")
    try:
        await response.write(b": chromastream metadata events\n\n")
        while True:
            event = await client.next()
            if event is None:
                await response.write(b"event: end\ndata: {}\n\n")
                break
            line = f"id: {event.get('pts')}\ndata: {to_json(event)}\n\n"
            await response.write(line.encode())
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        state.sse.discard(client)
        client.close()
    return response


def _sdp_body_check(request: web.Request) -> None:
    if request.content_type != "application/sdp":
        raise ApiError(
            415,
            f"send the SDP offer with Content-Type application/sdp (got {request.content_type or 'none'})",
        )


def _sdp_response(sdp: str, location: str) -> web.Response:
    return web.Response(
        text=sdp,
        status=201,
        content_type="application/sdp",
        headers={"Location": location, "Access-Control-Expose-Headers": "Location"},
    )


async def whep(request: web.Request) -> web.Response:
    state = request.app[STATE]
    stream_id = _stream_id(request)
    _sdp_body_check(request)
    offer = await _read_text(request)
    state.require_stream(stream_id)
    if state.router is not None:
        return await _forward(request, stream_id, offer)
    try:
        with request.app[GUARD].viewers.reserve(len(state.hub.viewers)):
            viewer, answer = await state.hub.whep(stream_id, offer)
    except TooManyViewers as exc:
        raise ApiError(503, str(exc), **{"Retry-After": "5"}) from None
    except WebRTCError as exc:
        raise ApiError(400, str(exc)) from None
    return _sdp_response(answer, f"/whep/{stream_id}/{viewer.id}")


async def whep_delete(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.router is not None:
        return await _forward(request, _stream_id(request))
    session = request.match_info["session"]
    viewer = state.hub.viewers.get(session)
    if viewer is None or viewer.stream_id != request.match_info["id"]:
        raise ApiError(404, f"no viewer {session!r} (closed already?)")
    await state.hub.close_viewer(session)
    return _json({"closed": session})


async def whip(request: web.Request) -> web.Response:
    state = request.app[STATE]
    stream_id = _stream_id(request)
    _sdp_body_check(request)
    offer = await _read_text(request)
    await _allowed_source(request, stream_id, f"whip://{stream_id}")  # publishing may be turned off
    with contextlib.suppress(*state.unknown):
        state.pipeline.info(stream_id)
        raise ApiError(409, f"stream {stream_id!r} exists already")
    guard = request.app[GUARD]
    try:
        with (
            guard.publishers.reserve(len(state.hub.publishers)),
            guard.streams.reserve(len(state.pipeline.streams())),
        ):
            if state.router is not None:
                return await _forward(request, stream_id, offer)
            publisher, answer = await state.hub.whip(stream_id, offer)
    except state.duplicate:
        raise ApiError(409, f"stream {stream_id!r} exists already") from None
    except WebRTCError as exc:
        raise ApiError(400, str(exc)) from None
    state.whip_streams[stream_id] = publisher.id
    return _sdp_response(answer, f"/whip/{stream_id}/{publisher.id}")


async def whip_delete(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.router is not None:
        return await _forward(request, _stream_id(request))
    session = request.match_info["session"]
    publisher = state.hub.publishers.get(session)
    if publisher is None or publisher.stream_id != request.match_info["id"]:
        raise ApiError(404, f"no publisher {session!r} (closed already?)")
    state.whip_streams.pop(publisher.stream_id, None)
    await state.hub.close_publisher(session)
    await state.hub.close_viewers_of(publisher.stream_id)
    return _json({"closed": session})


# -------------------------------------------------------------------------------------- lifecycle


async def _on_startup(app: web.Application) -> None:
    state = app[STATE]
    state.loop_lag.start()
    if state.own_pipeline:
        await state.pipeline.start()
    if state.bus is not None:
        state.bus.start()


async def _on_shutdown(app: web.Application) -> None:
    """Runs before the server stops waiting for handlers: end the long-lived ones and every peer."""
    state = app[STATE]
    await state.loop_lag.stop()
    for client in list(state.sse):
        client.close()
    await state.hub.close()


async def _on_cleanup(app: web.Application) -> None:
    state = app[STATE]
    if state.bus is not None:  # first, so its streams read as stopped rather than removed one by one
        await state.bus.stop()
    if state.own_pipeline:
        await state.pipeline.stop()


def create_app(
    pipeline: StreamsAPI,
    config: ServeConfig | None = None,
    *,
    stream_config: StreamConfigFactory | None = None,
    own_pipeline: bool = False,
    bus_node_suffix: str = "",
) -> web.Application:
    """The aiohttp application serving ``pipeline``.

    ``config`` is the serve config (default: all defaults); the app reads its ``token``, ``webrtc`` and
    ``events`` settings, not its streams, which the caller adds to ``pipeline``. ``stream_config`` turns a
    POSTed stream body into the pipeline's stream config (default: :func:`stream_config_from_json`). With
    ``own_pipeline`` the app starts the pipeline on startup and stops it on cleanup, after every peer is
    closed.

    With ``config.metadata_sink`` set, an app whose ``pipeline`` runs the streams itself (not a
    :class:`StreamRouter`) publishes them to the message bus (:mod:`chromastream.stream.metadata_bus`);
    ``bus_node_suffix`` tells apart processes of one server publishing under one node name (a worker's
    ``-w1``).
    """
    config = config or ServeConfig()
    if config.webrtc.ice_loopback:
        allow_loopback_candidates()
    unknown, duplicate = _pipeline_errors()
    guard = HttpGuard(config)
    routed = [_refresh] if isinstance(pipeline, StreamRouter) else []
    app = web.Application(middlewares=[_errors, *guard.middlewares, _auth, *routed], client_max_size=MAX_BODY)
    app[GUARD] = guard
    app[SOURCE_POLICY] = SourcePolicy(config.sources.schemes, config.sources.hosts, config.sources.folders)
    app.on_response_prepare.append(guard.add_headers)
    app[STATE] = _State(
        pipeline,
        config,
        stream_config or stream_config_from_json,
        unknown,
        duplicate,
        own_pipeline,
        bus_node_suffix,
    )
    app.router.add_get("/", index)
    app.router.add_static("/web/", _web_dir(), append_version=False)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/streams", list_streams)
    app.router.add_post("/api/streams", add_stream)
    app.router.add_get("/api/streams/{id}", get_stream)
    app.router.add_delete("/api/streams/{id}", remove_stream)
    app.router.add_get("/api/streams/{id}/hints", get_hints)
    for method in ("POST", "PUT", "DELETE"):
        app.router.add_route(method, "/api/streams/{id}/hints", change_hints)
    app.router.add_post("/api/streams/{id}/reset", reset_stream)
    app.router.add_get("/api/streams/{id}/events", events, allow_head=False)  # an endless body: GET only
    app.router.add_post("/whep/{id}", whep)
    app.router.add_delete("/whep/{id}/{session}", whep_delete)
    app.router.add_post("/whip/{id}", whip)
    app.router.add_delete("/whip/{id}/{session}", whip_delete)
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    app.on_cleanup.append(_on_cleanup)
    return app


def _pipeline_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    from chromastream.stream.pipeline import DuplicateStream, UnknownStream

    return (UnknownStream,), (DuplicateStream,)


#: Stream keys a client may set through the API. ``record`` and ``rtsp_push`` make the server write files
#: or connect out; they belong to the operator's config file, not to whoever can reach the API.
API_STREAM_KEYS = frozenset({"id", "url", "loop", "realtime", "transport", "hints"})


def stream_config_from_json(body: dict[str, Any]) -> StreamConfig:
    """A stream config from a POSTed body, validated as the config file's ``streams`` entries are."""
    extra = sorted(set(body) - API_STREAM_KEYS)
    if extra:
        raise ConfigError(
            f"unknown or config-file-only key(s) {extra}; the API takes {sorted(API_STREAM_KEYS)}"
        )
    try:
        return parse_config({"streams": [body]}).streams[0]
    except ConfigError as exc:
        raise ConfigError(str(exc).removeprefix("streams[0].")) from None


# -------------------------------------------------------------------------------------------- serve

#: Seconds each step of :func:`serve`'s shutdown may take (see there): two steps stay well within the
#: command line's grace before it ends the process (``chromastream.stream.cli.SERVE_EXIT_GRACE_S``).
SHUTDOWN_STEP_S = 10.0


class ServeError(ChromastreamError):
    """The server cannot start (the address is taken, a stream cannot be opened)."""


def viewer_url(host: str, port: int) -> str:
    """The address a person opens; a wildcard bind is shown as this machine's loopback name. It never
    carries the token: the log it is printed to is read by more people than should hold the token."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def pipeline_for(config: ServeConfig) -> tuple[Pipeline, DeepfakeSampler | None]:
    """The pipeline ``config`` describes (backend, model, deepfake sampler), not yet started, and its
    sampler, which the caller closes after the pipeline has stopped."""
    from chromastream.stream.deepfake import create_sampler
    from chromastream.stream.passthrough import create_serve_backend
    from chromastream.stream.pipeline import Pipeline

    backend = create_serve_backend(config.pipeline)
    sampler = create_sampler(config.pipeline.detector_rate)
    pipeline = Pipeline(
        config.pipeline,
        backend,
        detector=sampler,
        decode=config.sources.decode,
        h264_encoder=config.webrtc.h264_encoder,
    )
    return pipeline, sampler


async def serve(
    config: ServeConfig,
    *,
    announce: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
    streams: StreamsAPI | None = None,
) -> None:
    """Run the pipeline and its server until SIGINT/SIGTERM (or ``stop``), then shut down in order:
    stop accepting, close every peer and event stream, stop the pipeline.

    Each of the two steps of the shutdown, the server's (requests, peers, event streams, then the
    pipeline) and, if that did not finish, the pipeline's alone (so recordings are still closed), takes
    at most :data:`SHUTDOWN_STEP_S`; whatever is still running then is abandoned.
    ``handle_signals=False`` leaves SIGINT/SIGTERM to the caller, which then sets ``stop`` (the command
    line does, so that it can also end a process whose threads never finish).

    ``streams`` runs the streams instead of a pipeline in this process (``serve --workers N`` passes a
    :class:`chromastream.stream.workers.WorkerPool`); the server starts and stops it."""
    sampler = None
    pipeline: StreamsAPI
    if streams is not None:
        pipeline = streams
    else:
        pipeline, sampler = pipeline_for(config)
    app = create_app(pipeline, config, own_pipeline=True)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, logger=protocol_logger())
    await runner.setup()
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        try:
            await site.start()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ServeError(f"cannot listen on {config.host}:{config.port}: {reason}") from None
        for stream in config.streams:
            try:
                await pipeline.add_stream(stream)
            except (ChromastreamError, ValueError, OSError) as exc:
                raise ServeError(f"stream {stream.id!r}: {exc}") from None
        port = int(runner.addresses[0][1])
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        url = viewer_url(config.host, port)
        if announce is not None:
            announce(url)
        if config.token:
            logger.info(
                "a token is required: open %s?token=TOKEN once, with the token given by --token or the "
                "config's 'token' (API clients send 'Authorization: Bearer TOKEN')",
                url,
            )
        ids = ", ".join(s.id for s in config.streams) or "none yet"
        logger.info("serving streams: %s", ids)
        await stop.wait()
        logger.info("shutting down")
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        try:
            await asyncio.wait_for(runner.cleanup(), SHUTDOWN_STEP_S)
        except TimeoutError:
            logger.warning("the server did not stop within %.0f s; stopping the streams", SHUTDOWN_STEP_S)
            try:
                await asyncio.wait_for(pipeline.stop(), SHUTDOWN_STEP_S)
            except TimeoutError:
                logger.warning("the streams did not stop within %.0f s; leaving them", SHUTDOWN_STEP_S)
        if sampler is not None:
            sampler.close()
