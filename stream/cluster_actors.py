"""What runs inside a Ray cluster for ``serve --cluster``: the worker actor, the controller actor, and
:class:`RayWorker`, the :class:`~chromastream.stream.workers.Worker` protocol over actor method calls.

A **worker actor** (:class:`ClusterWorker`) is the same worker as ``serve --workers N`` runs, only started
by Ray on whichever node has room for it: a whole single-process server for its share of the streams
(:func:`~chromastream.stream.server.pipeline_for` and :func:`~chromastream.stream.server.create_app`) on
a private Unix socket of its own node, which its methods call through
:class:`~chromastream.stream.workers.WorkerClient`, the same code path as a local worker. Decoding, the
model, encoding and the WebRTC peers of its viewers all run on that node, so a viewer's media comes
straight from there. It lives until it is stopped or its node dies; it is never restarted by Ray
(``max_restarts=0``): its streams move to the surviving workers instead, at once.

The **controller** (:class:`Controller`, one named actor) owns which worker runs each stream, and each
stream's config and current hints. It keeps them in Ray's internal key-value store (on the head's GCS), so
when the controller itself dies and Ray restarts it, it reads them back and carries on. It watches every
worker with one call that never returns (``until_stopped``): Ray ends that call with an error the moment
the worker's process or node is gone, and the controller then adds the worker's streams to the least-loaded
survivors with their configs and hints (colour memory starts afresh). The control channel is plain actor
calls; Ray provides membership, placement, death notices and the transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import ray
from ray.experimental import internal_kv

from chromastream.errors import ChromastreamError
from chromastream.models.colorizer.hints import Hint, parse_hints
from chromastream.stream.config import ServeConfig, StreamConfig
from chromastream.stream.pipeline import DuplicateStream, UnknownStream
from chromastream.stream.worker_main import from_wire, to_wire
from chromastream.stream.workers import (
    ADD_TIMEOUT_S,
    CONTROL_TIMEOUT_S,
    REFRESH_TIMEOUT_S,
    SignalAnswer,
    WorkerClient,
    WorkerUnavailable,
    _starting_info,
)

logger = logging.getLogger("chromastream.stream.cluster_actors")

NAMESPACE = "chromastream"
"""Ray namespace of the gateway's actors and key-value entries."""
CONTROLLER_NAME = "chromastream-controller"
STATE_KEY = b"controller-state"
"""Key of the controller's state in Ray's internal key-value store (namespace :data:`NAMESPACE`)."""
EVENT_BUFFER = 8
"""Metadata events a worker's event stream runs ahead of the gateway reading it (Ray's generator
back-pressure); the worker's own event queue drops its oldest beyond that."""


async def _answer(ref: Any, timeout: float, what: str) -> Any:
    """The result of an actor call, or :class:`WorkerUnavailable` when the actor is gone or slow; an
    error the actor raised (a :class:`ChromastreamError`) comes through as it is."""

    async def wait() -> Any:
        return await ref

    try:
        return await asyncio.wait_for(wait(), timeout)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError, TimeoutError) as exc:
        raise WorkerUnavailable(f"{what} did not answer: {type(exc).__name__}") from exc


class RayWorker:
    """:class:`~chromastream.stream.workers.Worker` over the methods of a :class:`ClusterWorker` actor."""

    def __init__(self, name: str, handle: Any) -> None:
        self.name = name
        self.handle = handle

    async def add_stream(self, cfg: StreamConfig) -> dict[str, Any]:
        info: dict[str, Any] = await _answer(self.handle.add_stream.remote(cfg), ADD_TIMEOUT_S, self.name)
        return info

    async def remove_stream(self, stream_id: str) -> None:
        await _answer(self.handle.remove_stream.remote(stream_id), CONTROL_TIMEOUT_S, self.name)

    async def streams(self) -> list[dict[str, Any]]:
        infos: list[dict[str, Any]] = await _answer(
            self.handle.streams.remote(), REFRESH_TIMEOUT_S, self.name
        )
        return infos

    async def set_hints(self, stream_id: str, hints: Sequence[Hint]) -> None:
        await _answer(self.handle.set_hints.remote(stream_id, list(hints)), CONTROL_TIMEOUT_S, self.name)

    async def reset(self, stream_id: str) -> None:
        await _answer(self.handle.reset.remote(stream_id), CONTROL_TIMEOUT_S, self.name)

    async def events(self, stream_id: str) -> AsyncIterator[dict[str, Any]]:
        """The stream's events from the worker's streaming generator; the worker's death raises
        :class:`WorkerUnavailable`. Leaving early cancels the generator on the worker."""
        generator = self.handle.events.options(_generator_backpressure_num_objects=EVENT_BUFFER).remote(
            stream_id
        )
        try:
            async for ref in generator:
                yield await ref
        except ray.exceptions.RayActorError as exc:
            raise WorkerUnavailable(f"{self.name}: events of {stream_id!r} lost: {exc}") from exc
        finally:
            with contextlib.suppress(Exception):
                ray.cancel(generator)

    async def signal(self, method: str, path: str, body: bytes, content_type: str) -> SignalAnswer:
        answer: SignalAnswer = await _answer(
            self.handle.signal.remote(method, path, body, content_type), CONTROL_TIMEOUT_S, self.name
        )
        return answer

    async def metrics_text(self) -> str:
        text: str = await _answer(self.handle.metrics_text.remote(), REFRESH_TIMEOUT_S, self.name)
        return text

    async def healthy(self) -> bool:
        try:
            return bool(await _answer(self.handle.healthy.remote(), REFRESH_TIMEOUT_S, self.name))
        except WorkerUnavailable:
            return False

    async def close(self) -> None:
        return None


