"""Everything ``chromastream serve`` runs with: where it listens, the pipeline's knobs, how viewers are
served, and the streams it starts with.

Configuration is one tree of frozen dataclasses (:class:`ServeConfig` at the root), validated when built,
so a running server never meets a half-valid setting and every object can be shared between tasks without
copying. :func:`load_config` reads the YAML file once at the entry point; every error names the key that
is wrong (``streams[1].id``, ``webrtc.bitrate``) and says what it should be, because the person reading it
is editing that file. The command line's flags are laid over the same tree, so a setting has one name and
one check wherever it is given.

A file looks like::

    host: 0.0.0.0
    token: change-me            # optional: required on the API, signalling, page and metrics when set
    pipeline:
      size: 256
    webrtc:
      bitrate: 2500000
    streams:
      - id: gate
        url: rtsp://user:secret@10.0.0.7/stream1
        hints: [{x: 0.5, y: 0.2, rgb: "#3070c0"}]

Every key, its type, default and meaning is in ``docs/CONFIG.md``, generated from the field docstrings
below by :mod:`chromastream.stream.config_reference`; ``docs/serve.example.yaml`` lists every key with its
default, ready to copy and edit.

Relative paths (``model``, ``record``, a file ``url``) are taken relative to the file's folder, not the
working directory, so a config means the same thing wherever the server is started from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from chromastream.errors import ChromastreamError
from chromastream.models.colorizer.hints import MAX_HINTS, Hint, HintError, parse_hints
from chromastream.models.runtime.session import MAX_SIZE, MIN_SIZE
from chromastream.stream.formats import DECODE_MODES, H264_ENCODERS
from chromastream.stream.source_policy import ANY_HOST, DEFAULT_SCHEMES, KNOWN_SCHEMES, parse_host_entry

STREAM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
TRANSPORTS = ("tcp", "udp")
#: URL schemes of inputs that are not files: cameras, test patterns and WebRTC publishers never end, so
#: there is nothing to loop.
LIVE_SCHEMES = frozenset({"rtsp", "rtsps", "synthetic", "whip"})

#: Ranges of the settings that the command line also takes (its flags check the same bounds).
MAX_VIEWERS = (1, 1024)
BITRATE = (50_000, 100_000_000)
KEYFRAME_INTERVAL = (1, 1000)
EVENTS_QUEUE = (1, 10_000)
WORKERS = (1, 64)
#: Ranges of the ``cluster`` settings.
CPUS_PER_WORKER = (0.1, 1024.0)
CLUSTER_CONNECT_TIMEOUT = (1.0, 300.0)
#: Ranges of the ``limits`` settings.
MAX_STREAMS = (1, 10_000)
MAX_CLIENTS = (1, 100_000)
REQUEST_RATE = (0.1, 100_000.0)


class ConfigError(ChromastreamError):
    """The configuration is invalid; the message names the key and what it should be."""


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


def _check_range(value: int, bounds: tuple[int, int], key: str, unit: str = "") -> None:
    lo, hi = bounds
    suffix = f" {unit}" if unit else ""
    _check(lo <= value <= hi, key, f"must be in {lo}..{hi}{suffix}, got {value}")


def _check_seconds(value: float, bounds: tuple[float, float], key: str) -> None:
    lo, hi = bounds
    ok = math.isfinite(value) and lo <= value <= hi
    _check(ok, key, f"must be in {lo:g}..{hi:g} seconds, got {value}")


@dataclass(frozen=True)
class RecordConfig:
    """Where a stream is recorded: ``record: /rec/gate.mp4``, or the mapping form
    ``record: {path: /rec/gate.mp4, segment_s: 60, retain_hours: 72}``.

    The recording is a series of segments named after the UTC time at which each one starts
    (``/rec/gate-20250107T021530.123Z.mp4`` with its ``.jsonl`` of metadata beside it), so no run ever
    writes over an earlier one's files.
    """

    SHORTHAND: ClassVar[str] = "path"
    """A plain value in the config file stands for this key."""

    path: Path
    """Folder and name of the segments; the suffix picks the container (``.mp4``, ``.mov`` or ``.mkv``;
    none means ``.mp4``). An existing folder names the segments after the stream."""
    segment_s: float = 60.0
    """Length of one segment in seconds (each one is finished, and playable anywhere, when it closes)."""
    retain_hours: float | None = None
    """Delete this recording's segments that started longer ago than this; ``None`` keeps them."""
    retain_segments: int | None = None
    """Keep at most this many of this recording's newest segments; ``None`` keeps them all."""

    def __post_init__(self) -> None:
        _check(isinstance(self.path, Path), "path", "must be a path")
        _check(
            math.isfinite(self.segment_s) and 1 <= self.segment_s <= 86400,
            "segment_s",
            f"must be in 1..86400 seconds, got {self.segment_s}",
        )
        if self.retain_hours is not None:
            _check(
                math.isfinite(self.retain_hours) and self.retain_hours > 0,
                "retain_hours",
                f"must be a positive number of hours or null, got {self.retain_hours}",
            )
        if self.retain_segments is not None:
            _check(
                self.retain_segments >= 1,
                "retain_segments",
                f"must be at least 1 or null, got {self.retain_segments}",
            )


