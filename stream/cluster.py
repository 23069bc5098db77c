"""``serve --cluster ADDRESS``: the gateway of a server whose streams run on the nodes of a Ray cluster.

This process is the gateway: the same aiohttp app as ``serve`` (:func:`chromastream.stream.server.create_app`:
page, API, ``/metrics``, WHEP/WHIP, hints, events), running on a :class:`ClusterPool` instead of a
pipeline. The pool starts the worker actors (:class:`~chromastream.stream.cluster_actors.ClusterWorker`),
each placed by Ray by resources (a GPU each, or ``cluster.cpus_per_worker`` CPUs each where there is
none), and the controller actor (:class:`~chromastream.stream.cluster_actors.Controller`), which owns the
assignment of streams to workers and survives its own restarts. The gateway asks the controller where a
stream runs and calls that worker's actor directly for signalling, events and metrics; media never passes
through the gateway.

Lifetimes: the gateway owns every actor (none is detached), so when ``serve`` stops, or its process dies,
Ray removes its workers and controller and nothing is left running on the cluster. The controller is
restarted by Ray whenever it dies (``max_restarts=-1``) and reads its state back from Ray's key-value
store; the gateway's calls to it are retried across that restart. Workers are not restarted: their streams
move to the surviving workers, and a new worker is started when the cluster has room again (a node joins).

Ray is imported only here and in :mod:`chromastream.stream.cluster_actors`, which only ``serve --cluster``
loads (the ``cluster`` extra: ``pip install 'chromastream[cluster]'``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from chromastream.errors import ChromastreamError
from chromastream.models.colorizer.hints import Hint, checked_hints, parse_hints
from chromastream.stream.config import ClusterConfig, ServeConfig, StreamConfig
from chromastream.stream.errors import UsageError
from chromastream.stream.pipeline import PipelineClosed, UnknownStream
from chromastream.stream.workers import (
    FRONT_SERIES,
    RETRY_S,
    START_TIMEOUT_S,
    FollowedEvents,
    Worker,
    WorkerUnavailable,
    _families,
    worker_config,
)

logger = logging.getLogger("chromastream.stream.cluster")

MAINTAIN_S = 1.0
"""How often the gateway compares the workers running with what the cluster has room for."""
JOIN_MARGIN_S = 10.0
"""Time joining may take beyond ``connect_timeout_s`` once the address answers: registering this process
as a driver with a head that is slow but working."""
INSTALL_HINT = "serve --cluster needs Ray: pip install 'chromastream[cluster]'"


class ClusterError(UsageError):
    """The cluster cannot be used: Ray is missing, or the address is wrong or does not answer."""


# ------------------------------------------------------------------------------------------- connect


def parse_address(address: str) -> tuple[str, int] | None:
    """``HOST:PORT`` as a pair, ``None`` for ``auto``; :class:`ClusterError` for anything else."""
    text = address.strip()
    if text == "auto":
        return None
    if "://" in text:
        raise ClusterError(
            f"cluster address {address!r}: give the head's HOST:PORT (its GCS, usually port 6379) or "
            "auto; Ray Client (ray://) is not supported, the gateway must be a node of the cluster"
        )
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ClusterError(f"cluster address {address!r}: expected auto or HOST:PORT, e.g. 10.0.0.5:6379")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return host == "localhost"


def _check_reachable(host: str, port: int, timeout: float) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise ClusterError(
            f"cannot reach the Ray cluster at {host}:{port} ({reason}); is `ray start --head` running there?"
        ) from None


def connect(settings: ClusterConfig) -> None:
    """Join the Ray cluster at ``settings.address`` as a driver, within ``settings.connect_timeout_s``;
    one :class:`ClusterError` line for a missing Ray, a malformed address or one that does not answer.

    A cluster on loopback addresses (one machine, as the tests run it) keeps them: Ray would otherwise
    swap 127.0.0.1 for the machine's outward address, which its nodes do not listen on.
    """
    assert settings.address is not None
    target = parse_address(settings.address)
    if target is not None and _is_loopback(target[0]):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # the workers' lines in the log without colour codes
    # Something that answers on the port but is no Ray head: Ray retries about once a second, this many
    # times, printing a line each time from its C++ core; the error below says it once.
    os.environ.setdefault(
        "RAY_gcs_server_port_wait_time_s", str(max(1, math.ceil(settings.connect_timeout_s)))
    )
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    try:
        import ray
    except ImportError:
        raise ClusterError(INSTALL_HINT) from None
    from ray._private.services import canonicalize_bootstrap_address_or_die

    try:
        address = canonicalize_bootstrap_address_or_die(settings.address.strip())
    except (ConnectionError, ValueError) as exc:
        raise ClusterError(f"no Ray cluster at {settings.address!r}: {exc}") from None
    resolved = parse_address(address)
    assert resolved is not None
    _check_reachable(*resolved, timeout=settings.connect_timeout_s)
    from chromastream.stream.cluster_actors import NAMESPACE

    outcome: list[BaseException | None] = []

    def join() -> None:
        try:
            ray.init(address=address, namespace=NAMESPACE, logging_level=logging.ERROR, log_to_driver=True)
        except BaseException as exc:  # handed to the caller below
            outcome.append(exc)
        else:
            outcome.append(None)

    # In a thread of its own: a port that accepts connections but never answers as a Ray head keeps
    # ray.init waiting without end; a daemon thread left waiting does not keep the process alive.
    joiner = threading.Thread(target=join, name="ray-init", daemon=True)
    joiner.start()
    joiner.join(settings.connect_timeout_s + JOIN_MARGIN_S)
    if not outcome:
        raise ClusterError(
            f"cannot join the Ray cluster at {address}: it did not answer as a Ray head within "
            f"{settings.connect_timeout_s + JOIN_MARGIN_S:g} s"
        )
    if isinstance(outcome[0], ConnectionError | RuntimeError | ValueError):
        raise ClusterError(f"cannot join the Ray cluster at {address}: {outcome[0]}") from None
    if outcome[0] is not None:
        raise outcome[0]


def disconnect() -> None:
    """Leave the cluster (the actors this gateway owns end with it)."""
    import ray

    ray.shutdown()


def cluster_worker_count(settings: ClusterConfig, nodes: Sequence[dict[str, Any]]) -> tuple[int, str]:
    """How many workers the live ``nodes`` (as ``ray.nodes()`` lists them) have room for, and why.

    ``auto``: one per GPU where the cluster has GPUs (each worker its own), else on each node one per
    ``cpus_per_worker`` of its CPUs (a node with fewer runs none: a worker squeezed onto less than what
    one server process keeps busy only slows the others). A number is taken as it is; workers beyond the
    cluster's room wait for it.
    """
    alive = [n for n in nodes if n.get("Alive")]
    if settings.workers != "auto":
        return int(settings.workers), "as configured"
    gpus = sum(float(n.get("Resources", {}).get("GPU", 0)) for n in alive)
    if gpus >= 1:
        return int(gpus), f"auto: one per GPU ({gpus:g} GPUs on {len(alive)} nodes)"
    per_node = [int(float(n.get("Resources", {}).get("CPU", 0)) // settings.cpus_per_worker) for n in alive]
    cpus = sum(float(n.get("Resources", {}).get("CPU", 0)) for n in alive)
    return sum(per_node), (
        f"auto: one per {settings.cpus_per_worker:g} CPUs of each node ({cpus:g} CPUs on {len(alive)} "
        "nodes, no GPU)"
    )


# ------------------------------------------------------------------------------------------- the pool


class ClusterPool:
    """The streams of a server spread over worker actors of a Ray cluster; what
    :func:`chromastream.stream.server.create_app` runs on with ``serve --cluster`` (the server's
    ``StreamsAPI`` and ``StreamRouter``). Call :func:`connect` first."""

    def __init__(self, config: ServeConfig) -> None:
        self._config = worker_config(config)
        self._settings = config.cluster
        self._controller: Any = None
        self._workers: dict[str, Any] = {}
        """Actor handles of the workers started (running or waiting for room), by name."""
        self._ready: set[str] = set()
        self._serial = 0
        self._infos: dict[str, dict[str, Any]] = {}
        self._hints: dict[str, tuple[Hint, ...]] = {}
        self._snapshot: dict[str, Any] = {"workers": {}, "failovers": 0}
        self._metrics: dict[str, str] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._maintainer: asyncio.Task[None] | None = None
        self._last_count: tuple[int, str] | None = None
        self._stopping = False
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_ClusterCollector(self))

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the controller and the workers the cluster has room for; wait until they answer (at
        least one must, within :data:`START_TIMEOUT_S`)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from chromastream.stream.cluster_actors import CONTROLLER_NAME, Controller, clear_state

        if self._stopping:
            raise PipelineClosed("the cluster pool was stopped; create a new one")
        clear_state()  # a previous gateway's streams are not this one's
        here = ray.get_runtime_context().get_node_id()
        self._controller = (
            ray.remote(Controller)
            .options(
                name=CONTROLLER_NAME,
                num_cpus=0,
                max_restarts=-1,
                max_task_retries=-1,
                scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True),
            )
            .remote(logging.getLogger("chromastream").getEffectiveLevel())
        )
        starting = await self._maintain_once()
        deadline = time.monotonic() + START_TIMEOUT_S
        while starting and not self._ready and time.monotonic() < deadline:
            await asyncio.wait(starting, timeout=0.1, return_when=asyncio.FIRST_COMPLETED)
            starting = {t for t in starting if not t.done()}
        if not self._ready:
            await self.stop()
            raise WorkerUnavailable(
                "no worker started on the cluster: it has no room for one (see the log for the count) "
                "or each failed to start"
            )
        if starting:  # the others that have room are still starting: let them finish, briefly
            await asyncio.wait(starting, timeout=30)
        self._maintainer = asyncio.get_running_loop().create_task(self._maintain(), name="cluster workers")

    async def stop(self) -> None:
        """Stop every worker and the controller (their streams end with them). Idempotent."""
        import ray

        self._stopping = True
        tasks = [*self._background, *([self._maintainer] if self._maintainer else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stops = []
        for handle in self._workers.values():
            stops.append(_quietly(handle.stop.remote(), 5.0))
        await asyncio.gather(*stops)
        for handle in [*self._workers.values(), *([self._controller] if self._controller else [])]:
            with contextlib.suppress(Exception):
                ray.kill(handle, no_restart=True)
        self._workers.clear()
        self._ready.clear()
        with contextlib.suppress(Exception):
            from chromastream.stream.cluster_actors import clear_state

            clear_state()

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(MAINTAIN_S)
            try:
                await self._maintain_once()
            except Exception:  # a GCS hiccup must not end the loop
                logger.exception("checking the cluster's workers failed")

    async def _maintain_once(self) -> set[asyncio.Task[None]]:
        """Start workers up to what the cluster's live nodes have room for (see
        :func:`cluster_worker_count`); the tasks that start them."""
        import ray

        nodes = await asyncio.to_thread(ray.nodes)
        count, why = cluster_worker_count(self._settings, nodes)
        if (count, why) != self._last_count:
            logger.info("%d cluster workers (%s)", count, why)
            self._last_count = (count, why)
        started = set()
        while len(self._workers) < count and not self._stopping:
            started.add(self._start_worker())
        return started

    def _start_worker(self) -> asyncio.Task[None]:
        import ray

        from chromastream.stream.cluster_actors import NAMESPACE, ClusterWorker

        self._serial += 1
        name = f"chromastream-worker-{self._serial}"
        resources: dict[str, Any] = {"num_cpus": self._settings.cpus_per_worker}
        cluster_gpus = ray.cluster_resources().get("GPU", 0)  # type: ignore[no-untyped-call]
        if self._settings.workers == "auto" and cluster_gpus >= 1:
            resources = {"num_cpus": 1, "num_gpus": 1}
        level = logging.getLogger("chromastream").getEffectiveLevel()
        handle = (
            ray.remote(ClusterWorker)
            .options(name=name, namespace=NAMESPACE, max_restarts=0, max_concurrency=1000, **resources)
            .remote(name, self._config, level)
        )
        self._workers[name] = handle
        task = asyncio.get_running_loop().create_task(self._run_worker(name, handle), name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _run_worker(self, name: str, handle: Any) -> None:
        """Wait for the worker to start (Ray places it when a node has room), register it with the
        controller, then follow it until it dies, when its place becomes free for a new one."""
        import ray

        try:
            where = await handle.start.remote()
            await self._controller.register_worker.remote(name, where["node"])
            self._ready.add(name)
            logger.info(
                "%s running on node %s (%s, pid %s)", name, where["node"][:12], where["ip"], where["pid"]
            )
            await handle.until_stopped.remote()
        except ray.exceptions.RayActorError as exc:
            if not self._stopping:
                logger.warning("%s is gone: %s", name, str(exc).splitlines()[0] if str(exc) else exc)
        except ChromastreamError as exc:
            logger.error("%s could not start: %s", name, exc)
            with contextlib.suppress(Exception):
                ray.kill(handle, no_restart=True)
        finally:
            self._ready.discard(name)
            if self._workers.get(name) is handle:
                del self._workers[name]

    # --- streams (the server's StreamsAPI) ---------------------------------------------------------

    def _call(self, method: str, *args: Any) -> Any:
        if self._controller is None or self._stopping:
            raise PipelineClosed("the server is stopping; it takes no more streams")
        return getattr(self._controller, method).remote(*args)

    async def add_stream(self, cfg: StreamConfig, source: Any = None) -> dict[str, Any]:
        """Start a new stream on the cluster's least-loaded worker (the controller's choice)."""
        if source is not None:
            raise ValueError("a cluster opens its streams' sources in the workers")
        info: dict[str, Any] = await self._call("add_stream", cfg)
        self._infos[cfg.id] = info
        self._hints[cfg.id] = tuple(cfg.hints)
        return info

    async def remove_stream(self, stream_id: str) -> None:
        self._get(stream_id)
        await self._call("remove_stream", stream_id)
        self._forget(stream_id)

    def streams(self) -> list[dict[str, Any]]:
        return list(self._infos.values())

    def info(self, stream_id: str) -> dict[str, Any]:
        return self._get(stream_id)

    def subscribe(self, stream_id: str, maxsize: int = 2) -> FollowedEvents:
        """The stream's metadata events from whichever worker runs it, followed across failovers."""
        self._get(stream_id)

        async def locate() -> Worker | None:
            while True:
                try:
                    owner = await self._owner(stream_id)
                except UnknownStream:
                    return None
                if owner is not None and owner in self._workers:
                    return self._worker(owner)
                await asyncio.sleep(RETRY_S)

        return FollowedEvents(stream_id, locate)

    def set_hints(self, stream_id: str, hints: Sequence[Hint]) -> None:
        """Replace the stream's hints (checked as the pipeline checks) and hand them to the controller,
        which keeps them and pushes them to the stream's worker."""
        self._get(stream_id)
        self._hints[stream_id] = tuple(checked_hints(hints))
        self._spawn(self._call("set_hints", stream_id, [h.to_json() for h in self._hints[stream_id]]))

    def add_hint(self, stream_id: str, hint: Hint) -> None:
        self.set_hints(stream_id, (*self.hints(stream_id), hint))

    def clear_hints(self, stream_id: str) -> None:
        self.set_hints(stream_id, ())

    def hints(self, stream_id: str) -> list[Hint]:
        self._get(stream_id)
        return list(self._hints.get(stream_id, ()))

    def reset(self, stream_id: str) -> None:
        self._get(stream_id)
        self._spawn(self._call("reset", stream_id))

    # --- routing (the server's StreamRouter) -------------------------------------------------------

    async def refresh(self, *, metrics: bool = False) -> None:
        """The controller's view of every stream (with live figures), and each worker's metrics text."""
        try:
            snapshot: dict[str, Any] = await asyncio.wait_for(_awaited(self._call("snapshot")), 5.0)
        except Exception as exc:  # slow, restarting or failing: the last figures stand this time
            logger.debug("the controller gave no figures this time: %s", exc)
            return
        self._snapshot = snapshot
        infos = {}
        for info in snapshot["streams"]:
            stream_id = str(info["id"])
            hints = info.pop("hints", [])
            if stream_id not in self._hints:
                self._hints[stream_id] = tuple(parse_hints(hints))
            infos[stream_id] = info
        self._infos = infos
        for gone in set(self._hints) - set(infos):
            del self._hints[gone]
        if metrics:
            names = [n for n in self._ready if n in self._workers]
            texts = await asyncio.gather(*(self._metrics_of(n) for n in names))
            self._metrics = {n: t for n, t in zip(names, texts, strict=True) if t is not None}

    async def _metrics_of(self, name: str) -> str | None:
        from chromastream.stream.cluster_actors import RayWorker

        try:
            return await RayWorker(name, self._workers[name]).metrics_text()
        except (ChromastreamError, KeyError):
            return None

    def viewer_count(self, stream_id: str) -> int:
        return int(self._get(stream_id).get("viewers") or 0)

    async def forward(self, request: web.Request, stream_id: str, body: bytes) -> web.Response:
        """Signalling for ``stream_id`` to the worker actor that owns it, its answer back as it is; a WHIP
        offer for a new stream is placed by the controller first."""
        whip = request.path.startswith("/whip/")
        creating = whip and request.method == "POST"
        owner: str | None
        if creating:
            owner = await self._call("reserve_publisher", stream_id)
        else:
            owner = await self._call("owner", stream_id)
        try:
            if owner is None or owner not in self._workers:
                raise WorkerUnavailable(
                    f"stream {stream_id!r} is moving to another worker; try again shortly"
                )
            answer = await self._worker(owner).signal(
                request.method, request.path, body, request.headers.get("Content-Type", "")
            )
        except BaseException:
            if creating:
                self._spawn(self._call("forget", stream_id))
            raise
        if creating:
            if answer.status == 201:
                self._infos[stream_id] = {"id": stream_id, "state": "starting", "worker": owner}
            else:
                self._spawn(self._call("forget", stream_id))
        elif whip and request.method == "DELETE" and answer.status == 200:
            self._spawn(self._call("forget", stream_id))
            self._forget(stream_id)
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    # --- internals ---------------------------------------------------------------------------------

    def _worker(self, name: str) -> Worker:
        from chromastream.stream.cluster_actors import RayWorker

        return RayWorker(name, self._workers[name])

    async def _owner(self, stream_id: str) -> str | None:
        owner: str | None = await self._call("owner", stream_id)
        return owner

    def _get(self, stream_id: str) -> dict[str, Any]:
        try:
            return self._infos[stream_id]
        except KeyError:
            raise UnknownStream(f"no stream {stream_id!r}") from None

    def _forget(self, stream_id: str) -> None:
        self._infos.pop(stream_id, None)
        self._hints.pop(stream_id, None)

    def _spawn(self, ref: Any) -> None:
        async def run() -> None:
            try:
                await ref
            except Exception as exc:  # the next refresh shows the truth
                logger.debug("a controller call failed: %s", exc)

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