# -------------------------------------------------------------------------------------- worker actor


def log_to_stderr(name: str, level: int) -> None:
    """Log lines of this actor's process on its stderr, which Ray passes on to the gateway's."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"chromastream: {name}: %(message)s"))
    handler.setLevel(level)
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(min(level, logging.INFO))
    for chatty in ("aioice", "aiortc"):
        logging.getLogger(chatty).setLevel(max(level, logging.WARNING))


class ClusterWorker:
    """A Ray actor: one worker (a whole single-process server) on the node Ray placed it on."""

    def __init__(self, name: str, config: ServeConfig, log_level: int) -> None:
        self._name = name
        self._config = config
        self._folder = tempfile.mkdtemp(prefix="chromastream-worker-")  # mode 0700: this user's alone
        self._socket = os.path.join(self._folder, "api.sock")
        self._client = WorkerClient(0, self._socket)
        self._runner: Any = None
        self._sampler: Any = None
        self._stopped = asyncio.Event()
        log_to_stderr(name, log_level)

    async def start(self) -> dict[str, Any]:
        """Start the server on the worker's Unix socket; where it runs (for the gateway's log)."""
        from aiohttp import web

        from chromastream.stream.server import create_app, pipeline_for

        pipeline, self._sampler = pipeline_for(self._config)
        # Several workers may share a machine (and so a host name): each publishes to the metadata bus under
        # a node name of its own, or their MQTT sessions would keep replacing each other.
        suffix = "-w" + self._name.rsplit("-", 1)[-1]
        app = create_app(
            pipeline, self._config, stream_config=from_wire, own_pipeline=True, bus_node_suffix=suffix
        )
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.UnixSite(self._runner, self._socket).start()
        context = ray.get_runtime_context()
        ip = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        return {"node": context.get_node_id(), "ip": ip, "pid": os.getpid()}

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._sampler is not None:
            self._sampler.close()
            self._sampler = None
        await self._client.close()
        shutil.rmtree(self._folder, ignore_errors=True)
        self._stopped.set()

    async def until_stopped(self) -> None:
        """Returns only once the worker is stopped: the controller's death notice is this call's error."""
        await self._stopped.wait()

    async def add_stream(self, cfg: StreamConfig) -> dict[str, Any]:
        return await self._client.add_stream(cfg)

    async def remove_stream(self, stream_id: str) -> None:
        await self._client.remove_stream(stream_id)

    async def streams(self) -> list[dict[str, Any]]:
        return await self._client.streams()

    async def set_hints(self, stream_id: str, hints: list[Hint]) -> None:
        await self._client.set_hints(stream_id, hints)

    async def reset(self, stream_id: str) -> None:
        await self._client.reset(stream_id)

    async def events(self, stream_id: str) -> AsyncIterator[dict[str, Any]]:
        async for event in self._client.events(stream_id):
            yield event

    async def signal(self, method: str, path: str, body: bytes, content_type: str) -> SignalAnswer:
        return await self._client.signal(method, path, body, content_type)

    async def metrics_text(self) -> str:
        return await self._client.metrics_text()

    async def healthy(self) -> bool:
        return await self._client.healthy()


# ---------------------------------------------------------------------------------------- controller


def load_state() -> dict[str, Any] | None:
    raw = internal_kv._internal_kv_get(STATE_KEY, namespace=NAMESPACE)
    return json.loads(raw) if raw else None


def clear_state() -> None:
    internal_kv._internal_kv_del(STATE_KEY, namespace=NAMESPACE)


class Controller:
    """A Ray actor: the stream → worker assignment, each stream's config and hints (module docstring).

    State, as kept in the key-value store: ``workers`` (every worker registered, by actor name),
    ``dead`` (those lost), ``streams`` (id → ``cfg`` as :func:`~chromastream.stream.worker_main.to_wire`
    writes it, hints included; ``worker``, the owner's name or ``null`` while it has none; ``restorable``,
    false for a WHIP publisher's stream), ``nodes`` (worker → the id of the Ray node it runs on, shown in
    the API as each stream's ``node``), ``failovers`` (streams moved off a lost worker, in all).
    """

    def __init__(self, log_level: int = logging.INFO) -> None:
        log_to_stderr("controller", log_level)
        state = load_state()
        self._restarted = state is not None
        self._state: dict[str, Any] = state or {"workers": [], "dead": [], "streams": {}, "failovers": 0}
        self._workers: dict[str, RayWorker] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._placing: asyncio.Task[None] | None = None

    # --- state -------------------------------------------------------------------------------------

    def _save(self) -> None:
        internal_kv._internal_kv_put(STATE_KEY, json.dumps(self._state), overwrite=True, namespace=NAMESPACE)

    def _streams(self) -> dict[str, dict[str, Any]]:
        streams: dict[str, dict[str, Any]] = self._state["streams"]
        return streams

    def _entry(self, stream_id: str) -> dict[str, Any]:
        try:
            return self._streams()[stream_id]
        except KeyError:
            raise UnknownStream(f"no stream {stream_id!r}") from None

    def _live(self) -> list[str]:
        return [w for w in self._state["workers"] if w not in self._state["dead"]]

    def _load(self, worker: str) -> int:
        return sum(1 for e in self._streams().values() if e["worker"] == worker)

    def _least_loaded(self) -> str:
        live = self._live()
        if not live:
            raise WorkerUnavailable("no worker is running on the cluster; see the gateway's log for why")
        return min(live, key=lambda w: (self._load(w), self._state["workers"].index(w)))

    def _worker(self, name: str) -> RayWorker:
        worker = self._workers.get(name)
        if worker is None:
            try:
                handle = ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:  # Ray no longer knows it: it is gone
                raise WorkerUnavailable(f"{name} is gone") from None
            worker = self._workers[name] = RayWorker(name, handle)
        return worker

    def _resume(self) -> None:
        """After a restart: watch every worker again (an error at once for those that died meanwhile)."""
        for name in self._live():
            if name not in self._watchers:
                self._watch(name)

    # --- the gateway's calls -----------------------------------------------------------------------

    async def register_worker(self, name: str, node: str) -> None:
        """A new worker has started on ``node`` (Ray's node id): it takes streams from now on (and any
        that have no worker)."""
        self._resume()
        if name not in self._state["workers"]:
            self._state["workers"].append(name)
            self._state.setdefault("nodes", {})[name] = node
            self._save()
        self._watch(name)
        self._place_orphans()

    async def add_stream(self, cfg: StreamConfig) -> dict[str, Any]:
        """Start ``cfg`` on the least-loaded worker; its info, with ``worker`` its owner's name."""
        self._resume()
        if cfg.id in self._streams():
            raise DuplicateStream(f"stream {cfg.id!r} exists already")
        owner = self._least_loaded()
        entry = {"cfg": to_wire(cfg), "worker": owner, "restorable": True}
        self._streams()[cfg.id] = entry
        try:
            info = await self._worker(owner).add_stream(cfg)
        except BaseException:
            if self._streams().get(cfg.id) is entry:
                del self._streams()[cfg.id]
            raise
        self._save()
        return info | {"worker": owner, "node": self._state.get("nodes", {}).get(owner)}

    async def remove_stream(self, stream_id: str) -> None:
        entry = self._entry(stream_id)
        del self._streams()[stream_id]
        self._save()
        if entry["worker"] is not None:
            with contextlib.suppress(ChromastreamError):
                await self._worker(entry["worker"]).remove_stream(stream_id)

    async def set_hints(self, stream_id: str, hints: list[dict[str, Any]]) -> None:
        """Keep the stream's new hints and push the latest to its owner (one push at a time per stream,
        so pushes that cross cannot undo each other)."""
        entry = self._entry(stream_id)
        entry["cfg"]["hints"] = hints
        self._save()
        async with self._locks.setdefault(stream_id, asyncio.Lock()):
            entry = self._streams().get(stream_id, {})
            if entry.get("worker") is not None:
                with contextlib.suppress(ChromastreamError):
                    latest = parse_hints(entry["cfg"]["hints"])
                    await self._worker(entry["worker"]).set_hints(stream_id, latest)

    async def reset(self, stream_id: str) -> None:
        owner = self._entry(stream_id)["worker"]
        if owner is not None:
            await self._worker(owner).reset(stream_id)

    async def owner(self, stream_id: str) -> str | None:
        """The stream's worker, ``None`` while it has none."""
        self._resume()
        owner: str | None = self._entry(stream_id)["worker"]
        return owner

    async def reserve_publisher(self, stream_id: str) -> str:
        """Claim ``stream_id`` for a WHIP publisher on the least-loaded worker (it cannot move)."""
        self._resume()
        if stream_id in self._streams():
            raise DuplicateStream(f"stream {stream_id!r} exists already")
        owner = self._least_loaded()
        cfg = StreamConfig(id=stream_id, url=f"whip://{stream_id}")
        self._streams()[stream_id] = {"cfg": to_wire(cfg), "worker": owner, "restorable": False}
        self._save()
        return owner

    async def forget(self, stream_id: str) -> None:
        """Drop a stream the gateway knows is gone (a publisher that failed or left)."""
        if self._streams().pop(stream_id, None) is not None:
            self._save()

    async def snapshot(self) -> dict[str, Any]:
        """Every stream's info (live figures from its worker where it answers), the workers and the
        number of failovers; what the gateway shows."""
        self._resume()
        live = self._live()
        answers = await asyncio.gather(*(self._figures(w) for w in live), return_exceptions=True)
        figures: dict[str, dict[str, Any]] = {}
        for name, answer in zip(live, answers, strict=True):
            if isinstance(answer, BaseException):
                continue
            for figure in answer:
                figures[f"{name}/{figure.get('id')}"] = figure
        infos = []
        for stream_id, entry in self._streams().items():
            owner = entry["worker"]
            info = figures.get(f"{owner}/{stream_id}")
            if info is None:
                state = "restarting" if owner is None else "starting"
                info = _starting_info(from_wire(entry["cfg"])) | {"state": state}
            node = self._state.get("nodes", {}).get(owner)
            infos.append(info | {"worker": owner, "node": node, "hints": entry["cfg"].get("hints", [])})
        return {
            "streams": infos,
            "workers": {w: {"up": w in live, "streams": self._load(w)} for w in self._state["workers"]},
            "failovers": self._state["failovers"],
            "restarted": self._restarted,
        }

    async def _figures(self, name: str) -> list[dict[str, Any]]:
        return await self._worker(name).streams()

    # --- failover ----------------------------------------------------------------------------------

    def _watch(self, name: str) -> None:
        if name in self._watchers and not self._watchers[name].done():
            return

        async def watch() -> None:
            try:
                await self._worker(name).handle.until_stopped.remote()
            except (ray.exceptions.RayActorError, WorkerUnavailable) as exc:
                self._lost(name, type(exc).__name__)

        self._watchers[name] = asyncio.get_running_loop().create_task(watch(), name=f"watch {name}")

    def _lost(self, name: str, why: str) -> None:
        """``name`` is gone: its streams are free to go to the survivors at once."""
        if name in self._state["dead"]:
            return
        self._state["dead"].append(name)
        moved = []
        for stream_id, entry in list(self._streams().items()):
            if entry["worker"] != name:
                continue
            if not entry["restorable"]:
                del self._streams()[stream_id]  # a publisher's peer connection died with the worker
                continue
            entry["worker"] = None
            moved.append(stream_id)
        self._state["failovers"] += len(moved)
        self._save()
        self._workers.pop(name, None)
        logger.warning("%s lost (%s); its streams go to the other workers: %s", name, why, moved or "none")
        self._place_orphans()

    def _place_orphans(self) -> None:
        if self._placing is None or self._placing.done():
            self._placing = asyncio.get_running_loop().create_task(self._place(), name="place streams")

    async def _place(self) -> None:
        """Start every stream without a worker on the least-loaded live ones, all at once."""
        orphans = [i for i, e in self._streams().items() if e["worker"] is None]
        if not orphans or not self._live():
            return
        started = time.monotonic()
        for stream_id in orphans:  # assigned one by one so each counts for the next choice
            self._streams()[stream_id]["worker"] = self._least_loaded()
        self._save()
        results = await asyncio.gather(*(self._restart(i) for i in orphans), return_exceptions=True)
        failed = [i for i, r in zip(orphans, results, strict=True) if isinstance(r, BaseException)]
        for stream_id in failed:
            if stream_id in self._streams():
                self._streams()[stream_id]["worker"] = None
        self._save()
        logger.warning(
            "%d streams started again in %.2f s%s",
            len(orphans) - len(failed),
            time.monotonic() - started,
            f"; not yet: {failed}" if failed else "",
        )

    async def _restart(self, stream_id: str) -> None:
        entry = self._streams()[stream_id]
        worker = self._worker(entry["worker"])
        hints = entry["cfg"]["hints"]
        with contextlib.suppress(DuplicateStream):
            await worker.add_stream(from_wire(entry["cfg"]))
        current: dict[str, Any] | None = self._streams().get(stream_id)
        if current is None:  # removed meanwhile
            with contextlib.suppress(ChromastreamError):
                await worker.remove_stream(stream_id)
        elif current["cfg"]["hints"] != hints:  # changed while it was being added
            await worker.set_hints(stream_id, parse_hints(current["cfg"]["hints"]))