@dataclass(frozen=True)
class StreamConfig:
    """One input the server colorizes and republishes."""

    id: str
    """Name of the stream in URLs, metrics and metadata: 1-64 of ``A-Z a-z 0-9 _ -``."""
    url: str
    """Where frames come from: ``rtsp://[user:pass@]host[:port]/path`` (or ``rtsps://``) for a camera, a
    file path or ``file:///path`` for a video, or ``synthetic:?width=640&height=480&fps=25`` for a test
    pattern. A relative file path is taken from the config file's folder. Passwords are shown as ``***``
    in logs, the API and metrics."""
    loop: bool | None = None
    """Start a file over when it ends, so it plays like a camera that never stops; unset means ``true``
    for a file, ``false`` plays it once and ends the stream. Cameras and test patterns have no end to
    loop: setting it on them is refused when the stream opens."""
    realtime: bool = True
    """Files only: pace the file at its own frame rate, as a camera would deliver it; ``false`` reads as
    fast as the pipeline takes frames (batch jobs), without drops."""
    transport: str = "tcp"
    """RTSP only: ``tcp`` (interleaved, survives NAT and loss) or ``udp`` (lower latency on a LAN)."""
    record: RecordConfig | None = None
    """Also record the colorized stream, in segments (H.264, the source's sound as AAC), with the per-frame
    metadata as JSON lines beside each. Config file only: the API cannot make the server write files."""
    rtsp_push: str | None = None
    """Also publish the colorized stream to this RTSP server URL (RECORD), e.g. to a media server that
    fans it out. Config file only, like ``record``."""
    hints: tuple[Hint, ...] = ()
    """Colour hints applied from the first frame: a fixed camera's known colours (at most 256). Each is
    ``{x, y, rgb: "#rrggbb"}`` (or ``rgb: [r, g, b]``) or ``{x, y, a, b}`` in Lab chroma, with ``x``
    right and ``y`` down in 0..1 of the picture and an optional ``radius`` (fraction of the short side,
    default 0.02). Only chroma is used: a hint never changes brightness."""

    def __post_init__(self) -> None:
        _check(
            isinstance(self.id, str) and STREAM_ID.fullmatch(self.id) is not None,
            "id",
            f"must be 1-64 characters of A-Z a-z 0-9 _ -, got {self.id!r}",
        )
        _check(isinstance(self.url, str) and bool(self.url.strip()), "url", "must be a non-empty string")
        _check(
            self.transport in TRANSPORTS, "transport", f"must be one of {TRANSPORTS}, got {self.transport!r}"
        )
        _check(len(self.hints) <= MAX_HINTS, "hints", f"at most {MAX_HINTS} hints, got {len(self.hints)}")

    @property
    def names_file(self) -> bool:
        """Whether ``url`` names a video file (a path or ``file:``) rather than a live input."""
        scheme = self.url.partition(":")[0].lower() if ":" in self.url else ""
        return scheme not in LIVE_SCHEMES

    @property
    def loops(self) -> bool:
        """Whether the stream starts over at its end: ``loop`` where it is set, otherwise a file does."""
        return self.names_file if self.loop is None else self.loop


