"""Coalescing concurrent peer calls into batch calls.

Python gRPC spends about as much CPU on one unary call as a peer spends on
the work it carries, so the engine sends the verifications, evaluations and
appends of concurrent decisions together. There is no Nagle delay by
default: a request waits only while earlier batches occupy every in-flight
slot, so at low load each call travels alone and at high load batches grow
by themselves.

A batch is answered in order, one answer per request; a batch answered with
the wrong count fails every member. Answers are still checked one by one by
the caller (each echoes its own request digest), so a batch that mixed up
its answers could only deny.

Batches share transport, not fate. A batch is bounded by the size of its
requests and by the bound of their answers (`answer_size`; peers build
answers within it), so that no member can push the batch past what a gRPC
message carries. A batch the peer refuses as a whole for a reason that is
not its health (`PeerRejected`: too large, invalid as a batch, failed while
handling it) is sent again in halves, down to single requests, each within
the deadline of its members: the one request that caused the refusal fails
alone. A peer that is down or late (PeerUnavailable, PeerTimeout) fails the
batch at once; asking it again would only spend the budget.

This holds whatever carries the batch: the batcher sees only `send`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from govmesh.engine.core import PeerError, PeerRejected, PeerTimeout, PeerUnavailable
from govmesh.engine.metrics import PeerCallMetrics

logger = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")

#: The most bytes of requests one batch call carries, and the most bytes of
#: answers it may bring back: below the 4 MiB a gRPC message may hold, with
#: room for the call's own framing.
MAX_BATCH_BYTES = 3 * 1024 * 1024
#: Framing of one answer inside a batch answer (its tag and length).
ANSWER_FRAMING_BYTES = 8

#: Sends one batch within `timeout` seconds; returns one answer per request.
SendBatch = Callable[[list[Req], float], Awaitable[Sequence[Resp]]]


@dataclass
class _Pending(Generic[Req, Resp]):
    request: Req
    future: asyncio.Future[Resp]
    deadline: float


class Batcher(Generic[Req, Resp]):
    """Collects requests from concurrent callers and sends them in batches."""

    def __init__(
        self,
        *,
        name: str,
        send: SendBatch[Req, Resp],
        max_batch: int = 256,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        size: Callable[[Req], int] | None = None,
        answer_size: Callable[[Req], int] | None = None,
        max_answer_bytes: int = MAX_BATCH_BYTES,
        linger: float = 0.0,
        max_in_flight: int = 4,
        monotonic: Callable[[], float] = time.monotonic,
        metrics: PeerCallMetrics | None = None,
    ) -> None:
        if max_batch < 1 or max_in_flight < 1 or max_batch_bytes < 1 or max_answer_bytes < 1:
            raise ValueError("a batcher needs room for one request and one batch")
        self._name = name
        self._send_batch = send
        self._max_batch = max_batch
        self._max_bytes = max_batch_bytes
        self._size = size
        self._answer_size = answer_size
        self._max_answer_bytes = max_answer_bytes
        self._linger = linger
        self._monotonic = monotonic
        self._metrics = metrics
        self._queue: list[_Pending[Req, Resp]] = []
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._flusher: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the background flusher."""
        self._flusher = asyncio.create_task(self._flush_forever(), name=f"{self._name}-batcher")

    async def close(self) -> None:
        """Stop; whatever is still queued or in flight fails (its callers deny)."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        in_flight = list(self._tasks)
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(PeerUnavailable("engine stopping"))
        self._queue.clear()

    async def submit(self, request: Req, *, timeout: float) -> Resp:
        """Queue `request`; returns its answer, or raises PeerError for the batch's failure."""
        if self._flusher is None or self._flusher.done():
            raise PeerUnavailable(f"{self._name} batcher is not running")
        future: asyncio.Future[Resp] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(request, future, self._monotonic() + timeout))
        self._wake.set()
        return await future

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            if self._linger > 0 and len(self._queue) < self._max_batch:
                await asyncio.sleep(self._linger)
            # Wait for a slot before taking the batch: requests that arrive
            # meanwhile join it.
            await self._slots.acquire()
            self._wake.clear()
            batch = self._take()
            if self._queue:
                self._wake.set()
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Pending[Req, Resp]]:
        # Up to max_batch requests, max_batch_bytes of them and
        # max_answer_bytes of their answers' bounds (at least one request):
        # one caller's large requests, or requests whose answers would be
        # large, never push a batch past what a message carries and so fail
        # everybody else's. Callers that gave up are not sent: their decision
        # is already a DENY.
        batch: list[_Pending[Req, Resp]] = []
        taken = used = answered = 0
        for pending in self._queue:
            if len(batch) == self._max_batch:
                break
            if not pending.future.done():
                cost = self._size(pending.request) if self._size else 0
                answer = (
                    self._answer_size(pending.request) + ANSWER_FRAMING_BYTES
                    if self._answer_size
                    else 0
                )
                if batch and (
                    used + cost > self._max_bytes or answered + answer > self._max_answer_bytes
                ):
                    break
                used += cost
                answered += answer
                batch.append(pending)
            taken += 1
        del self._queue[:taken]
        return batch

    async def _send(self, batch: list[_Pending[Req, Resp]]) -> None:
        try:
            await self._deliver(batch)
        except asyncio.CancelledError:
            _fail(batch, PeerUnavailable(f"{self._name}: engine stopping"))
            raise
        finally:
            self._slots.release()

    async def _deliver(self, batch: list[_Pending[Req, Resp]]) -> None:
        """Send `batch`; if the peer refuses it as a whole, send its halves instead.

        The halves go concurrently, under the slot of the batch they came
        from, each with the deadline of its own members: a split never waits
        past any caller's budget. A single request that is refused fails.
        """
        batch = [p for p in batch if not p.future.done()]
        if not batch:
            return
        try:
            timeout = max(p.deadline for p in batch) - self._monotonic()
            if timeout <= 0:
                raise PeerUnavailable(f"{self._name}: no time left to send")
            answers = await self._call(batch, timeout)
            if len(answers) != len(batch):
                raise PeerUnavailable(
                    f"{self._name} answered {len(answers)} of a batch of {len(batch)}"
                )
            for pending, answer in zip(batch, answers, strict=True):
                if not pending.future.done():
                    pending.future.set_result(answer)
        except PeerRejected as exc:
            if len(batch) == 1:
                _fail(batch, exc)
                return
            logger.warning(
                "%s refused a batch of %d (%s); sending it in halves", self._name, len(batch), exc
            )
            middle = len(batch) // 2
            await asyncio.gather(self._deliver(batch[:middle]), self._deliver(batch[middle:]))
        except PeerError as exc:
            _fail(batch, exc)
        except Exception as exc:
            logger.exception("%s batch failed", self._name)
            _fail(batch, PeerUnavailable(repr(exc)))

    async def _call(self, batch: list[_Pending[Req, Resp]], timeout: float) -> Sequence[Resp]:
        metrics = self._metrics
        if metrics is None:
            return await self._send_batch([p.request for p in batch], timeout)
        started = self._monotonic()
        error: BaseException | None = None
        try:
            return await self._send_batch([p.request for p in batch], timeout)
        except BaseException as exc:
            error = exc
            raise
        finally:
            metrics.sent(len(batch), self._monotonic() - started, _outcome(error))


def _outcome(error: BaseException | None) -> str:
    if error is None:
        return "ok"
    return "timeout" if isinstance(error, PeerTimeout | TimeoutError) else "unavailable"


def _fail(batch: Sequence[_Pending[Req, Resp]], error: PeerError) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(error)
