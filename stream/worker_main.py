"""One worker process of ``serve --workers N``: a whole single-process server for its share of the streams.

A worker runs exactly what ``serve --workers 1`` runs (:func:`chromastream.stream.server.pipeline_for`
and :func:`~chromastream.stream.server.create_app`: its own model, batcher, decoders, encoders and WebRTC
peers), only without a TCP port: its API listens on a Unix socket in a folder only this user can open, and
the front process (:mod:`chromastream.stream.workers`) is its one client. The control channel is therefore
the server's own HTTP API, with one difference: a stream's config arrives whole (:func:`to_wire`), with
the keys the public API refuses (``record``, ``rtsp_push``), because the front checked it already.

The process is started with multiprocessing's ``spawn`` context (the front has threads, so ``fork`` is
unsafe). It stops cleanly on SIGTERM (the front's way of stopping it), ignores SIGINT (Ctrl-C reaches the
whole process group, and the front stops its workers in order), and stops by itself when the front
process dies, so it never outlives it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chromastream.errors import ChromastreamError
from chromastream.stream.config import ServeConfig, StreamConfig, parse_config

logger = logging.getLogger("chromastream.stream.worker_main")


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process is started with (pickled by ``spawn``)."""

    index: int
    config: ServeConfig
    """The serve config without streams (the front adds them) and without a token (the socket is private)."""
    socket: str
    """Path of the Unix socket its API listens on."""
    log_levels: dict[str, int]
    """Levels of the front's loggers (``""`` the root), so ``--quiet`` and ``--verbose`` reach the worker."""
    handler_level: int
    """Level of the front's stderr handler."""
    gpu: str | None = None
    """The one GPU this worker may use (``CUDA_VISIBLE_DEVICES``); ``None`` leaves the variable as it is."""
    cpus: tuple[int, ...] = ()
    """The cores this worker runs on; empty leaves it all of the front's. Each process sizes its thread
    pools (ONNX Runtime's, the frame pool) from the cores it may use, so a worker given its share starts
    threads for its share rather than every worker starting threads for every core."""


def to_wire(cfg: StreamConfig) -> dict[str, Any]:
    """A stream config as the JSON body a worker's ``POST /api/streams`` takes (:func:`from_wire`)."""
    data: dict[str, Any] = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    data["hints"] = [hint.to_json() for hint in cfg.hints]
    if cfg.record is not None:
        data["record"] = {
            f.name: str(value) if isinstance(value, Path) else value
            for f in dataclasses.fields(cfg.record)
            if (value := getattr(cfg.record, f.name)) is not None
        }
    return data


def from_wire(body: dict[str, Any]) -> StreamConfig:
    """The stream config :func:`to_wire` wrote, checked again as the config file's streams are."""
    return parse_config({"streams": [body]}).streams[0]


def run_worker(spec: WorkerSpec) -> None:
    """The worker process's entry point: serve until SIGTERM or the front's death. A configuration the
    worker cannot run with (the model file, the backend) is logged in one line and the exit status is 1."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if spec.cpus:
        os.sched_setaffinity(0, spec.cpus)
    if spec.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = spec.gpu
    _log_like_the_front(spec)
    try:
        asyncio.run(_serve(spec))
    except ChromastreamError as exc:
        logger.error("%s", exc)
        raise SystemExit(1) from None


def _log_like_the_front(spec: WorkerSpec) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"chromastream: worker {spec.index}: %(message)s"))
    handler.setLevel(spec.handler_level)
    logging.getLogger().addHandler(handler)
    for name, level in spec.log_levels.items():
        logging.getLogger(name).setLevel(level)


async def _serve(spec: WorkerSpec) -> None:
    from aiohttp import web

    from chromastream.stream.server import create_app, pipeline_for

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    parent = multiprocessing.parent_process()
    if parent is not None:  # readable once the front has exited, however it exited
        loop.add_reader(parent.sentinel, stop.set)
    pipeline, sampler = pipeline_for(spec.config)
    app = create_app(
        pipeline, spec.config, stream_config=from_wire, own_pipeline=True, bus_node_suffix=f"-w{spec.index}"
    )
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    try:
        await runner.setup()
        await web.UnixSite(runner, spec.socket).start()
        logger.debug("serving on %s (pid %d)", spec.socket, os.getpid())
        await stop.wait()
    finally:
        await runner.cleanup()
        if sampler is not None:
            sampler.close()
