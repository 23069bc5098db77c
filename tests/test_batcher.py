"""The batcher: concurrent callers share inference calls and each gets exactly its own rows back."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np
import pytest

from chromastream.models.runtime.base import F32, Backend, ModelInfo
from chromastream.models.runtime.registry import create_backend
from chromastream.stream.batcher import Batcher, BatcherClosed
from chromastream.stream.metrics import PipelineMetrics

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


class FakeBackend:
    """Deterministic and row-independent, like a real network; records every call's batch size."""

    name = "fake"
    info = ModelInfo(version="fake")

    def __init__(self, delay: float = 0.0, fail_on: float | None = None):
        self.delay = delay
        self.fail_on = fail_on
        self.batches: list[int] = []
        self.threads: set[str] = set()
        self.concurrent = 0
        self.max_concurrent = 0
        self._lock = threading.Lock()

    def run(self, L: F32, hints: F32, state: F32) -> tuple[F32, F32]:
        with self._lock:
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            self.batches.append(L.shape[0])
            self.threads.add(threading.current_thread().name)
            if self.delay:
                time.sleep(self.delay)
            if self.fail_on is not None and np.any(L[:, 0, 0, 0] == self.fail_on):
                raise ValueError("poisoned input")
            ab = np.concatenate([L * 2 + hints[:, :1], L - hints[:, 1:2] * hints[:, 2:]], axis=1)
            state_out = 0.5 * state + L.mean(axis=(1, 2, 3))[:, None, None, None]
            return ab.astype(np.float32), state_out.astype(np.float32)
        finally:
            with self._lock:
                self.concurrent -= 1