@dataclass(frozen=True)
class PipelineConfig:
    """How frames are colorized: model, working size, batching, queues."""

    size: int = 192
    """Short side of the network's working resolution; output keeps the input's full resolution. The
    default keeps a 640x480 25 fps camera in real time on two CPU cores with room to spare (measured by
    ``benchmarks.live_latency``); colour is low-frequency, so the picture loses little. Raise it (256,
    as ``colorize`` uses) on a machine with more cores or a GPU."""
    backend: str = "auto"
    """Inference backend name (``auto`` picks the fastest available here). ``pass-through`` runs no network
    and sends grey pictures: what a server does with it is its limit on the machine whatever the model
    costs (``benchmarks.serve_throughput`` measures it)."""
    model: Path | None = None
    """Colorizer ONNX file; ``null`` uses the shipped model: its INT8 copy with ONNX Runtime on a CPU (about
    twice as fast, within 0.05 dB of it on bsd100), the float file on a GPU."""
    max_batch: int = 8
    """Most frames (of any streams) run in one inference call."""
    max_wait_ms: float = 5.0
    """Longest a frame waits for others to fill a batch: the latency paid for throughput."""
    queue_size: int = 2
    """Frames buffered per stream before a live source's oldest frame is dropped. Each buffered frame is a
    frame period of latency when the machine is busy, so live streams keep this small."""
    memory: bool = True
    """Carry the recurrent state from frame to frame (temporal stability); ``false`` colours each frame
    alone."""
    scene_cut_threshold: float | None = 0.45
    """Scene-cut score above which the state resets (see :mod:`chromastream.stream.scene_cut`); ``null``
    disables."""
    detector_rate: float = 2.0
    """Frames per second per stream sampled for the deepfake detector (``0`` samples none)."""

    def __post_init__(self) -> None:
        _check(
            MIN_SIZE <= self.size <= MAX_SIZE, "size", f"must be in {MIN_SIZE}..{MAX_SIZE}, got {self.size}"
        )
        _check(bool(self.backend), "backend", "must name a backend, e.g. 'auto'")
        _check(1 <= self.max_batch <= 256, "max_batch", f"must be in 1..256, got {self.max_batch}")
        _check(
            math.isfinite(self.max_wait_ms) and 0 <= self.max_wait_ms <= 1000,
            "max_wait_ms",
            f"must be in 0..1000, got {self.max_wait_ms}",
        )
        _check(1 <= self.queue_size <= 1024, "queue_size", f"must be in 1..1024, got {self.queue_size}")
        if self.scene_cut_threshold is not None:
            _check(
                math.isfinite(self.scene_cut_threshold) and self.scene_cut_threshold > 0,
                "scene_cut_threshold",
                f"must be a positive number or null, got {self.scene_cut_threshold}",
            )
        _check(
            math.isfinite(self.detector_rate) and 0 <= self.detector_rate <= 120,
            "detector_rate",
            f"must be in 0..120 frames per second, got {self.detector_rate}",
        )


#: Ranges of the WebRTC session timeouts, in seconds.
CONNECT_TIMEOUT = (1.0, 600.0)
DISCONNECT_GRACE = (0.0, 600.0)


