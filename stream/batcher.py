"""Dynamic batching: frames of many streams share one inference call per device.

A network is far cheaper per frame in a batch than alone (on CPU, 4 frames cost about 2.7 single ones; on a
GPU far less), and the engine is stateless (docs/ARCHITECTURE.md, Contracts), so frames of different streams
can ride together: each caller brings its own recurrent state and gets its own back. Each stream awaits
:meth:`Batcher.colorize` for one frame at a time; the batcher collects requests of the same working shape
until ``max_batch`` are waiting, or every stream it serves is waiting (:attr:`Batcher.callers`: no one else
can join, so waiting longer is pure latency), or the oldest has waited ``max_wait_ms``; it concatenates them
along the batch axis, runs the backend once and scatters the rows back.

Inference runs in a single-thread executor owned by the batcher: the event loop never blocks on it, and
there is at most one call in flight per backend (a backend is one device; two concurrent calls would only
fight for it). While a call runs, new requests pile up, so batches grow by themselves under load and the
``max_wait_ms`` wait only matters when the device is idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from chromastream.errors import ChromastreamError
from chromastream.models.runtime.base import F32, Backend
from chromastream.stream.metrics import PipelineMetrics

logger = logging.getLogger(__name__)

ShapeKey = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


class BatcherClosed(ChromastreamError):
    """The batcher was closed while a request was waiting (the pipeline is stopping)."""


@dataclass(frozen=True, slots=True)
class BatchResult:
    """One caller's share of a batch, with the timings the pipeline reports per stream."""

    ab: F32
    state: F32
    wait_s: float
    """From the request to its batch starting: the latency paid for batching (and for a busy device)."""
    run_s: float
    """The backend call of the whole batch."""
    batch_size: int
    """Frames in the call this request was part of."""


@dataclass(eq=False)
class _Request:
    key: Hashable
    L: F32
    hints: F32
    state: F32
    enqueued: float
    future: asyncio.Future[BatchResult] = field(repr=False)

    @property
    def rows(self) -> int:
        return int(self.L.shape[0])


