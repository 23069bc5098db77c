"""The one bounded queue of the live path, and the policy that says what it does when full.

Every place where frames wait between two stages uses :class:`DropQueue` with a named
:class:`DropPolicy`: a source's handover from its decoder thread to the event loop, the pipeline's input
queue, the queue between inference and post-processing, and each subscriber's queue. One type means one
set of rules for what may be dropped, what is counted and what always gets through:

* only *droppable* items (frames) count against ``maxsize`` and are ever dropped; control items (a
  ``Reset``, the end of a stream, an error to raise) never wait and are never lost, because losing one is a
  correctness bug (colours carried across a cut, a consumer waiting forever), not a delay;
* every drop is counted (:attr:`DropQueue.drops`) and reported to ``on_drop``, so whoever owns the queue
  can publish it once, in its own counter;
* a closed queue takes nothing more and releases a producer that waits for room.

How the queues of a stream add up (the latency a live camera can see) is described where they are wired
together, in :mod:`chromastream.stream.pipeline`.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class DropPolicy(enum.Enum):
    """What a full queue does with one more frame: every queue on the live path names its choice."""

    WAIT = "wait"
    """The producer waits for room: nothing is lost, latency may grow (files, recorders)."""
    DROP_OLDEST = "drop_oldest"
    """The oldest queued frame is dropped and counted: the producer never waits, latency stays bounded
    (live inputs)."""


def _always(_: object) -> bool:
    return True


class DropQueue(Generic[T]):
    """An asyncio queue of at most ``maxsize`` droppable items, full behaviour set by ``policy``.

    Items for which ``droppable`` is false pass every bound: they may take the queue past ``maxsize``.
    ``on_drop`` is called with each dropped item. All methods run on the event loop; a thread hands items
    over with ``asyncio.run_coroutine_threadsafe(queue.put(item), loop)`` and, by waiting for that future,
    feels the queue's back-pressure under :attr:`DropPolicy.WAIT`.
    """

    def __init__(
        self,
        maxsize: int,
        policy: DropPolicy,
        droppable: Callable[[T], bool] = _always,
        on_drop: Callable[[T], None] | None = None,
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"queue size must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self.policy = policy
        self.drops = 0
        """Droppable items dropped because the queue was full."""
        self.high_water = 0
        """The most droppable items the queue ever held (never above ``maxsize``)."""
        self._droppable = droppable
        self._on_drop = on_drop
        self._items: deque[T] = deque()
        self._count = 0  # droppable items held
        self._closed = False
        self._not_empty = asyncio.Event()
        self._not_full = asyncio.Event()
        self._not_full.set()

    @property
    def closed(self) -> bool:
        return self._closed

    def qsize(self) -> int:
        """Items held, control items included."""
        return len(self._items)

    def put_nowait(self, item: T) -> None:
        """Add ``item`` now: a control item always; a droppable one under ``DROP_OLDEST`` after dropping the
        oldest droppable item if full, under ``WAIT`` only if there is room (``asyncio.QueueFull``
        otherwise). A closed queue ignores it."""
        if self._closed:
            return
        if self._droppable(item) and self._count >= self.maxsize:
            if self.policy is DropPolicy.WAIT:
                raise asyncio.QueueFull
            self._drop_oldest()
        self._append(item)

    async def put(self, item: T) -> None:
        """Add ``item``; under ``WAIT`` a droppable item waits for room (or for :meth:`close`, which
        discards it), otherwise this never waits."""
        if self.policy is DropPolicy.WAIT and self._droppable(item):
            while self._count >= self.maxsize and not self._closed:
                self._not_full.clear()
                await self._not_full.wait()
        self.put_nowait(item)

    async def get(self) -> T:
        """The oldest item, waiting for one."""
        while not self._items:
            self._not_empty.clear()
            await self._not_empty.wait()
        item = self._items.popleft()
        if self._droppable(item):
            self._count -= 1
        if self._count < self.maxsize:
            self._not_full.set()
        return item

    def clear(self) -> None:
        """Discard everything held (not counted as drops: nobody wants it any more)."""
        self._items.clear()
        self._count = 0
        self._not_full.set()

    def close(self, last: T | None = None) -> None:
        """Discard everything held, keep only ``last`` (if given) for the consumer and take nothing more.

        A producer waiting for room returns without adding its item. Closing twice changes nothing.
        """
        if self._closed:
            return
        self.clear()
        if last is not None:
            self._append(last)
        self._closed = True
        self._not_full.set()  # wakes a waiting producer, which sees the queue closed

    def _append(self, item: T) -> None:
        self._items.append(item)
        if self._droppable(item):
            self._count += 1
            self.high_water = max(self.high_water, self._count)
        if self._count >= self.maxsize:
            self._not_full.clear()
        self._not_empty.set()

    def _drop_oldest(self) -> None:
        for i, old in enumerate(self._items):
            if self._droppable(old):
                del self._items[i]
                self._count -= 1
                self.drops += 1
                if self._on_drop is not None:
                    self._on_drop(old)
                return