@dataclass(frozen=True)
class WebRTCConfig:
    """How colorized streams reach browsers over WebRTC (WHEP viewers), and how long WebRTC sessions
    (viewers and WHIP publishers) may take to connect."""

    max_viewers: int = 8
    """WebRTC viewers per stream. Each stream is encoded once whatever the number of viewers, but
    packetizing, encrypting and sending are still per viewer, so the number is capped; one more is
    answered 503."""
    bitrate: int = 1_500_000
    """Bits per second of each stream's shared encoder (all viewers of a stream get the same bitrate)."""
    keyframe_interval: int = 60
    """Frames between keyframes: how long a viewer that lost packets waits before its picture heals.
    Shorter heals faster but costs bitrate."""
    ice_loopback: bool = True
    """Offer 127.0.0.1 as an ICE candidate, so a browser on the server's own machine can connect (the
    WebRTC library leaves loopback out by itself). It only adds a candidate; remote viewers are unaffected.
    It is process-wide: once one server in a process has enabled it, it stays."""
    connect_timeout_s: float = 15.0
    """Seconds a viewer (WHEP) or publisher (WHIP) has, from the answer to its offer, to connect (ICE and
    DTLS). One that does not is closed and its slot freed, and a publisher's stream is removed: a client
    that sends an offer and goes away without ``DELETE`` cannot hold a viewer slot or a stream for ever."""
    disconnect_grace_s: float = 10.0
    """Seconds a connected session may stay out of the connected state before it is closed. A connection
    that fails or that its peer closes is closed at once (the WebRTC library reports a peer that vanished
    as failed once its connectivity checks go unanswered, about 30 s)."""
    h264_encoder: str = "auto"
    """Encoder of the live H.264 streams: WebRTC viewers that take H.264 (VP8 is always libvpx on the CPU)
    and the RTSP push (``rtsp_push``). ``auto`` uses NVENC (``h264_nvenc``, the GPU's video engine) where
    it opens, checked once per process, and libx264 otherwise; ``libx264`` always encodes on the CPU;
    ``nvenc`` asks for NVENC and, where it cannot open (no NVIDIA GPU, or one without NVENC such as the
    H100 and H200), logs one warning and uses libx264. Recordings always use libx264 (see
    docs/PERFORMANCE.md, "Encoder choice")."""

    def __post_init__(self) -> None:
        _check_range(self.max_viewers, MAX_VIEWERS, "max_viewers")
        _check_range(self.bitrate, BITRATE, "bitrate", "bits per second")
        _check_range(self.keyframe_interval, KEYFRAME_INTERVAL, "keyframe_interval", "frames")
        _check_seconds(self.connect_timeout_s, CONNECT_TIMEOUT, "connect_timeout_s")
        _check_seconds(self.disconnect_grace_s, DISCONNECT_GRACE, "disconnect_grace_s")
        _check(
            self.h264_encoder in H264_ENCODERS,
            "h264_encoder",
            f"must be one of {H264_ENCODERS}, got {self.h264_encoder!r}",
        )


@dataclass(frozen=True)
class EventsConfig:
    """Per-frame metadata sent as Server-Sent Events (``/api/streams/{id}/events``)."""

    queue_size: int = 32
    """Events held per client before its oldest is dropped (counted in
    ``chromastream_sse_dropped_total``): a slow reader loses events but never holds up the pipeline."""

    def __post_init__(self) -> None:
        _check_range(self.queue_size, EVENTS_QUEUE, "queue_size")


