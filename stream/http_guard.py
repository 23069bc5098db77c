"""What the server checks and adds around every request, before and after its handler.

* **Headers** on every answer: a Content-Security-Policy that lets the page run only its own scripts and
  styles (the page has no inline code), no framing (``frame-ancestors 'none'``, ``X-Frame-Options``), no
  content sniffing, no referrer, and a ``Server`` header without a version.
* **Host and Origin** of requests that change something (POST, PUT, DELETE, PATCH): the ``Host`` must be
  an IP address, a ``localhost`` name, the listen address or one of ``http.allowed_hosts``, and an
  ``Origin``, when a browser sends one, must be the server's own origin or an allowed host. A page of
  another site that makes a browser send requests here (directly, or through a DNS name it points at
  127.0.0.1: DNS rebinding) is refused with 403. IP addresses are always allowed as ``Host`` because a
  rebinding page is reached by a *name*; an address in the address bar is no attack.
* **Request rate** per client address: a token bucket (``limits.requests_per_s``, ``limits.request_burst``)
  over everything but static files and ``/healthz``, answered 429 with ``Retry-After``.
* **Capacity** of the resources clients hold (streams, publishers, viewers, event clients): a request
  beyond ``limits.*`` gets 503 with ``Retry-After`` and a message naming the limit.
* **Session cookie**: the page is opened once with ``?token=``; the server answers with a cookie that is
  not the token but an HMAC of it under a key drawn at start-up (so it dies with the process, and the
  token never sits in the browser), ``HttpOnly`` and ``SameSite=Strict``, ``Secure`` behind TLS. The
  cookie authenticates reads, and changes only with a same-origin ``Origin`` (which browsers send with
  every POST, PUT and DELETE), so neither another site nor another page on the same host can act with it.
* **JSON nesting**: a body nested deeper than :data:`MAX_JSON_DEPTH` is refused before it is parsed (a
  cheap scan), because Python's parser recurses and 30,000 brackets would exhaust its stack.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware

from chromastream.errors import ChromastreamError
from chromastream.stream.config import ServeConfig

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects a JSON body may have (hints, the deepest the API takes, need 3)."""
RETRY_AFTER_S = 5
"""What ``Retry-After`` says when a capacity limit is reached: clients hold resources for minutes, so the
number only paces retries."""
MAX_TRACKED_CLIENTS = 10_000
"""Client addresses whose request rate is remembered; beyond it the least recently seen is forgotten (and
starts again with a full bucket), so a flood of addresses cannot grow memory."""

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "media-src 'self' blob: mediastream:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Server": "chromastream",
}
UNSAFE_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})


