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

This holds whatever carries the batch: the batcher sees only `send`. The
queue, the batch cuts and the in-flight slots are the shared core in
`govmesh.runtime.batching`; what is the engine's own (deadlines, halving,
peer errors, metrics) is here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, NamedTuple, TypeVar

from govmesh.engine.core import PeerError, PeerRejected, PeerTimeout, PeerUnavailable
from govmesh.engine.metrics import PeerCallMetrics
from govmesh.runtime.batching import BatchQueue, Limit, Pending, fail

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


class _Timed(NamedTuple, Generic[Req]):
    request: Req
    deadline: float


_Batch = list[Pending[_Timed[Req], Resp]]


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
        linger_s: float = 0.0,
        max_in_flight: int = 4,
        expected: Callable[[], int] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        metrics: PeerCallMetrics | None = None,
    ) -> None:
        if max_batch < 1 or max_in_flight < 1 or max_batch_bytes < 1 or max_answer_bytes < 1:
            raise ValueError("a batcher needs room for one request and one batch")
        self._name = name
        self._send_batch = send
        self._monotonic = monotonic
        self._metrics = metrics
        # Up to max_batch requests, max_batch_bytes of them and max_answer_bytes
        # of their answers' bounds (at least one request): one caller's large
        # requests, or requests whose answers would be large, never push a
        # batch past what a message carries and so fail everybody else's.
        limits: list[Limit[_Timed[Req]]] = []
        if size is not None:
            limits.append(Limit(max_batch_bytes, lambda timed: size(timed.request)))
        if answer_size is not None:
            limits.append(
                Limit(
                    max_answer_bytes,
                    lambda timed: answer_size(timed.request) + ANSWER_FRAMING_BYTES,
                )
            )
        self._batches: BatchQueue[_Timed[Req], Resp] = BatchQueue(
            name=f"{name} batcher",
            flush=self._send,
            error=PeerUnavailable,
            max_items=max_batch,
            limits=limits,
            linger_s=linger_s,
            max_in_flight=max_in_flight,
            expected=expected,
        )

    def start(self) -> None:
        """Start the background flusher."""
        self._batches.start()

    async def close(self) -> None:
        """Stop; whatever is still queued or in flight fails (its callers deny)."""
        await self._batches.stop()

    async def submit(self, request: Req, *, timeout: float) -> Resp:
        """Queue `request`; returns its answer, or raises PeerError for the batch's failure."""
        return await self._batches.submit(_Timed(request, self._monotonic() + timeout))

    async def _send(self, batch: _Batch[Req, Resp], slot: int) -> None:
        # Every slot is alike here: a batch call takes whichever channel is free.
        await self._deliver(batch)

    async def _deliver(self, batch: _Batch[Req, Resp]) -> None:
        """Send `batch`; if the peer refuses it as a whole, send its halves instead.

        The halves go concurrently, under the slot of the batch they came
        from, each with the deadline of its own members: a split never waits
        past any caller's budget. A single request that is refused fails.
        """
        batch = [p for p in batch if not p.future.done()]
        if not batch:
            return
        try:
            timeout = max(p.item.deadline for p in batch) - self._monotonic()
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
                fail(batch, exc)
                return
            logger.warning(
                "%s refused a batch of %d (%s); sending it in halves", self._name, len(batch), exc
            )
            middle = len(batch) // 2
            await asyncio.gather(self._deliver(batch[:middle]), self._deliver(batch[middle:]))
        except PeerError as exc:
            fail(batch, exc)
        except Exception as exc:
            logger.exception("%s batch failed", self._name)
            fail(batch, PeerUnavailable(repr(exc)))

    async def _call(self, batch: _Batch[Req, Resp], timeout: float) -> Sequence[Resp]:
        requests = [p.item.request for p in batch]
        metrics = self._metrics
        if metrics is None:
            return await self._send_batch(requests, timeout)
        started = self._monotonic()
        error: BaseException | None = None
        try:
            return await self._send_batch(requests, timeout)
        except BaseException as exc:
            error = exc
            raise
        finally:
            metrics.sent(len(batch), self._monotonic() - started, _outcome(error))


def _outcome(error: BaseException | None) -> str:
    if error is None:
        return "ok"
    return "timeout" if isinstance(error, PeerTimeout | TimeoutError) else "unavailable"