@dataclass(frozen=True)
class SourcesConfig:
    """How sources decode, and what streams added through the API, and WHIP publishers, may read from
    (the source policy, see :mod:`chromastream.stream.source_policy`). Streams of this file and of
    ``--source`` are the operator's choice and are not checked. Anything else is refused with one 403
    answer that never says why (the server log does), so the API cannot be used to learn which files
    exist."""

    schemes: tuple[str, ...] = DEFAULT_SCHEMES
    """Kinds of source the API may add: ``rtsp``, ``rtsps``, ``whip`` (a publisher sending a stream in
    through ``POST /whip/{id}``) and ``synthetic`` (test pattern). Files are allowed by ``folders``."""
    hosts: tuple[str, ...] = (ANY_HOST,)
    """Hosts an RTSP source may connect to: ``*`` (any), CIDR networks (``10.0.0.0/8``), addresses or
    host names. Link-local addresses (169.254.0.0/16, fe80::/10) and cloud metadata services are refused
    even under ``*`` unless an entry here covers them. Host names are resolved once and every address must
    be allowed."""
    folders: tuple[Path, ...] = ()
    """Folders whose video files the API may open (symlinks and ``..`` resolved first); none by default,
    so files can only be named in this file or with ``--source``."""
    decode: str = "auto"
    """Where cameras (RTSP) and files decode their video: ``auto`` on NVDEC (the GPU's video decoder) when
    a CUDA device is visible, in software otherwise; ``software`` on the CPU always; ``nvdec`` on NVDEC,
    and where it cannot be used (no device, an FFmpeg without CUDA, a codec NVDEC lacks) in software with
    one warning in the log per process. Decoded frames are copied to host memory for the pipeline. Each
    stream shows its decoder in ``GET /api/streams/{id}`` (``decoder``: ``h264 (cuda)``, ``h264
    (software)``). WHIP publishers are decoded by the WebRTC library, in software."""

    def __post_init__(self) -> None:
        for scheme in self.schemes:
            _check(
                scheme in KNOWN_SCHEMES,
                "schemes",
                f"unknown scheme {scheme!r}; expected some of {', '.join(KNOWN_SCHEMES)} "
                "(files are allowed with 'folders')",
            )
        _check(self.decode in DECODE_MODES, "decode", f"must be one of {DECODE_MODES}, got {self.decode!r}")
        for i, entry in enumerate(self.hosts):
            try:
                parse_host_entry(entry)
            except ValueError as exc:
                raise ConfigError(f"hosts[{i}]: {exc}") from None


@dataclass(frozen=True)
class LimitsConfig:
    """The most of each resource clients may take, so that no client (or many) can exhaust the server.
    A request beyond a limit is answered 503 with ``Retry-After`` (429 for the request rate); the viewers
    of one stream are limited by ``webrtc.max_viewers``."""

    streams: int = 32
    """Streams in all, those of this file included; adding one more through the API is refused."""
    publishers: int = 4
    """WHIP publishers sending streams in at once."""
    viewers: int = 64
    """WebRTC viewers of all streams together."""
    sse_clients: int = 64
    """Clients reading metadata events (``/api/streams/{id}/events``), all streams together."""
    sse_per_stream: int = 16
    """Clients reading one stream's metadata events."""
    requests_per_s: float | None = 20.0
    """Sustained API and signalling requests per second from one client address (a token bucket);
    ``null`` turns the limit off, e.g. behind a proxy that limits already (behind a proxy every client
    shares the proxy's address)."""
    request_burst: int = 100
    """Requests one client address may make at once before ``requests_per_s`` applies. The page asks
    two per stream when it opens (its video and its hints), so this covers ``streams`` streams."""

    def __post_init__(self) -> None:
        _check_range(self.streams, MAX_STREAMS, "streams")
        for name in ("publishers", "viewers", "sse_clients", "sse_per_stream", "request_burst"):
            _check_range(getattr(self, name), MAX_CLIENTS, name)
        if self.requests_per_s is not None:
            lo, hi = REQUEST_RATE
            _check(
                math.isfinite(self.requests_per_s) and lo <= self.requests_per_s <= hi,
                "requests_per_s",
                f"must be in {lo}..{hi:g} requests per second or null, got {self.requests_per_s}",
            )


@dataclass(frozen=True)
class HttpConfig:
    """How the server treats browsers: the host names it may be reached under, and its cookie."""

    allowed_hosts: tuple[str, ...] = ()
    """Host names (``host`` or ``host:port``) under which pages may change things (POST, PUT, DELETE),
    besides the listen address, ``localhost`` and IP addresses. A request that names another host, or
    comes from a page of another origin, is refused with 403: this stops DNS rebinding and other sites'
    pages. Add the names people type to reach the server, e.g. ``cams.example.org``."""
    secure_cookie: bool = False
    """Mark the session cookie ``Secure`` (sent over HTTPS only). Set it when a TLS proxy serves the
    page; a request that arrives with ``X-Forwarded-Proto: https`` gets a Secure cookie anyway."""

    def __post_init__(self) -> None:
        for i, entry in enumerate(self.allowed_hosts):
            _check(
                isinstance(entry, str) and bool(entry.strip()) and "/" not in entry,
                f"allowed_hosts[{i}]",
                f"must be a host name or host:port, got {entry!r}",
            )