class Refusal(ChromastreamError):
    """A request the server refuses: answered as ``status`` with ``{"error": message}`` and ``headers``."""

    def __init__(self, status: int, message: str, **headers: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class LimitReached(Refusal):
    """A capacity limit is reached: 503, with ``Retry-After``."""

    def __init__(self, message: str) -> None:
        super().__init__(503, message, **{"Retry-After": str(RETRY_AFTER_S)})


# ------------------------------------------------------------------------------------------- JSON


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def json_too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON ``text`` nests arrays and objects deeper than ``limit``, found without parsing it
    (brackets inside strings do not count). Linear in the text; most bodies have too few brackets to
    need the scan at all."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for match in _JSON_BRACKET.finditer(_JSON_STRING.sub("", text)):
        depth += 1 if match.group() in "[{" else -1
        if depth > limit:
            return True
    return False


# ----------------------------------------------------------------------------------------- limits


class Capacity:
    """One limited resource. ``reserve`` guards the creation of one held elsewhere (streams in the
    pipeline, peers in the WebRTC hub); ``hold`` counts one held for as long as a request lasts (an event
    stream). Both count requests still on their way, so concurrent ones cannot overshoot the limit."""

    def __init__(
        self, limit: int, what: str, key: str, per_key: int | None = None, per_key_setting: str = ""
    ) -> None:
        self.limit = limit
        self.what = what
        self.key = key
        self.per_key = per_key
        self.per_key_setting = per_key_setting
        self.pending = 0
        self.held: dict[str, int] = {}

    @property
    def in_use(self) -> int:
        return sum(self.held.values())

    def _refuse(self) -> LimitReached:
        return LimitReached(
            f"too many {self.what}: at most {self.limit} (limits.{self.key}); try again later"
        )

    @contextmanager
    def reserve(self, in_use: int) -> Iterator[None]:
        if in_use + self.pending >= self.limit:
            raise self._refuse()
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        if self.in_use >= self.limit:
            raise self._refuse()
        if self.per_key is not None and self.held.get(key, 0) >= self.per_key:
            raise LimitReached(
                f"too many {self.what} of {key!r}: at most {self.per_key} "
                f"(limits.{self.per_key_setting}); try again later"
            )
        self.held[key] = self.held.get(key, 0) + 1
        try:
            yield
        finally:
            self.held[key] -= 1
            if not self.held[key]:
                del self.held[key]


class RateLimiter:
    """A token bucket per client address: ``burst`` requests at once, then ``rate`` per second."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address -> (tokens, at)

    def take(self, address: str) -> float:
        """Spend one request of ``address``: 0 if allowed, else the seconds until the next one is."""
        now = self.clock()
        tokens, at = self._buckets.pop(address, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens >= 1:
            tokens -= 1
            wait = 0.0
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[address] = (tokens, now)
        while len(self._buckets) > MAX_TRACKED_CLIENTS:
            self._buckets.popitem(last=False)
        return wait


# ------------------------------------------------------------------------------------ host, origin


def split_host(value: str) -> tuple[str, int | None]:
    """``host[:port]`` (``[v6]:port`` too) as the lower-case host without brackets and the port."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, colon, port = value.rpartition(":")
        if not colon or not port.isdigit():
            host, port = value, ""
    return host.rstrip("."), int(port) if port.isdigit() else None


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    return True


class HttpGuard:
    """The checks of one server (see the module docstring), built from its config."""

    def __init__(self, config: ServeConfig) -> None:
        limits = config.limits
        self.config = config
        names = {"localhost"}
        if config.host not in _WILDCARDS:
            names.add(split_host(config.host)[0])
        self._names = frozenset(names)
        self._allowed = tuple(split_host(entry) for entry in config.http.allowed_hosts)
        self.rate = (
            RateLimiter(limits.requests_per_s, limits.request_burst)
            if limits.requests_per_s is not None
            else None
        )
        self.streams = Capacity(limits.streams, "streams", "streams")
        self.publishers = Capacity(limits.publishers, "WHIP publishers", "publishers")
        self.viewers = Capacity(limits.viewers, "WebRTC viewers in all", "viewers")
        self.sse = Capacity(
            limits.sse_clients,
            "metadata event clients",
            "sse_clients",
            per_key=limits.sse_per_stream,
            per_key_setting="sse_per_stream",
        )
        self._cookie_key = secrets.token_bytes(32)
        self.session = (
            hmac.new(self._cookie_key, config.token.encode(), hashlib.sha256).hexdigest()
            if config.token
            else None
        )

    @property
    def middlewares(self) -> list[Middleware]:
        """In order: the host/origin check, then the request rate (both before authentication, so that
        guessing tokens is paced too)."""
        return [self._check_host_and_origin, self._limit_rate]

    # --- headers ----------------------------------------------------------------------------------

    @staticmethod
    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        """``on_response_prepare``: every answer of the app, static files and errors included."""
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        response.headers["Server"] = SECURITY_HEADERS["Server"]

    # --- host and origin --------------------------------------------------------------------------

    def host_allowed(self, host: str, port: int | None) -> bool:
        if _is_address(host) or host in self._names or host.endswith(".localhost"):
            return True
        return any(host == name and (want is None or want == port) for name, want in self._allowed)

    def same_origin(self, request: web.Request) -> bool:
        """Whether the request carries an ``Origin`` that is this server's own (as the ``Host`` header
        names it) or an allowed host's."""
        origin = request.headers.get("Origin")
        if not origin:
            return False
        try:
            parts = urlsplit(origin)
            origin_host, origin_port = (parts.hostname or "").rstrip("."), parts.port
        except ValueError:
            return False
        if parts.scheme not in _DEFAULT_PORTS or not origin_host:
            return False
        default = _DEFAULT_PORTS[parts.scheme]
        origin_port = origin_port or default
        host, port = split_host(request.headers.get("Host", ""))
        if (origin_host, origin_port) == (host, port or default):
            return True
        return any(origin_host == n and (p is None or p == origin_port) for n, p in self._allowed)

    @web.middleware
    async def _check_host_and_origin(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method in UNSAFE_METHODS:
            host_header = request.headers.get("Host")
            if host_header is not None and not self.host_allowed(*split_host(host_header)):
                raise Refusal(
                    403,
                    f"host {split_host(host_header)[0]!r} is not one this server answers changes for; "
                    "add it to http.allowed_hosts",
                )
            if "Origin" in request.headers and not self.same_origin(request):
                raise Refusal(403, "requests from another site's page are refused (Origin)")
        return await handler(request)

    # --- request rate -----------------------------------------------------------------------------

    @web.middleware
    async def _limit_rate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.rate is not None and _rate_limited(request.path):
            wait = self.rate.take(request.remote or "")
            if wait > 0:
                raise Refusal(
                    429,
                    "too many requests from this address (limits.requests_per_s); slow down",
                    **{"Retry-After": str(max(1, math.ceil(wait)))},
                )
        return await handler(request)

    # --- session cookie ---------------------------------------------------------------------------

    def cookie_authenticates(self, request: web.Request, cookie: str | None) -> bool:
        """Whether ``cookie`` is this server's session and may be used for this request: reads with it
        always, changes only from a page of this server's own origin."""
        if self.session is None or not cookie:
            return False
        if not hmac.compare_digest(cookie.encode(), self.session.encode()):
            return False
        return request.method not in UNSAFE_METHODS or self.same_origin(request)

    def set_session_cookie(self, request: web.Request, response: web.StreamResponse, name: str) -> None:
        assert self.session is not None
        secure = (
            self.config.http.secure_cookie
            or request.secure
            or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
        )
        response.set_cookie(name, self.session, httponly=True, samesite="Strict", path="/", secure=secure)


def _rate_limited(path: str) -> bool:
    return not (path == "/healthz" or path.startswith("/web/") or path == "/favicon.ico")


# ------------------------------------------------------------------------------------------ logs


class _OneLineProtocolErrors(logging.Filter):
    """A request aiohttp cannot parse (bad headers, a TLS hello on the HTTP port) is the client's doing:
    one line with the reason instead of aiohttp's traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            reason = (error.message or type(error).__name__).strip().splitlines()[0]
            record.msg = f"{record.getMessage()}: malformed HTTP request ({error.code} {reason})"
            record.args = None
            record.exc_info = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def protocol_logger() -> logging.Logger:
    """The logger for aiohttp's connection handler (``AppRunner(..., logger=...)``): tracebacks only
    for what is not a malformed request."""
    logger = logging.getLogger("chromastream.stream.http")
    if not any(isinstance(f, _OneLineProtocolErrors) for f in logger.filters):
        logger.addFilter(_OneLineProtocolErrors())
    return logger
