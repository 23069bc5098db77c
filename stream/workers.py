"""``serve --workers N``: worker processes, each owning a shard of the streams end to end.

One Python process does not scale the codec work of several streams (measured on two cores: two 1080p
streams got 1.33 times one stream's limit, not twice), so ``serve`` can run its streams in N worker
processes (:mod:`chromastream.stream.worker_main`). Each worker is a complete single-process server for
its streams: source decoding, its own pipeline, batcher and model, encoding, and the WebRTC peer
connections of its viewers with their own UDP sockets. Media never passes through the front.

The front process keeps the page, the REST API, ``/metrics`` and ``/healthz``. Its server
(:func:`chromastream.stream.server.create_app`) runs on a :class:`WorkerPool`, which implements the same
protocol as the in-process pipeline and the server's :class:`~chromastream.stream.server.StreamRouter`:

* adding a stream places it on the worker with the fewest streams; removing, hints and reset go to its
  owner. The front is the keeper of every stream's config and current hints: hints are answered from the
  front's copy and pushed to the owner (always the latest set, so changes that cross in flight cannot
  undo each other);
* WHEP/WHIP signalling (offer, answer, DELETE) is forwarded to the owner as it came, because the peer
  connection lives there; metadata events come from the owner's event stream, followed across restarts;
* the stream list and ``/metrics`` are fetched from every worker when asked (:meth:`WorkerPool.refresh`);
  ``/metrics`` is the union of the workers' series, each with a ``worker`` label, the front's HTTP and
  event series, and the pool's own (``chromastream_worker_up``, ``_restarts_total``, ``_streams``). The
  front collects the text over the control channel rather than using prometheus_client's multiprocess
  mode, which would need a shared folder of memory-mapped files, loses gauges and the series of a
  restarted worker differently per kind, and cannot drop a removed stream's series.

A worker that dies is restarted (after a pause that doubles while it keeps dying young) and its streams
are added to it again with their configs and current hints; other workers are not touched. A WebRTC
publisher's stream (WHIP) cannot be restored, its peer connection died with the worker, so it is
forgotten and the publisher must publish again. While a worker restarts, its streams show the state
``restarting`` and their signalling is answered 503 with ``Retry-After``. A worker that hangs without
dying (its event loop stuck, or the process stopped) is found by the front's health checks over the
control channel (:data:`HEALTH_MISSES` unanswered in a row, 6 to 7 s), killed and restarted the same way;
``chromastream_worker_restarts_total`` counts restarts by ``reason``, ``exited`` or ``hung``.

The control channel is the server's own HTTP API on the worker's private Unix socket. What the front
needs from a worker is the :class:`Worker` protocol (add/remove stream, list, hints, reset, events,
signalling, metrics text): :class:`WorkerClient` implements it over that socket, and another transport
(an actor of a cluster framework) needs only implement the same methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import glob
import json
import logging
import multiprocessing
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from chromastream.errors import ChromastreamError
from chromastream.models.colorizer.hints import Hint, checked_hints
from chromastream.stream.config import ServeConfig, StreamConfig
from chromastream.stream.pipeline import DuplicateStream, PipelineClosed, StreamInfo, UnknownStream
from chromastream.stream.source_policy import KNOWN_SCHEMES
from chromastream.stream.urls import redact_url
from chromastream.stream.worker_main import WorkerSpec, run_worker, to_wire

logger = logging.getLogger("chromastream.stream.workers")

START_TIMEOUT_S = 120.0
"""How long a new worker may take to answer (loading the model included) before it counts as failed."""
STOP_TIMEOUT_S = 10.0
"""How long a worker gets to stop cleanly after SIGTERM before it is killed."""
CONTROL_TIMEOUT_S = 10.0
"""Longest a control request may take; adding a stream gets :data:`ADD_TIMEOUT_S` (a camera may be slow
to answer)."""
ADD_TIMEOUT_S = 60.0
REFRESH_TIMEOUT_S = 2.0
"""Longest the front waits for a worker's figures when answering the stream list or ``/metrics``; a worker
that does not answer in time is shown with its last figures."""
RESTART_DELAY_S = (0.5, 30.0)
"""Pause before restarting a dead worker, doubling (up to the second value) while it dies within
:data:`STABLE_S` of its start, so a worker that cannot run does not spin."""
STABLE_S = 30.0
HEALTH_INTERVAL_S = 1.0
"""How often the front asks each running worker's ``/healthz`` over the control channel. A worker whose
event loop is stuck (or that was stopped with SIGSTOP) does not die, so only asking tells it apart from a
working one; one small request a second per worker costs nothing beside the video."""
HEALTH_TIMEOUT_S = 2.0
"""How long one health check waits for its answer. ``/healthz`` is answered by the worker's event loop
alone, in milliseconds (p99 11 ms while a fuzzer hammers the server), so a check that waits this long
means the loop did not run for two whole seconds."""
HEALTH_MISSES = 3
"""Unanswered health checks in a row after which a worker counts as hung: it is killed with SIGKILL (a
stopped or stuck process cannot act on SIGTERM) and restarted like a worker that died. Three checks of
:data:`HEALTH_TIMEOUT_S` each, one started every :data:`HEALTH_INTERVAL_S` at most, make 6 to 7 s of
silence: long enough that a loop slowed by a busy two-core machine (stalls of a fraction of a second) is
never taken for a hung one, short enough that viewers get their stream back within seconds."""
RETRY_S = 0.2
"""Pause between attempts of a metadata event stream to reach a restarting worker."""
#: Series the front keeps itself: its own HTTP errors and metadata clients (the workers' versions of
#: these count the front's internal requests, not clients).
FRONT_SERIES = ("chromastream_http_errors", "chromastream_sse_")


class WorkerUnavailable(ChromastreamError):
    """A worker cannot be reached (it is starting, restarting or has stopped)."""


class WorkerRefused(ChromastreamError):
    """A worker answered a control request with an error; the message is the worker's."""