@dataclass(frozen=True)
class ClusterConfig:
    """``serve --cluster``: the streams run on the machines of a Ray cluster (``pip install
    'chromastream[cluster]'``; ``docs/SCALING.md``). This process stays the one gateway (page, API,
    metrics, signalling); each worker is a Ray actor, a whole server for its share of the streams on the
    machine Ray placed it, and a video viewer's media comes straight from that machine."""

    address: str | None = None
    """The Ray cluster to run on: ``auto`` (the cluster ``ray start`` started on this machine, or
    ``RAY_ADDRESS``) or the head's ``HOST:PORT`` (its GCS, port 6379 by default). ``null`` serves from
    this machine alone (``workers`` applies). Ray Client addresses (``ray://``) are not supported: the
    gateway's machine must be a node of the cluster (``ray start --address``, with ``--num-cpus 0`` if it
    should run no worker)."""
    workers: int | str = "auto"
    """Worker actors to run: a number (they wait for room on the cluster), or ``auto``: one per GPU of
    the cluster where it has GPUs, else one per ``cpus_per_worker`` CPUs of each node, counted again
    when nodes join or leave (the log says how it was derived)."""
    cpus_per_worker: float = 2.0
    """CPUs Ray reserves for each worker without a GPU: about what one server process keeps busy (see
    ``workers``)."""
    connect_timeout_s: float = 10.0
    """How long the cluster's address may take to answer before ``serve`` gives up with an error
    (joining a head that answers may take 10 s more)."""

    def __post_init__(self) -> None:
        if self.address is not None:
            _check(bool(self.address.strip()), "address", "must be auto or HOST:PORT, got an empty string")
        _check(
            self.workers == "auto"
            or (
                isinstance(self.workers, int)
                and not isinstance(self.workers, bool)
                and WORKERS[0] <= self.workers <= WORKERS[1]
            ),
            "workers",
            f"must be auto or a whole number in {WORKERS[0]}..{WORKERS[1]}, got {self.workers!r}",
        )
        lo, hi = CPUS_PER_WORKER
        _check(
            math.isfinite(self.cpus_per_worker) and lo <= self.cpus_per_worker <= hi,
            "cpus_per_worker",
            f"must be in {lo:g}..{hi:g} CPUs, got {self.cpus_per_worker}",
        )
        _check_seconds(self.connect_timeout_s, CLUSTER_CONNECT_TIMEOUT, "connect_timeout_s")


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``chromastream serve`` needs: where to listen, how to colorize, what to ingest."""

    host: str = "127.0.0.1"
    """Address to listen on; the loopback default keeps a server private until asked otherwise."""
    port: int = 8080
    """TCP port of the HTTP server (``0`` picks a free one)."""
    token: str | None = None
    """Bearer token required on the API, signalling, events, viewer page and metrics when set (not on
    ``/healthz``); unset serves everything openly."""
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    """Colorizer and queue settings shared by all streams."""
    webrtc: WebRTCConfig = field(default_factory=WebRTCConfig)
    """WebRTC viewers: how many per stream, encoder bitrate and keyframes, loopback, session timeouts."""
    events: EventsConfig = field(default_factory=EventsConfig)
    """Per-frame metadata events sent to HTTP clients."""
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    """Which sources the API may add: schemes, hosts and folders."""
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    """The most streams, publishers, viewers, event clients and requests the server takes."""
    http: HttpConfig = field(default_factory=HttpConfig)
    """Host names browsers may use and the session cookie."""
    streams: tuple[StreamConfig, ...] = ()
    """Streams started with the server; more can be added through the API."""
    workers: int | str = "auto"
    """Processes that serve the streams, each owning its share of them end to end (decoding, its own
    model and batcher, encoding, the WebRTC peers of its viewers), so their codec work runs in parallel;
    this process keeps the page, API and metrics and forwards each stream's requests to its worker. A
    worker that dies is restarted with its streams and their hints. ``1`` serves everything from this one
    process. ``auto`` picks from the usable cores and GPUs and logs why: one worker per GPU, else one per
    two cores, about what one process keeps busy (so ``1`` on a two-core machine, where the second
    worker's gain measured by ``benchmarks.serve_throughput`` did not clearly repay a second model's
    memory)."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Run the streams on a Ray cluster instead of this machine (``address``), and how many workers."""

    metadata_sink: str | None = None
    """Publish each stream's status, deepfake verdicts and a summary every second to an MQTT broker:
    ``mqtt://[user:password@]host[:port][/prefix]`` (``mqtts://`` for TLS, port 8883 by default). Options
    go in the query: ``frames=1`` also publishes every frame's metadata, ``node=NAME`` names this server
    in topics (default: the host name), ``ca=/path/ca.pem`` is what ``mqtts://`` trusts instead of the
    system's certificates. Topics and messages are in ``docs/MQTT.md``. A broker that cannot be reached
    never stops serving: it is logged once and retried in the background. The password is shown as
    ``***`` in logs."""

    def __post_init__(self) -> None:
        _check(bool(self.host), "host", "must be a non-empty address")
        if self.metadata_sink is not None:
            _check_sink(self.metadata_sink)
        _check(
            self.workers == "auto"
            or (
                isinstance(self.workers, int)
                and not isinstance(self.workers, bool)
                and WORKERS[0] <= self.workers <= WORKERS[1]
            ),
            "workers",
            f"must be auto or a whole number in {WORKERS[0]}..{WORKERS[1]}, got {self.workers!r}",
        )
        _check(0 <= self.port <= 65535, "port", f"must be in 0..65535, got {self.port}")
        _check(self.token is None or bool(self.token), "token", "must be a non-empty string or absent")
        seen: set[str] = set()
        for i, stream in enumerate(self.streams):
            _check(stream.id not in seen, f"streams[{i}].id", f"duplicate stream id {stream.id!r}")
            seen.add(stream.id)