def inputs(seed: int, h: int = 64, w: int = 64, channels: int = 64) -> tuple[F32, F32, F32]:
    rng = np.random.default_rng(seed)
    L = rng.random((1, 1, h, w), dtype=np.float32)
    hints = rng.random((1, 3, h, w), dtype=np.float32)
    state = rng.standard_normal((1, channels, h // 16, w // 16)).astype(np.float32)
    return L, hints, state


async def _gather(batcher: Batcher, items: list[tuple[F32, F32, F32]]) -> list[tuple[F32, F32]]:
    return await asyncio.gather(*(batcher.colorize(f"s{i}", *x) for i, x in enumerate(items)))


def test_concurrent_callers_get_their_own_results() -> None:
    backend = FakeBackend(delay=0.01)
    items = [inputs(i) for i in range(6)]

    async def main() -> list[tuple[F32, F32]]:
        batcher = Batcher(backend, max_batch=8, max_wait_ms=20)
        try:
            return await _gather(batcher, items)
        finally:
            await batcher.close()

    results = run(main())
    assert backend.batches == [6]
    for (L, hints, state), (ab, state_out) in zip(items, results, strict=True):
        ref_ab, ref_state = FakeBackend().run(L, hints, state)
        np.testing.assert_array_equal(ab, ref_ab)
        np.testing.assert_array_equal(state_out, ref_state)


def test_real_model_batched_equals_alone() -> None:
    backend: Backend = create_backend()
    items = [inputs(10 + i) for i in range(4)]
    metrics = PipelineMetrics()

    async def main() -> list[tuple[F32, F32]]:
        batcher = Batcher(backend, max_batch=4, max_wait_ms=50, metrics=metrics)
        try:
            return await _gather(batcher, items)
        finally:
            await batcher.close()

    results = run(main())
    assert metrics.registry.get_sample_value("chromastream_batch_size_sum") == 4
    assert metrics.registry.get_sample_value("chromastream_batch_size_count") == 1
    for (L, hints, state), (ab, state_out) in zip(items, results, strict=True):
        ref_ab, ref_state = backend.run(L, hints, state)
        assert ab.shape == (1, 2, 64, 64)
        np.testing.assert_allclose(ab, ref_ab, atol=1e-5)
        np.testing.assert_allclose(state_out, ref_state, atol=1e-5)


def test_batch_size_grows_with_concurrency() -> None:
    async def load(callers: int) -> list[int]:
        backend = FakeBackend(delay=0.01)
        batcher = Batcher(backend, max_batch=8, max_wait_ms=2)

        async def caller(i: int) -> None:
            for j in range(6):
                await batcher.colorize(i, *inputs(j))

        try:
            await asyncio.gather(*(caller(i) for i in range(callers)))
        finally:
            await batcher.close()
        assert backend.max_concurrent == 1  # one inference at a time per backend
        assert backend.threads and all(t.startswith("inference") for t in backend.threads)
        return backend.batches

    alone, crowd = run(load(1)), run(load(6))
    assert set(alone) == {1}
    assert sum(crowd) == 36
    assert max(crowd) == 6 and np.mean(crowd) > 3


def test_max_wait_bounds_latency_and_a_full_batch_goes_at_once() -> None:
    async def single(wait_ms: float) -> float:
        batcher = Batcher(FakeBackend(), max_batch=8, max_wait_ms=wait_ms)
        try:
            await batcher.colorize("warm-up", *inputs(0))
            start = time.monotonic()
            await batcher.colorize("a", *inputs(1))
            return time.monotonic() - start
        finally:
            await batcher.close()

    waited = run(single(60))
    assert 0.055 <= waited < 0.3
    assert run(single(0)) < 0.05

    async def full() -> float:
        batcher = Batcher(FakeBackend(), max_batch=2, max_wait_ms=5000)
        try:
            start = time.monotonic()
            await _gather(batcher, [inputs(1), inputs(2)])
            return time.monotonic() - start
        finally:
            await batcher.close()

    assert run(full()) < 1.0


def test_shapes_are_never_mixed() -> None:
    backend = FakeBackend(delay=0.005)
    items = [inputs(1, 64, 64), inputs(2, 64, 96), inputs(3, 64, 64), inputs(4, 64, 96)]

    async def main() -> list[tuple[F32, F32]]:
        batcher = Batcher(backend, max_batch=8, max_wait_ms=20)
        try:
            return await _gather(batcher, items)
        finally:
            await batcher.close()

    results = run(main())
    assert sorted(backend.batches) == [2, 2]
    for (L, hints, state), (ab, _) in zip(items, results, strict=True):
        np.testing.assert_array_equal(ab, FakeBackend().run(L, hints, state)[0])


def test_backend_error_reaches_every_caller_of_the_batch_and_batching_goes_on() -> None:
    backend = FakeBackend(fail_on=-1.0)
    poisoned = inputs(5)
    poisoned[0][0, 0, 0, 0] = -1.0

    async def main() -> None:
        batcher = Batcher(backend, max_batch=8, max_wait_ms=20)
        try:
            results = await asyncio.gather(
                batcher.colorize("a", *inputs(1)),
                batcher.colorize("b", *poisoned),
                batcher.colorize("c", *inputs(2)),
                return_exceptions=True,
            )
            assert all(isinstance(r, ValueError) and "poisoned" in str(r) for r in results)
            ab, _ = await batcher.colorize("a", *inputs(1))
            np.testing.assert_array_equal(ab, FakeBackend().run(*inputs(1))[0])
        finally:
            await batcher.close()

    run(main())
    assert backend.batches == [3, 1]


def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    backend = FakeBackend(delay=0.02)

    async def main() -> None:
        batcher = Batcher(backend, max_batch=8, max_wait_ms=30)
        try:
            gone = asyncio.create_task(batcher.colorize("gone", *inputs(1)))
            kept = asyncio.create_task(batcher.colorize("kept", *inputs(2)))
            await asyncio.sleep(0)
            gone.cancel()
            ab, _ = await kept
            np.testing.assert_array_equal(ab, FakeBackend().run(*inputs(2))[0])
        finally:
            await batcher.close()

    run(main())
    assert backend.batches == [1]


def test_close_fails_waiting_callers_and_refuses_new_ones() -> None:
    async def main() -> None:
        batcher = Batcher(FakeBackend(delay=0.2), max_batch=8, max_wait_ms=0)
        running = asyncio.create_task(batcher.colorize("a", *inputs(1)))
        await asyncio.sleep(0.05)  # now in the backend
        waiting = asyncio.create_task(batcher.colorize("b", *inputs(2)))
        await asyncio.sleep(0)
        await batcher.close()
        for task in (running, waiting):
            with pytest.raises(BatcherClosed):
                await task
        with pytest.raises(BatcherClosed):
            await batcher.colorize("c", *inputs(3))

    run(main())


def test_bad_requests() -> None:
    async def main() -> None:
        batcher = Batcher(FakeBackend(), max_batch=2)
        L, hints, state = inputs(1)
        with pytest.raises(ValueError, match="batch size"):
            await batcher.colorize("a", L[0], hints, state)
        with pytest.raises(ValueError, match="max_batch"):
            await batcher.colorize("a", *(np.concatenate([x] * 3) for x in (L, hints, state)))
        await batcher.close()

    run(main())
