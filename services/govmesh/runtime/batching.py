"""The one batching core: concurrent callers' items queued, cut into batches, flushed.

Each caller submits one item and awaits its own future. One flusher task
waits for items, optionally lingers for company, waits for a free in-flight
slot (items that arrive meanwhile join the batch), cuts a batch and starts
one task to flush it. Up to `max_in_flight` batches flush at once; only when
every slot is busy do items wait, and then they form the next, larger batch.
So at low load each item travels alone and at high load batches grow by
themselves.

An owner that knows how many items are on their way (`expected`) lingers
only while some are, and no longer than until they are all queued: a lone
item never waits for company that is not coming.

A batch holds at most `max_items` items and at most `Limit.most` of each
limit's cost (request bytes, answer bytes, entries; up to two limits), but
always at least one item: an item larger than a limit travels alone rather
than never. An item's costs are computed once, when it is queued. Items
whose caller gave up (their future is done, typically cancelled) are dropped
when the batch is cut, never flushed.

The flush owns the futures of its batch: it resolves each one, now or later
(the lineage sequencer hands out receipts after its state-file write). The
core fails them only when the flush raises or is cancelled, so no caller is
ever left waiting and none gets an answer that was not flushed. What is
specific to each user (halving a refused batch, ordering a group commit, the
SQL) stays in its flush.

`stop(grace)` refuses new items, lets queued and in-flight batches finish for
up to `grace` seconds, then cancels the rest; every item still unanswered
fails with the owner's error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class Pending(Generic[Item, Result]):
    """One queued item, the future its caller awaits, and its cost under each limit."""

    __slots__ = ("costs", "future", "item")

    def __init__(
        self, item: Item, future: asyncio.Future[Result], costs: tuple[int, int] | None = None
    ) -> None:
        self.item = item
        self.future = future
        self.costs = costs


@dataclass(frozen=True, slots=True)
class Limit(Generic[Item]):
    """At most `most` of `cost(item)`, summed over a batch (one item alone may exceed it)."""

    most: int
    cost: Callable[[Item], int]


#: Flushes one batch on in-flight slot `slot` (0 <= slot < max_in_flight), resolving
#: its futures; an exception or cancellation fails the futures it left unresolved.
Flush = Callable[[list[Pending[Item, Result]], int], Coroutine[Any, Any, None]]


class BatchQueue(Generic[Item, Result]):
    """Queues items of concurrent callers and flushes them in batches.

    `error(message)` builds the exception a caller gets when the queue is
    not running, is stopping, or its batch's flush crashed.
    """

    def __init__(
        self,
        *,
        name: str,
        flush: Flush[Item, Result],
        error: Callable[[str], Exception],
        max_items: int | None = None,
        limits: Sequence[Limit[Item]] = (),
        linger_s: float = 0.0,
        max_in_flight: int = 1,
        expected: Callable[[], int] | None = None,
    ) -> None:
        if max_in_flight < 1 or (max_items is not None and max_items < 1):
            raise ValueError(f"{name}: a batch queue needs room for one item and one batch")
        if any(limit.most < 1 for limit in limits):
            raise ValueError(f"{name}: every batch limit must allow at least 1")
        if len(limits) > 2:
            # Two cover every batch govmesh sends (request and answer bytes);
            # fixing the number keeps the cut free of a loop per item.
            raise ValueError(f"{name}: a batch queue takes at most two limits")
        self.name = name
        self._flush = flush
        self._error = error
        self._max_items = max_items
        self._limits = tuple(limits)
        # A missing second limit is one that nothing reaches.
        self._mosts = (
            (limits[0].most, limits[1].most if len(limits) > 1 else sys.maxsize) if limits else None
        )
        self._linger_s = linger_s
        self._expected = expected
        # Set while lingering; woken once no more company is expected.
        self._lingering: asyncio.Event | None = None
        self._queue: list[Pending[Item, Result]] = []
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._free = list(range(max_in_flight - 1, -1, -1))
        self._in_flight: dict[asyncio.Task[None], tuple[list[Pending[Item, Result]], int]] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._accepting = False
        self._drained: asyncio.Event | None = None

    @property
    def running(self) -> bool:
        """Whether items are accepted: started, not stopping, flusher alive."""
        return self._accepting and self._flusher is not None and not self._flusher.done()

    def start(self) -> None:
        """Start the flusher (in the running event loop)."""
        self._accepting = True
        self._flusher = asyncio.create_task(self._run(), name=f"{self.name}-batching")
        self._flusher.add_done_callback(self._flusher_done)

    def submit(self, item: Item) -> asyncio.Future[Result]:
        """Queue `item`; the future is its answer. Cancel it to give up (it is then not sent)."""
        if not self.running:
            raise self._error(f"{self.name} is not running")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        limits = self._limits
        if not limits:
            self._queue.append(Pending(item, future))
        elif len(limits) == 1:
            self._queue.append(Pending(item, future, (limits[0].cost(item), 0)))
        else:
            self._queue.append(Pending(item, future, (limits[0].cost(item), limits[1].cost(item))))
        self._wake.set()
        if self._lingering is not None and not self._company_coming():
            self._lingering.set()
        return future

    async def stop(self, grace: float = 0.0) -> None:
        """Refuse new items; let queued and in-flight ones finish within `grace` seconds,
        then cancel what is left and fail every item still unanswered."""
        self._accepting = False
        if grace > 0 and self._flusher is not None and not self._flusher.done():
            self._drained = asyncio.Event()
            self._settle()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), grace)
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        in_flight = list(self._in_flight)
        for task in in_flight:
            task.cancel()
        # Each task's done callback fails the items its flush left unanswered.
        await asyncio.gather(*in_flight, return_exceptions=True)
        fail(self._queue, self._error(f"{self.name} is stopping"))
        self._queue.clear()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if self._linger_s > 0 and self._company_coming() and not self._holds_a_full_batch():
                await self._linger()
            # A free slot before the batch is cut: items that arrive meanwhile join it.
            await self._slots.acquire()
            self._wake.clear()
            batch = self._take()
            if self._queue:
                self._wake.set()
            if not batch:
                self._slots.release()
                self._settle()
                continue
            slot = self._free.pop()
            task = asyncio.create_task(self._flush(batch, slot), name=f"{self.name}-flush")
            self._in_flight[task] = (batch, slot)
            task.add_done_callback(self._flushed)

    async def _linger(self) -> None:
        """Wait up to linger_s for company; with `expected`, only until it is all queued."""
        self._lingering = arrived = asyncio.Event()
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._linger_s):
                    await arrived.wait()
        finally:
            self._lingering = None

    def _company_coming(self) -> bool:
        # Without an owner's count, company may always come.
        return self._expected is None or self._expected() > 0

    def _holds_a_full_batch(self) -> bool:
        queue = self._queue
        if self._max_items is not None and len(queue) >= self._max_items:
            return True
        if self._mosts is None:
            return False
        first_most, second_most = self._mosts
        first = second = 0
        for pending in queue:
            costs = pending.costs or (0, 0)  # every item has costs when there are limits
            first += costs[0]
            second += costs[1]
            if first >= first_most or second >= second_most:
                return True
        return False

    def _take(self) -> list[Pending[Item, Result]]:
        batch: list[Pending[Item, Result]] = []
        max_items = self._max_items
        first_most, second_most = self._mosts or (0, 0)
        first = second = 0
        taken = 0
        for pending in self._queue:
            if len(batch) == max_items:
                break
            if not pending.future.done():
                costs = pending.costs
                if costs is not None:
                    if batch and (first + costs[0] > first_most or second + costs[1] > second_most):
                        break
                    first += costs[0]
                    second += costs[1]
                batch.append(pending)
            taken += 1
        del self._queue[:taken]
        return batch

    def _flushed(self, task: asyncio.Task[None]) -> None:
        batch, slot = self._in_flight.pop(task)
        self._free.append(slot)
        self._slots.release()
        # Done callbacks run even for a task cancelled before it started, so
        # this is where a batch's leftover items fail, not in the flush.
        if task.cancelled():
            fail(batch, self._error(f"{self.name} is stopping"))
        elif (exc := task.exception()) is not None:
            logger.error("%s: a batch failed", self.name, exc_info=exc)
            fail(batch, self._error(f"{self.name} failed: {exc.__class__.__name__}: {exc}"))
        self._settle()

    def _flusher_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # a bug: nothing would ever answer the queued items
            logger.error("%s: the flusher failed", self.name, exc_info=exc)
            fail(self._queue, self._error(f"{self.name} failed: {exc.__class__.__name__}: {exc}"))
            self._queue.clear()

    def _settle(self) -> None:
        if self._drained is not None and not self._queue and not self._in_flight:
            self._drained.set()


def fail(batch: Sequence[Pending[Item, Result]], error: BaseException) -> None:
    """Fail every item of `batch` that is not answered yet with `error`."""
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(error)