# ------------------------------------------------------------------------------------ worker count


def visible_gpus() -> tuple[str, ...]:
    """The GPUs workers may be given, as ``CUDA_VISIBLE_DEVICES`` names them: that variable where it is
    set, else the NVIDIA device nodes (found without loading any CUDA library)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return tuple(d for d in (part.strip() for part in listed.split(",")) if d and d != "-1")
    nodes = (re.fullmatch(r"/dev/nvidia(\d+)", path) for path in glob.glob("/dev/nvidia[0-9]*"))
    return tuple(sorted((m.group(1) for m in nodes if m is not None), key=int))


def usable_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_count(
    setting: int | str, streams: int, cores: int | None = None, gpus: int | None = None
) -> tuple[int, str]:
    """How many workers ``setting`` (a number or ``auto``) means for a server that starts with
    ``streams`` streams, and why (for the log).

    ``auto``: one worker per GPU, each with its own; without a GPU, one per two usable cores. One process
    keeps at most about one and a half cores busy (``benchmarks.serve_throughput``: its interpreter lock
    binds the event loop, packetizing and the frame work between the codec threads), so a worker per two
    cores lets each use what one process can; on two cores that is one worker, where a second one's gain
    measured within the noise of a shared machine and costs a second model's memory (about 300 MB).
    Either way no more workers than the streams it starts with (at least one): a worker without a stream
    only holds memory. A server fed through the API names its number.
    """
    if setting != "auto":
        return int(setting), "as configured"
    cores = usable_cores() if cores is None else cores
    gpus = len(visible_gpus()) if gpus is None else gpus
    if gpus:
        count, why = gpus, f"one per GPU ({gpus} GPU{'s' if gpus != 1 else ''} visible)"
    else:
        count, why = max(1, min(cores // 2, 64)), f"one per two usable cores ({cores} usable, no GPU)"
    if count > max(1, streams):
        count, why = max(1, streams), f"{why}, at most one per stream it starts with ({streams})"
    return count, f"auto: {why}"


MIN_SHARE = 2
"""Fewest cores a worker is pinned to. A worker on one core queues its decoding, inference and encoding
behind each other there while the other cores idle whenever it waits, so below two each worker may use
every core."""


def core_shares(count: int) -> list[tuple[int, ...]]:
    """Each of ``count`` workers' cores: an equal share of the usable cores (the last takes what is left
    over), or no pinning at all (empty) where a share would be under :data:`MIN_SHARE` cores."""
    if not hasattr(os, "sched_getaffinity"):
        return [()] * count
    cores = sorted(os.sched_getaffinity(0))
    share = len(cores) // count
    if share < MIN_SHARE:
        return [()] * count
    return [tuple(cores[i * share : (i + 1) * share if i < count - 1 else None]) for i in range(count)]


def _on_cores(cpus: tuple[int, ...]) -> str:
    return f" on core{'s' if len(cpus) > 1 else ''} {','.join(map(str, cpus))}" if cpus else ""


# ---------------------------------------------------------------------------------- control channel


@dataclass(frozen=True)
class SignalAnswer:
    """A worker's answer to forwarded signalling, passed on to the client as it is."""

    status: int
    body: bytes
    headers: dict[str, str]


#: Headers of a signalling answer that the client needs (the session's URL, how long to wait).
ANSWER_HEADERS = ("Content-Type", "Location", "Access-Control-Expose-Headers", "Retry-After")


