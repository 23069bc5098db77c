"""The live path's one queue type: what each policy drops, counts and waits for, and what closing does."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from chromastream.stream.queues import DropPolicy, DropQueue

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 10))


def is_frame(item: int | str) -> bool:
    """In these tests ints are frames and strings are control items (a reset, the end)."""
    return isinstance(item, int)


def test_drop_oldest_keeps_the_newest_frames_counts_each_drop_and_never_drops_control_items() -> None:
    async def main() -> None:
        dropped: list[int | str] = []
        q: DropQueue[int | str] = DropQueue(3, DropPolicy.DROP_OLDEST, is_frame, dropped.append)
        for item in (1, "reset", 2, 3, 4, 5, "end"):
            await q.put(item)
        assert q.high_water == 3 and q.drops == 2 and dropped == [1, 2]
        assert [await q.get() for _ in range(5)] == ["reset", 3, 4, 5, "end"]

    run(main())


def test_wait_makes_the_producer_wait_for_room_and_loses_nothing() -> None:
    async def main() -> None:
        w: DropQueue[int | str] = DropQueue(2, DropPolicy.WAIT, is_frame)
        await w.put(1)
        await w.put(2)
        with pytest.raises(asyncio.QueueFull):
            w.put_nowait(3)
        await w.put("reset")  # a control item never waits
        blocked = asyncio.create_task(w.put(3))
        await asyncio.sleep(0.01)
        assert not blocked.done()
        assert await w.get() == 1
        await asyncio.wait_for(blocked, 1)
        assert [await w.get() for _ in range(3)] == [2, "reset", 3]
        assert w.drops == 0 and w.high_water == 2

    run(main())


def test_close_discards_what_is_held_keeps_the_last_item_and_releases_a_waiting_producer() -> None:
    async def main() -> None:
        q: DropQueue[int | str] = DropQueue(1, DropPolicy.WAIT, is_frame)
        await q.put(1)
        blocked = asyncio.create_task(q.put(2))
        await asyncio.sleep(0.01)
        assert not blocked.done()
        q.close("end")
        await asyncio.wait_for(blocked, 1)  # released, its frame not added
        q.put_nowait(3)  # ignored: the queue is closed
        assert q.closed and q.qsize() == 1 and q.drops == 0
        assert await q.get() == "end"

    run(main())


def test_a_queue_needs_room_for_one_frame() -> None:
    with pytest.raises(ValueError, match="queue size"):
        DropQueue(0, DropPolicy.DROP_OLDEST)