class Batcher:
    """Gathers :meth:`colorize` requests of concurrent callers into batched ``backend.run`` calls."""

    def __init__(
        self,
        backend: Backend,
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        metrics: PipelineMetrics | None = None,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.backend = backend
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.metrics = metrics
        self._pending: dict[ShapeKey, list[_Request]] = {}
        self._wakeup: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._inflight: list[_Request] = []
        self._closed = False
        self.callers = 0
        """How many callers (streams) may submit, each one frame at a time; 0 when unknown. When that
        many requests of one shape wait, the batch is complete and runs at once."""

    async def colorize(self, key: Hashable, L: F32, hints: F32, state: F32) -> tuple[F32, F32]:
        """``L [n,1,H,W]``, ``hints [n,3,H,W]``, ``state [n,C,h,w]`` -> ``(ab [n,2,H,W], state_out)``.

        ``key`` names the caller (a stream id) in logs. Returns exactly what ``backend.run`` would return
        for these rows alone; a backend error is raised here (and in every other caller of that batch).
        """
        result = await self.submit(key, L, hints, state)
        return result.ab, result.state

    async def submit(self, key: Hashable, L: F32, hints: F32, state: F32) -> BatchResult:
        """:meth:`colorize` with the timings of the request (for per-stream metrics)."""
        if self._closed:
            raise BatcherClosed("the batcher is closed")
        n = L.shape[0]
        if L.ndim != 4 or hints.ndim != 4 or state.ndim != 4 or hints.shape[0] != n or state.shape[0] != n:
            raise ValueError(
                "expected batched L, hints and state with one batch size; "
                f"got {L.shape}, {hints.shape}, {state.shape}"
            )
        if n > self.max_batch:
            raise ValueError(f"a request of {n} rows exceeds max_batch {self.max_batch}")
        loop = asyncio.get_running_loop()
        if self._runner is None:
            self._wakeup = asyncio.Event()
            self._runner = loop.create_task(self._run(), name="batcher")
        assert self._wakeup is not None
        request = _Request(key, L, hints, state, time.monotonic(), loop.create_future())
        shape: ShapeKey = (tuple(L.shape[1:]), tuple(hints.shape[1:]), tuple(state.shape[1:]))
        self._pending.setdefault(shape, []).append(request)
        self._wakeup.set()
        return await request.future

    async def close(self) -> None:
        """Stop batching: waiting requests fail with :class:`BatcherClosed`; an inference call in progress
        finishes in its thread but nobody waits for it."""
        self._closed = True
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        self._fail_pending(BatcherClosed("the batcher was closed"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # --- the runner ---------------------------------------------------------------------------------

    def _fail_pending(self, exc: BaseException) -> None:
        for requests in [self._inflight, *self._pending.values()]:
            for request in requests:
                if not request.future.done():
                    request.future.set_exception(exc)
        self._pending.clear()
        self._inflight = []

    def _next_batch(self, now: float) -> tuple[list[_Request], float | None]:
        """The batch to run now, or the time until the next one is due."""
        soonest: float | None = None
        for shape, requests in list(self._pending.items()):
            requests[:] = [r for r in requests if not r.future.done()]  # callers that gave up
            if not requests:
                del self._pending[shape]
                continue
            rows = sum(r.rows for r in requests)
            due = requests[0].enqueued + self.max_wait - now
            everyone = self.callers > 0 and len(requests) >= self.callers
            if rows >= self.max_batch or due <= 0 or everyone:
                batch: list[_Request] = []
                taken = 0
                while requests and taken + requests[0].rows <= self.max_batch:
                    taken += requests[0].rows
                    batch.append(requests.pop(0))
                if not requests:
                    del self._pending[shape]
                return batch, None
            soonest = due if soonest is None else min(soonest, due)
        return [], soonest

    async def _run(self) -> None:
        assert self._wakeup is not None
        try:
            while True:
                batch, delay = self._next_batch(time.monotonic())
                if not batch:
                    self._wakeup.clear()
                    if delay is None:
                        await self._wakeup.wait()
                    else:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._wakeup.wait(), delay)
                    continue
                await self._execute(batch)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # a bug here must not leave callers waiting forever
            logger.exception("batcher stopped")
            self._closed = True
            self._fail_pending(exc)

    def _infer(self, batch: list[_Request]) -> tuple[F32, F32]:
        """In the inference thread: concatenating megabytes is work the event loop should not do either."""
        if len(batch) == 1:
            r = batch[0]
            return self.backend.run(r.L, r.hints, r.state)
        L = np.concatenate([r.L for r in batch])
        hints = np.concatenate([r.hints for r in batch])
        state = np.concatenate([r.state for r in batch])
        ab, state_out = self.backend.run(L, hints, state)
        rows = L.shape[0]
        if ab.shape[0] != rows or state_out.shape[0] != rows:
            raise ValueError(
                f"backend returned {ab.shape[0]} / {state_out.shape[0]} rows for a batch of {rows}"
            )
        return ab, state_out

    async def _execute(self, batch: list[_Request]) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        self._inflight = batch
        try:
            ab, state_out = await loop.run_in_executor(self._executor, self._infer, batch)
        except Exception as exc:
            self._inflight = []
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(exc)
            return
        # (On cancellation the batch stays in ``_inflight`` for close() to fail.)
        self._inflight = []
        run_s = time.monotonic() - start
        rows = sum(r.rows for r in batch)
        if self.metrics is not None:
            self.metrics.batch_size.observe(rows)
        offset = 0
        for r in batch:
            end = offset + r.rows
            if not r.future.done():
                # Copies when shared: a stream keeps its state until its next frame, and a view would keep
                # the whole batch's arrays alive with it.
                if len(batch) == 1:
                    a, s = ab, state_out
                else:
                    a, s = ab[offset:end].copy(), state_out[offset:end].copy()
                r.future.set_result(BatchResult(a, s, start - r.enqueued, run_s, rows))
            offset = end