class Worker(Protocol):
    """What the front needs from one worker, whatever carries the calls. Stream info is the API's JSON
    object of a stream; an event is the object one ``data:`` line of the events stream carries."""

    async def add_stream(self, cfg: StreamConfig) -> dict[str, Any]: ...

    async def remove_stream(self, stream_id: str) -> None: ...

    async def streams(self) -> list[dict[str, Any]]: ...

    async def set_hints(self, stream_id: str, hints: Sequence[Hint]) -> None: ...

    async def reset(self, stream_id: str) -> None: ...

    def events(self, stream_id: str) -> AsyncIterator[dict[str, Any]]: ...

    async def signal(self, method: str, path: str, body: bytes, content_type: str) -> SignalAnswer: ...

    async def metrics_text(self) -> str: ...

    async def healthy(self) -> bool: ...

    async def close(self) -> None: ...


class WorkerClient:
    """:class:`Worker` over HTTP to the worker's API on its Unix socket
    (:mod:`chromastream.stream.worker_main`).

    Every failure to reach the worker is :class:`WorkerUnavailable`; an error answer is
    :class:`UnknownStream` (404), :class:`DuplicateStream` (409) or :class:`WorkerRefused`.
    """

    def __init__(self, index: int, socket_path: str) -> None:
        self.index = index
        self.socket_path = socket_path
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # ``localhost``: the name a server accepts in Host for requests that change things.
            self._session = aiohttp.ClientSession(
                "http://localhost", connector=aiohttp.UnixConnector(path=self.socket_path)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = CONTROL_TIMEOUT_S,
    ) -> tuple[int, bytes, dict[str, str]]:
        try:
            async with self._client().request(
                method,
                path,
                json=body,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                return response.status, await response.read(), dict(response.headers)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise WorkerUnavailable(
                f"worker {self.index} did not answer: {exc or type(exc).__name__}"
            ) from exc

    async def _json(self, method: str, path: str, ok: int = 200, **kwargs: Any) -> Any:
        status, data, _ = await self._call(method, path, **kwargs)
        try:
            answer = json.loads(data) if data else None
        except ValueError:
            answer = None
        if status == ok:
            return answer
        message = answer.get("error") if isinstance(answer, dict) else None
        message = str(message or f"worker {self.index} answered {status}")
        if status == 404:
            raise UnknownStream(message)
        if status == 409:
            raise DuplicateStream(message)
        raise WorkerRefused(message)

    async def healthy(self) -> bool:
        try:
            status, _, _ = await self._call("GET", "/healthz", timeout=REFRESH_TIMEOUT_S)
        except WorkerUnavailable:
            return False
        return status == 200

    async def add_stream(self, cfg: StreamConfig) -> dict[str, Any]:
        info: dict[str, Any] = await self._json(
            "POST", "/api/streams", ok=201, body=to_wire(cfg), timeout=ADD_TIMEOUT_S
        )
        return info

    async def remove_stream(self, stream_id: str) -> None:
        await self._json("DELETE", f"/api/streams/{stream_id}")

    async def streams(self) -> list[dict[str, Any]]:
        answer = await self._json("GET", "/api/streams", timeout=REFRESH_TIMEOUT_S)
        return list(answer["streams"])

    async def set_hints(self, stream_id: str, hints: Sequence[Hint]) -> None:
        await self._json("PUT", f"/api/streams/{stream_id}/hints", body=[h.to_json() for h in hints])

    async def reset(self, stream_id: str) -> None:
        await self._json("POST", f"/api/streams/{stream_id}/reset")

    async def signal(self, method: str, path: str, body: bytes, content_type: str) -> SignalAnswer:
        headers = {"Content-Type": content_type} if content_type else {}
        status, data, answer_headers = await self._call(method, path, data=body, headers=headers)
        kept = {name: answer_headers[name] for name in ANSWER_HEADERS if name in answer_headers}
        return SignalAnswer(status, data, kept)

    async def metrics_text(self) -> str:
        status, data, _ = await self._call("GET", "/metrics", timeout=REFRESH_TIMEOUT_S)
        if status != 200:
            raise WorkerRefused(f"worker {self.index} answered {status} for its metrics")
        return data.decode("utf-8")

    async def events(self, stream_id: str) -> AsyncIterator[dict[str, Any]]:
        """The stream's metadata events until the worker ends them (the stream ended or was removed);
        a lost connection raises :class:`WorkerUnavailable`."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONTROL_TIMEOUT_S)
        try:
            async with self._client().get(f"/api/streams/{stream_id}/events", timeout=timeout) as response:
                if response.status == 404:
                    raise UnknownStream(f"no stream {stream_id!r} on worker {self.index}")
                if response.status != 200:
                    raise WorkerRefused(f"worker {self.index} answered {response.status} for events")
                data: list[str] = []
                async for raw in response.content:
                    line = raw.decode("utf-8").rstrip("\r\n")
                    if line.startswith("event: end"):
                        return
                    if line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif not line and data:
                        yield json.loads("\n".join(data))
                        data = []
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise WorkerUnavailable(f"worker {self.index}: events of {stream_id!r} lost: {exc}") from exc
        raise WorkerUnavailable(f"worker {self.index}: events of {stream_id!r} ended without an end")


# ------------------------------------------------------------------------------------------- the pool


@dataclass(frozen=True)
class RemoteFrame:
    """A frame's metadata event from a worker, shaped as the server's event source reads an output frame
    (:func:`chromastream.stream.webrtc.frame_event`): the event is the whole metadata."""

    stream_id: str
    index: int
    pts: int | None
    time_base: Fraction
    metadata: dict[str, Any]

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> RemoteFrame:
        base = str(event.get("time_base") or "1/1")
        pts = event.get("pts")
        return cls(
            str(event.get("stream", "")),
            int(event.get("index") or 0),
            pts if isinstance(pts, int) else None,
            Fraction(base),
            event,
        )


class _Slot:
    """One worker position: its current process (replaced on restart) and how to reach it."""

    def __init__(self, index: int, gpu: str | None, cpus: tuple[int, ...]) -> None:
        self.index = index
        self.gpu = gpu
        self.cpus = cpus
        self.process: multiprocessing.process.BaseProcess | None = None
        self.client: Worker | None = None
        self.ready = asyncio.Event()
        self.started = 0.0
        self.restarts = {"exited": 0, "hung": 0}
        """Restarts by reason: the process exited (or died), or it stopped answering and was killed."""
        self.delay = RESTART_DELAY_S[0]
        self.metrics_text = ""
        self.watcher: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def worker(self) -> Worker:
        if self.client is None or not self.ready.is_set():
            raise WorkerUnavailable(f"worker {self.index} is restarting; try again in a few seconds")
        return self.client


@dataclass(eq=False)
class _Placement:
    """A stream as the front keeps it: its config, its current hints, and where it runs."""

    cfg: StreamConfig
    slot: _Slot
    hints: tuple[Hint, ...]
    restorable: bool = True
    """False for a WHIP publisher's stream, which cannot outlive its worker."""
    info: dict[str, Any] = field(default_factory=dict)
    live: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while the stream exists on a running worker."""
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the stream is removed (or could not be added): its event readers end."""
    hints_dirty: bool = False
    pusher: asyncio.Task[None] | None = None


def _starting_info(cfg: StreamConfig) -> dict[str, Any]:
    info = StreamInfo(
        cfg.id, redact_url(cfg.url), "starting", None, None, None, 0.0, 0.0, None, None, 0, 0, 0, 0, 0
    )
    return info.to_json()


def worker_config(config: ServeConfig) -> ServeConfig:
    """The config a worker runs with. The front is a worker's one client: it has checked API streams
    against the source policy already (the config's are the operator's), its requests are not a
    browser's to pace, and it adds the streams itself."""
    return dataclasses.replace(
        config,
        token=None,
        streams=(),
        sources=dataclasses.replace(
            config.sources, schemes=KNOWN_SCHEMES, hosts=("0.0.0.0/0", "::/0"), folders=(Path("/"),)
        ),
        limits=dataclasses.replace(config.limits, requests_per_s=None),
    )


class WorkerPool:
    """The streams of a server spread over worker processes (module docstring); what
    :func:`chromastream.stream.server.create_app` runs on with ``serve --workers N``.

    ``gpus`` are handed out to the workers in turn (each sees only its own); none leaves every worker
    with the machine's defaults.
    """

    def __init__(self, config: ServeConfig, count: int, *, gpus: Sequence[str] = ()) -> None:
        if count < 1:
            raise ValueError(f"a pool needs at least one worker, got {count}")
        root = logging.getLogger()
        self._config = worker_config(config)
        self._log_levels = {
            name: logger_.level
            for name, logger_ in logging.root.manager.loggerDict.items()
            if isinstance(logger_, logging.Logger) and logger_.level != logging.NOTSET
        } | {"": root.level}
        self._handler_level = min((h.level for h in root.handlers), default=logging.WARNING)
        shares = core_shares(count)
        self._slots = [_Slot(i, gpus[i % len(gpus)] if gpus else None, shares[i]) for i in range(count)]
        self._streams: dict[str, _Placement] = {}
        self._context = multiprocessing.get_context("spawn")
        self._folder: Path | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._started = False
        self._stopping = False
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_PoolCollector(self))

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker and wait until each answers; if one cannot start, stop the others and
        raise :class:`WorkerUnavailable`."""
        if self._stopping:
            raise PipelineClosed("the worker pool was stopped; create a new one")
        if self._started:
            return
        self._started = True
        self._folder = Path(tempfile.mkdtemp(prefix="chromastream-workers-"))  # mode 0700: ours alone
        try:
            await asyncio.gather(*(self._launch(slot) for slot in self._slots))
        except BaseException:
            await self.stop()
            raise
        for slot in self._slots:
            slot.watcher = asyncio.get_running_loop().create_task(
                self._watch(slot), name=f"worker {slot.index}"
            )
        running = ", ".join(f"worker {s.index} pid {s.pid}{_on_cores(s.cpus)}" for s in self._slots)
        logger.info("%d workers running: %s", len(self._slots), running)

    async def stop(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT_S`). Idempotent."""
        self._stopping = True
        tasks = [*(s.watcher for s in self._slots if s.watcher), *self._background]
        tasks += [p.pusher for p in self._streams.values() if p.pusher is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # a watcher lets go of its process first
        running = [s.process for s in self._slots if s.process is not None and s.process.is_alive()]
        for process in running:
            process.terminate()
        for process in running:
            try:
                await asyncio.wait_for(_exited(process), STOP_TIMEOUT_S)
            except TimeoutError:
                logger.warning(
                    "worker pid %s did not stop within %.0f s; killing it", process.pid, STOP_TIMEOUT_S
                )
                process.kill()
                await _exited(process)
        for slot in self._slots:
            slot.ready.clear()
            if slot.client is not None:
                await slot.client.close()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    async def _launch(self, slot: _Slot) -> None:
        """Start ``slot``'s worker process and wait until its API answers."""
        assert self._folder is not None
        socket = self._folder / f"worker-{slot.index}.sock"
        socket.unlink(missing_ok=True)
        spec = WorkerSpec(
            slot.index, self._config, str(socket), self._log_levels, self._handler_level, slot.gpu, slot.cpus
        )
        process = self._context.Process(
            target=run_worker, args=(spec,), name=f"chromastream-worker-{slot.index}", daemon=True
        )
        process.start()
        if slot.client is not None:
            await slot.client.close()
        client = WorkerClient(slot.index, str(socket))
        slot.process, slot.client, slot.started = process, client, time.monotonic()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not await client.healthy():
            if not process.is_alive():
                raise WorkerUnavailable(
                    f"worker {slot.index} exited with status {process.exitcode} while starting "
                    "(its log lines say why)"
                )
            if time.monotonic() > deadline:
                process.kill()
                raise WorkerUnavailable(f"worker {slot.index} did not answer within {START_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.1)
        slot.ready.set()

    async def _watch(self, slot: _Slot) -> None:
        """Restart ``slot``'s worker whenever it exits or hangs (:meth:`_kill_if_hung`), then give it back
        its streams."""
        reason: str | None = None
        while True:
            assert slot.process is not None
            probe = asyncio.get_running_loop().create_task(
                self._kill_if_hung(slot), name=f"worker {slot.index} health"
            )
            try:
                await _exited(slot.process)
            finally:
                probe.cancel()
            silent = None
            if probe.done() and not probe.cancelled():
                if probe.exception() is None:
                    silent = probe.result()
                else:
                    logger.error("worker %d: health checks failed", slot.index, exc_info=probe.exception())
            if self._stopping:
                return
            self._lost(slot)
            if time.monotonic() - slot.started > STABLE_S:
                slot.delay = RESTART_DELAY_S[0]
            delay, slot.delay = slot.delay, min(slot.delay * 2, RESTART_DELAY_S[1])
            ids = ", ".join(p.cfg.id for p in self._placed_on(slot)) or "none"
            if silent is not None:
                logger.warning(
                    "worker %d (pid %s) hung: no answer to its health check for %.1f s (%d checks in a "
                    "row); killed it, restarting it in %.1f s with its streams: %s",
                    *(slot.index, slot.process.pid, silent, HEALTH_MISSES, delay, ids),
                )
            else:
                logger.warning(
                    "worker %d (pid %s) exited with status %s; restarting it in %.1f s with its streams: %s",
                    *(slot.index, slot.process.pid, slot.process.exitcode, delay, ids),
                )
            # A restart that fails to start is retried under the reason that took the worker down first.
            reason = reason or ("hung" if silent is not None else "exited")
            await asyncio.sleep(delay)
            try:
                await self._launch(slot)
            except WorkerUnavailable as exc:
                logger.error("%s", exc)
                if slot.process.is_alive():
                    slot.process.kill()
                continue
            slot.restarts[reason] += 1
            reason = None
            await self._restore(slot)

    async def _kill_if_hung(self, slot: _Slot) -> float | None:
        """Ask the worker's health every :data:`HEALTH_INTERVAL_S` while its process lives; after
        :data:`HEALTH_MISSES` unanswered checks in a row, kill it with SIGKILL and return how long it had
        been silent (:meth:`_watch` sees the exit and restarts it)."""
        process, client = slot.process, slot.client
        assert process is not None and client is not None
        answered, misses = time.monotonic(), 0
        while True:
            started = time.monotonic()
            try:
                ok = await asyncio.wait_for(client.healthy(), HEALTH_TIMEOUT_S)
            except TimeoutError:
                ok = False
            if ok:
                answered, misses = time.monotonic(), 0
            else:
                misses += 1
                if misses >= HEALTH_MISSES and process.is_alive():
                    process.kill()
                    return time.monotonic() - answered
            await asyncio.sleep(max(0.0, HEALTH_INTERVAL_S - (time.monotonic() - started)))

    def _lost(self, slot: _Slot) -> None:
        slot.ready.clear()
        slot.metrics_text = ""
        for placement in self._placed_on(slot):
            placement.live.clear()
            placement.info = placement.info | {"state": "restarting", "viewers": 0}

    async def _restore(self, slot: _Slot) -> None:
        """Add ``slot``'s streams to its new worker, with their current hints; a WHIP stream is forgotten."""
        for placement in self._placed_on(slot):
            if not placement.restorable:
                self._release(placement)
                logger.warning("stream %s: its WebRTC publisher must publish again", placement.cfg.id)
        placements = self._placed_on(slot)
        results = await asyncio.gather(*(self._add_on_worker(p) for p in placements), return_exceptions=True)
        for placement, result in zip(placements, results, strict=True):
            if isinstance(result, BaseException):
                placement.info = _starting_info(placement.cfg) | {"state": "failed", "error": str(result)}
                logger.error(
                    "stream %s could not be restored on worker %d: %s", placement.cfg.id, slot.index, result
                )
        restored = sum(1 for r in results if not isinstance(r, BaseException))
        logger.info("worker %d restarted (pid %s) with %d streams", slot.index, slot.pid, restored)

    async def _add_on_worker(self, placement: _Placement) -> None:
        hints = placement.hints
        worker = placement.slot.worker()
        info = await worker.add_stream(dataclasses.replace(placement.cfg, hints=hints))
        if self._streams.get(placement.cfg.id) is not placement:  # removed while it was being added
            with contextlib.suppress(ChromastreamError):
                await worker.remove_stream(placement.cfg.id)
            return
        placement.info = info
        placement.live.set()
        if placement.hints != hints:  # changed while it was being added
            self._push_hints(placement)

    # --- streams (the server's StreamsAPI) ---------------------------------------------------------

    async def add_stream(self, cfg: StreamConfig, source: Any = None) -> dict[str, Any]:
        """Place a new stream on the worker with the fewest streams and start it there."""
        if source is not None:
            raise ValueError("a worker pool opens its streams' sources in the workers")
        placement = await self._reserve(cfg)
        try:
            await self._add_on_worker(placement)
        except BaseException:
            self._release(placement)
            raise
        return self._info(placement)

    async def remove_stream(self, stream_id: str) -> None:
        placement = self._get(stream_id)
        self._release(placement)
        if placement.pusher is not None:
            placement.pusher.cancel()
        if placement.live.is_set():
            try:
                await placement.slot.worker().remove_stream(stream_id)
            except ChromastreamError as exc:  # gone already, or with its worker (which will not restore it)
                logger.debug(
                    "stream %s: removing it from worker %d: %s", stream_id, placement.slot.index, exc
                )

    def streams(self) -> list[dict[str, Any]]:
        return [self._info(p) for p in self._streams.values()]

    def info(self, stream_id: str) -> dict[str, Any]:
        return self._info(self._get(stream_id))

    def subscribe(self, stream_id: str, maxsize: int = 2) -> FollowedEvents:
        """The stream's metadata events from its worker, followed across the worker's restarts (``maxsize``
        is the worker's business: its own event queue drops its oldest when the front reads slowly)."""
        placement = self._get(stream_id)

        async def locate() -> Worker | None:
            return placement.slot.worker() if await _until_live(placement) else None

        return FollowedEvents(stream_id, locate)

    def set_hints(self, stream_id: str, hints: Sequence[Hint]) -> None:
        """Replace the stream's hints here and push them to its worker (checked as the pipeline checks)."""
        placement = self._get(stream_id)
        placement.hints = checked_hints(hints)
        self._push_hints(placement)

    def add_hint(self, stream_id: str, hint: Hint) -> None:
        self.set_hints(stream_id, (*self._get(stream_id).hints, hint))

    def clear_hints(self, stream_id: str) -> None:
        self.set_hints(stream_id, ())

    def hints(self, stream_id: str) -> list[Hint]:
        return list(self._get(stream_id).hints)

    def reset(self, stream_id: str) -> None:
        """Ask the owner to reset the stream's memory at its next frame (a restarting worker starts
        afresh anyway)."""
        placement = self._get(stream_id)
        if placement.live.is_set():
            self._spawn(placement.slot.worker().reset(stream_id), f"reset {stream_id}")

    # --- routing (the server's StreamRouter) -------------------------------------------------------

    async def refresh(self, *, metrics: bool = False) -> None:
        """Fetch every running worker's stream figures (and metrics text) for the answer being made."""
        await asyncio.gather(*(self._refresh(slot, metrics) for slot in self._slots if slot.ready.is_set()))

    async def _refresh(self, slot: _Slot, metrics: bool) -> None:
        try:
            worker = slot.worker()
            infos, text = await asyncio.gather(
                worker.streams(), worker.metrics_text() if metrics else _nothing()
            )
        except ChromastreamError as exc:
            logger.debug("worker %d: no figures this time: %s", slot.index, exc)
            return
        if text is not None:
            slot.metrics_text = text
        for info in infos:
            placement = self._streams.get(str(info.get("id")))
            if placement is not None and placement.slot is slot and placement.live.is_set():
                placement.info = info

    def viewer_count(self, stream_id: str) -> int:
        return int(self._get(stream_id).info.get("viewers") or 0)

    async def forward(self, request: web.Request, stream_id: str, body: bytes) -> web.Response:
        """Signalling for ``stream_id`` (a WHEP/WHIP offer, already read as ``body``, or a DELETE) to the
        worker that owns the stream, and its answer back as it is; a WHIP offer for a new stream places
        it first."""
        whip = request.path.startswith("/whip/")
        creating = whip and request.method == "POST"
        if creating:
            placement = await self._reserve(
                StreamConfig(id=stream_id, url=f"whip://{stream_id}"), restorable=False
            )
        else:
            placement = self._get(stream_id)
        try:
            worker = placement.slot.worker()
            if not creating and not placement.live.is_set():
                raise WorkerUnavailable(f"stream {stream_id!r} is restarting; try again in a few seconds")
            answer = await worker.signal(
                request.method, request.path, body, request.headers.get("Content-Type", "")
            )
        except BaseException:
            if creating:
                self._release(placement)
            raise
        if creating:
            if answer.status == 201:
                placement.live.set()
            else:
                self._release(placement)
        elif whip and request.method == "DELETE" and answer.status == 200:
            self._release(placement)  # the publisher is gone and its stream with it
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    # --- internals ---------------------------------------------------------------------------------

    def _get(self, stream_id: str) -> _Placement:
        try:
            return self._streams[stream_id]
        except KeyError:
            raise UnknownStream(f"no stream {stream_id!r}") from None

    def _placed_on(self, slot: _Slot) -> list[_Placement]:
        return [p for p in self._streams.values() if p.slot is slot]

    def _info(self, placement: _Placement) -> dict[str, Any]:
        data = dict(placement.info or _starting_info(placement.cfg))
        data["worker"] = placement.slot.index
        return data

    async def _reserve(self, cfg: StreamConfig, restorable: bool = True) -> _Placement:
        """Claim ``cfg.id`` on the least-loaded running worker (waiting for one while all restart)."""
        if self._stopping:
            raise PipelineClosed("the server is stopping; it takes no more streams")
        if cfg.id in self._streams:
            raise DuplicateStream(f"stream {cfg.id!r} exists already")
        ready = [s for s in self._slots if s.ready.is_set()]
        if not ready:
            waiters = [asyncio.ensure_future(s.ready.wait()) for s in self._slots]
            _, pending = await asyncio.wait(
                waiters, timeout=START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in pending:
                waiter.cancel()
            ready = [s for s in self._slots if s.ready.is_set()]
            if not ready:
                raise WorkerUnavailable("no worker is running; see the log for why")
            if cfg.id in self._streams:
                raise DuplicateStream(f"stream {cfg.id!r} exists already")
        slot = min(ready, key=lambda s: (len(self._placed_on(s)), s.index))
        placement = _Placement(cfg, slot, tuple(cfg.hints), restorable, _starting_info(cfg))
        self._streams[cfg.id] = placement
        return placement

    def _release(self, placement: _Placement) -> None:
        """Forget the stream here (its worker is told by the caller, where it still has it)."""
        if self._streams.get(placement.cfg.id) is placement:
            del self._streams[placement.cfg.id]
        placement.gone.set()

    def _push_hints(self, placement: _Placement) -> None:
        """Send the stream's current hints to its worker once the pushes in flight are done; a worker
        that is down gets them when it is restored."""
        placement.hints_dirty = True
        if placement.pusher is None or placement.pusher.done():
            placement.pusher = asyncio.get_running_loop().create_task(
                self._pusher(placement), name=f"hints {placement.cfg.id}"
            )

    async def _pusher(self, placement: _Placement) -> None:
        while placement.hints_dirty and self._streams.get(placement.cfg.id) is placement:
            placement.hints_dirty = False
            if not placement.live.is_set():
                return  # _add_on_worker pushes them once the stream is back
            try:
                await placement.slot.worker().set_hints(placement.cfg.id, placement.hints)
            except ChromastreamError as exc:
                logger.debug(
                    "stream %s: hints not pushed now (%s); they go with its restore", placement.cfg.id, exc
                )
                return

    def _spawn(self, coro: Any, what: str) -> None:
        async def run() -> None:
            try:
                await coro
            except ChromastreamError as exc:
                logger.debug("%s: %s", what, exc)

        task = asyncio.get_running_loop().create_task(run(), name=what)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


class FollowedEvents:
    """A stream's metadata events from whichever worker runs it, followed across that worker's restart or
    the stream's move to another worker: a lost worker only pauses them. They end when the stream ends or
    is removed, or after :meth:`close`.

    ``locate`` answers the worker that runs the stream now, waiting while it has none, or ``None`` once
    the stream is gone; it is the one thing that differs between worker processes and a cluster."""

    def __init__(self, stream_id: str, locate: Callable[[], Awaitable[Worker | None]]) -> None:
        self._stream_id = stream_id
        self._locate = locate
        self._closed = False

    def __aiter__(self) -> AsyncIterator[RemoteFrame]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[RemoteFrame]:
        while not self._closed:
            worker = await self._locate()
            if worker is None:
                return
            try:
                async for event in worker.events(self._stream_id):
                    yield RemoteFrame.from_event(event)
                return  # the worker ended them: the stream ended or was removed
            except (WorkerUnavailable, UnknownStream):
                await asyncio.sleep(RETRY_S)

    def close(self) -> None:
        self._closed = True


class _PoolCollector(Collector):
    """``/metrics`` of the workers (from the texts :meth:`WorkerPool.refresh` fetched), each series with
    its ``worker`` label, and the pool's own gauges."""

    def __init__(self, pool: WorkerPool) -> None:
        self._pool = pool

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for slot in self._pool._slots:
            for family in _families(slot.metrics_text):
                if family.name.startswith(FRONT_SERIES):
                    continue
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                worker = str(slot.index)
                merged.samples += [s._replace(labels={**s.labels, "worker": worker}) for s in family.samples]
        yield from families.values()
        up = GaugeMetricFamily(
            "chromastream_worker_up",
            "Whether the worker process is running (0 while it restarts)",
            labels=["worker"],
        )
        restarts = CounterMetricFamily(
            "chromastream_worker_restarts",
            "Times the worker process was started again, by reason: it exited (or died), or it hung "
            "(stopped answering its health checks and was killed)",
            labels=["worker", "reason"],
        )
        streams = GaugeMetricFamily(
            "chromastream_worker_streams", "Streams placed on the worker", labels=["worker"]
        )
        for slot in self._pool._slots:
            labels = [str(slot.index)]
            up.add_metric(labels, 1.0 if slot.ready.is_set() else 0.0)
            for reason, count in slot.restarts.items():
                restarts.add_metric([*labels, reason], count)
            streams.add_metric(labels, len(self._pool._placed_on(slot)))
        yield from (up, restarts, streams)


def _families(text: str) -> list[Metric]:
    try:
        return list(text_string_to_metric_families(text))
    except ValueError:
        logger.warning("a worker's metrics text could not be read; its series are left out this time")
        return []


async def _until_live(placement: _Placement) -> bool:
    """Wait until the stream runs on a worker (True) or is removed (False)."""
    if not placement.live.is_set() and not placement.gone.is_set():
        waits = {asyncio.ensure_future(placement.live.wait()), asyncio.ensure_future(placement.gone.wait())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
    return not placement.gone.is_set()


async def _nothing() -> None:
    return None


async def _exited(process: multiprocessing.process.BaseProcess) -> None:
    """Wait until ``process`` has exited, without a thread: its sentinel becomes readable then."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    sentinel = process.sentinel

    def ready() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(sentinel, ready)
    try:
        await done
    finally:
        loop.remove_reader(sentinel)
    # The sentinel closes as the process exits, a moment before it can be reaped for its status.
    for _ in range(100):
        if process.exitcode is not None:
            return
        await asyncio.sleep(0.01)