def _check_sink(url: str) -> None:
    from chromastream.stream.metadata_bus import BusUrlError, parse_sink_url

    try:
        parse_sink_url(url)
    except BusUrlError as exc:
        raise ConfigError(f"metadata_sink: {exc}") from None


# --- YAML loading -----------------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


_KINDS = {int: "an integer", str: "a string", float: "a number", bool: "true or false"}


def _convert(value: Any, annotation: Any, key: str, base: Path) -> Any:
    """``value`` as ``annotation`` (the subset of types the config uses), or a ConfigError naming ``key``."""
    origin = typing.get_origin(annotation)
    if origin is types.UnionType or origin is typing.Union:
        options = typing.get_args(annotation)
        if value is None:
            _check(type(None) in options, key, "must not be null")
            return None
        inner = [a for a in options if a is not type(None)]
        if len(inner) == 1:
            return _convert(value, inner[0], key, base)
        for option in inner:  # ``int | str``: the first type the value is; the field checks the rest
            with contextlib.suppress(ConfigError):
                return _convert(value, option, key, base)
        kinds = " or ".join(_KINDS.get(option, option.__name__) for option in inner)
        raise ConfigError(f"{key}: must be {kinds}, got {_type_name(value)} {value!r}")
    if annotation is bool:
        _check(isinstance(value, bool), key, f"must be true or false, got {_type_name(value)} {value!r}")
        return value
    if annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        _check(ok, key, f"must be an integer, got {_type_name(value)} {value!r}")
        return value
    if annotation is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        _check(ok, key, f"must be a number, got {_type_name(value)} {value!r}")
        try:
            return float(value)
        except OverflowError:  # an integer beyond any float: out of every range the config has
            raise ConfigError(f"{key}: must be a number in range, got an integer too large for one") from None
    if annotation is str:
        _check(isinstance(value, str), key, f"must be a string, got {_type_name(value)} {value!r}")
        return value
    if annotation is Path:
        _check(
            isinstance(value, str) and bool(value), key, f"must be a path, got {_type_name(value)} {value!r}"
        )
        path = _expand_user(value, key)
        return path if path.is_absolute() else base / path
    if annotation in (tuple[str, ...], tuple[Path, ...]):
        _check(isinstance(value, list), key, f"must be a list, got {_type_name(value)} {value!r}")
        (inner,) = typing.get_args(annotation)[:1]
        return tuple(_convert(item, inner, f"{key}[{i}]", base) for i, item in enumerate(value))
    if annotation == tuple[Hint, ...]:
        _check(isinstance(value, list), key, f"must be a list of hints, got {_type_name(value)}")
        try:
            return tuple(parse_hints(value))
        except HintError as exc:
            raise ConfigError(f"{key}: {exc}") from exc
    if annotation == tuple[StreamConfig, ...]:
        _check(isinstance(value, list), key, f"must be a list of streams, got {_type_name(value)}")
        return tuple(_build(StreamConfig, item, f"{key}[{i}]", base) for i, item in enumerate(value))
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        shorthand = getattr(annotation, "SHORTHAND", None)
        if shorthand is not None and not isinstance(value, dict):
            got = f"got {_type_name(value)} {value!r}"
            _check(isinstance(value, str), key, f"must be a {shorthand} or a mapping of keys, {got}")
            value = {shorthand: value}  # e.g. ``record: /rec/gate.mp4``
        return _build(annotation, value, key, base)
    raise TypeError(f"unsupported config type {annotation!r}")  # a programming error, not the user's


