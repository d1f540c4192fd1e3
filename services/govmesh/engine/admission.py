"""Admission control: a bounded number of decisions at once, the rest wait in line.

Past capacity, an engine that starts every request at once shares its CPU
and its peers among all of them, and every decision's peer deadlines run out
while it waits its turn: valid requests are denied PEER_TIMEOUT because the
mesh itself is busy. Here a request first waits, FIFO, for one of a bounded
number of decision slots, and its decision budget starts only once it holds
one; the budget then measures the decision, not the queue.

A request is refused at once, before any part of a decision, when

1. the queue is full, or
2. it would have to wait, and its caller's deadline cannot cover the expected
   wait plus the decision budget: the answer would come too late to be of
   use, so the caller hears so now, while it can still do something else.

The expected wait is the request's place in the line times the recent time
of a decision (a moving average) divided by the number of slots: with every
slot busy, one slot frees up every decision-time / slots on average. The
estimate errs low rather than high: a request admitted after all with too
little of its deadline left for the budget is refused then, still undecided.

A refused request is never decided: no decision id, no sequence number, no
lineage entry, no grant. Its proof was not checked, so its nonce is unspent
and the caller may send it again. No grpc here: the edge maps `Refused` to
RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from govmesh.runtime.errors import Exhausted

logger = logging.getLogger(__name__)

#: How much the newest decision moves the average decision time.
SMOOTHING = 0.05

#: At most one log line per this many seconds about refusals, with the count since the last.
LOG_INTERVAL_S = 1.0


class Refusal(enum.Enum):
    """Why a request was refused before its decision."""

    QUEUE_FULL = "queue full"
    DEADLINE = "deadline cannot cover the wait"


class Refused(Exhausted):
    """The request was not admitted; it was not decided and must not be recorded."""

    def __init__(self, why: Refusal, *, expected_wait_s: float, queued: int) -> None:
        super().__init__(why.value)
        self.why = why
        #: Seconds the request would have waited, as estimated when it was refused.
        self.expected_wait_s = expected_wait_s
        #: Requests waiting when it was refused.
        self.queued = queued


@dataclass(frozen=True)
class AdmissionStats:
    """What the controller has done so far, for metrics and logs."""

    active: int
    queued: int
    admitted: int
    refused_queue_full: int
    refused_deadline: int
    #: The moving average of a decision's time, in seconds.
    decision_time_s: float

    @property
    def refused(self) -> int:
        """Every refusal, whatever its reason."""
        return self.refused_queue_full + self.refused_deadline


class Admission:
    """FIFO admission of decisions to `max_concurrent` slots, with `max_queue` waiting.

    `budget_s` is the decision budget in seconds: the longest an admitted
    decision takes, and what a caller's deadline must still cover once a
    waiting request is admitted. `monotonic` is the clock (injected so that
    the arithmetic is testable).
    """

    def __init__(
        self,
        *,
        max_concurrent: int,
        max_queue: int,
        budget_s: float,
        monotonic: Callable[[], float],
    ) -> None:
        if max_concurrent < 1 or max_queue < 0 or budget_s <= 0:
            raise ValueError("admission needs at least one slot, a queue bound and a budget")
        self._limit = max_concurrent
        self._max_queue = max_queue
        self._budget_s = budget_s
        self._monotonic = monotonic
        self._active = 0
        self._queue: deque[asyncio.Future[None]] = deque()
        # The average starts at zero and rises as decisions are measured: an
        # estimate too low costs a request that waits and is refused once
        # admitted (below); one too high, e.g. from the first decisions of a
        # cold start, refuses requests that could have waited, the very
        # denials admission is there to prevent.
        self._decision_time_s = 0.0
        self._admitted = 0
        self._refused = dict.fromkeys(Refusal, 0)
        self._unlogged = dict.fromkeys(Refusal, 0)
        self._last_log = float("-inf")

    def stats(self) -> AdmissionStats:
        """Counters for metrics: slots in use, queue length, admissions and refusals."""
        return AdmissionStats(
            active=self._active,
            queued=len(self._queue),
            admitted=self._admitted,
            refused_queue_full=self._refused[Refusal.QUEUE_FULL],
            refused_deadline=self._refused[Refusal.DEADLINE],
            decision_time_s=self._decision_time_s,
        )

    def expected_wait(self, ahead: int) -> float:
        """Seconds a request with `ahead` requests before it would wait for a slot."""
        if self._active < self._limit and ahead == 0:
            return 0.0
        return (ahead + 1) * self._decision_time_s / self._limit

    async def admit(self, *, time_remaining: float | None) -> Slot:
        """Wait for a slot; raises Refused instead when the request cannot be served in time.

        `time_remaining` is what is left of the caller's deadline in seconds
        (None: no deadline). A caller that is cancelled while waiting leaves
        the line without a decision.
        """
        now = self._monotonic()
        if self._active < self._limit and not self._queue:
            # A free slot and nobody ahead: no wait, so nothing for the
            # deadline to cover beyond what it covers without admission.
            self._active += 1
            return self._grant(now)
        ahead = len(self._queue)
        wait = self.expected_wait(ahead)
        # 1. The queue is full.
        if ahead >= self._max_queue:
            raise self._refuse(Refusal.QUEUE_FULL, wait, now)
        # 2. The caller's deadline cannot cover the wait plus the decision.
        if time_remaining is not None and time_remaining < wait + self._budget_s:
            raise self._refuse(Refusal.DEADLINE, wait, now)

        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.cancelled():
                # The caller left while waiting. Its request was never decided:
                # no decision id or sequence number was taken and there is
                # nothing to record in lineage, as for a request never sent.
                # (_release may already have dropped it from the line.)
                with contextlib.suppress(ValueError):
                    self._queue.remove(waiter)
            else:
                # A slot was handed over just as the caller left: pass it on.
                self._release()
            raise
        # Holding a slot, handed over by _release. The estimate can be wrong:
        # a caller whose deadline can no longer cover the budget would get
        # its answer too late, so it is refused now rather than decided for nobody.
        admitted = self._monotonic()
        if time_remaining is not None and now + time_remaining - admitted < self._budget_s:
            self._release()
            raise self._refuse(Refusal.DEADLINE, 0.0, admitted)
        return self._grant(admitted)

    def _grant(self, now: float) -> Slot:
        self._admitted += 1
        return Slot(self, now)

    def _release(self) -> None:
        # Hand the slot to the first caller still waiting, or free it.
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._active -= 1

    def _finished(self, started: float) -> None:
        elapsed = max(self._monotonic() - started, 0.0)
        self._decision_time_s += SMOOTHING * (elapsed - self._decision_time_s)
        self._release()

    def _refuse(self, why: Refusal, wait: float, now: float) -> Refused:
        self._refused[why] += 1
        self._unlogged[why] += 1
        if now - self._last_log >= LOG_INTERVAL_S:
            logger.warning(
                "refused %d requests before deciding them (%d queue full, %d deadline "
                "too short for the wait); %d deciding, %d waiting, %.1f ms per decision",
                sum(self._unlogged.values()),
                self._unlogged[Refusal.QUEUE_FULL],
                self._unlogged[Refusal.DEADLINE],
                self._active,
                len(self._queue),
                self._decision_time_s * 1000,
            )
            self._unlogged = dict.fromkeys(Refusal, 0)
            self._last_log = now
        return Refused(why, expected_wait_s=wait, queued=len(self._queue))


class Slot:
    """One admitted decision; released when the decision is over (not when its caller leaves)."""

    def __init__(self, admission: Admission, started: float) -> None:
        self._admission = admission
        self._started = started
        self._released = False

    def release(self) -> None:
        """Free the slot for the next request in line; the second call does nothing."""
        if not self._released:
            self._released = True
            self._admission._finished(self._started)