class _ClusterCollector(Collector):
    """``/metrics`` of the worker actors, each series with its ``worker`` label (the actor's name), and
    the cluster's own: workers up, streams per worker, streams moved off lost workers."""

    def __init__(self, pool: ClusterPool) -> None:
        self._pool = pool

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for name, text in sorted(self._pool._metrics.items()):
            for family in _families(text):
                if family.name.startswith(FRONT_SERIES):
                    continue
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                merged.samples += [s._replace(labels={**s.labels, "worker": name}) for s in family.samples]
        yield from families.values()
        up = GaugeMetricFamily(
            "chromastream_worker_up",
            "Whether the worker actor is running (0 once it is lost)",
            labels=["worker"],
        )
        streams = GaugeMetricFamily(
            "chromastream_worker_streams", "Streams placed on the worker", labels=["worker"]
        )
        for name, worker in sorted(self._pool._snapshot.get("workers", {}).items()):
            up.add_metric([name], 1.0 if worker["up"] else 0.0)
            streams.add_metric([name], worker["streams"])
        yield from (up, streams)
        yield CounterMetricFamily(
            "chromastream_cluster_failovers",
            "Streams started again on another worker because theirs was lost",
            value=self._pool._snapshot.get("failovers", 0),
        )


async def _awaited(ref: Any) -> Any:
    return await ref


async def _quietly(ref: Any, timeout: float) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(_awaited(ref), timeout)