def _file_url_from(stream: StreamConfig, base: Path) -> StreamConfig:
    """``stream`` with a relative file path in ``url`` taken from ``base``, as ``record`` is."""
    url = stream.url
    if not stream.names_file or "://" in url or url.lower().startswith("file:"):
        return stream
    path = _expand_user(url, "url")
    return stream if path.is_absolute() else dataclasses.replace(stream, url=str(base / path))


def _expand_user(value: str, key: str) -> Path:
    """``value`` as a path with a leading ``~`` or ``~user`` expanded; an unknown user is the file's error."""
    try:
        return Path(value).expanduser()
    except RuntimeError:  # pathlib's answer when the home folder cannot be found
        raise ConfigError(f"{key}: cannot expand {value!r}: no such user or home folder") from None


def _build(cls: type[Any], data: Any, where: str, base: Path) -> Any:
    prefix = f"{where}." if where else ""
    _check(isinstance(data, dict), where or "config", f"must be a mapping of keys, got {_type_name(data)}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = [str(k) for k in data if k not in known]
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key; expected one of {', '.join(sorted(known))}")
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    for name in required:
        _check(name in data, f"{prefix}{name}", "is required")
    kwargs = {name: _convert(value, hints[name], f"{prefix}{name}", base) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # __post_init__ names the field; add where it sits in the file
        raise ConfigError(f"{prefix}{exc}") from None


def parse_config(data: Any, base: Path | None = None) -> ServeConfig:
    """A :class:`ServeConfig` from already-parsed YAML/JSON.

    Relative paths are resolved against ``base``, the config file's folder; without one, ``model`` and
    ``record`` against the working directory and a stream's file ``url`` is left as given (the API's
    streams, opened from the working directory).
    """
    if data is None:
        data = {}
    result: ServeConfig = _build(ServeConfig, data, "", base or Path.cwd())
    if base is not None:
        result = dataclasses.replace(result, streams=tuple(_file_url_from(s, base) for s in result.streams))
    return result


def load_config(path: Path | str) -> ServeConfig:
    """Read and validate a YAML configuration file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: a date like 2024-13-45, a 5000-digit number
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"config file {path} nests lists or mappings too deeply") from None
    try:
        return parse_config(data, path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
