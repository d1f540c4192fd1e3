"""Batch calls over long-lived bidirectional streams: the transport under the Batcher.

A grpc.aio unary call costs about as much CPU on each side as a peer spends
on a small batch; a message on an open stream costs a fraction of that. A
`BatchStream` sends each batch as one message on one of a few streams to the
peer (one per round-robin pick, so replicas behind a `dns:///` target share
the load), with a sequence number the answer must echo, and waits for that
answer within the batch's timeout.

Failure stays local and closed: an answer that never comes is PeerTimeout for
its batch alone; a stream that breaks fails the batches it carried with
PeerUnavailable (PeerRejected when a status says the call, not the peer, was
at fault) and the next batch opens another; an answer to a sequence
number never sent breaks the stream. Streams are replaced after `max_age_s`
seconds (the old one half-closed, answering what it carries), because
servers age connections out.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import grpc

from govmesh.engine.protocols import PeerRejected, PeerTimeout, PeerUnavailable

logger = logging.getLogger(__name__)


class Sequenced(Protocol):
    """A batch message with a sequence number (the requests and answers of a batch stream)."""

    sequence: int


BatchReq = TypeVar("BatchReq", bound=Sequenced)
BatchResp = TypeVar("BatchResp", bound=Sequenced)

#: Statuses that end a call for something in it, not for the peer's health:
#: a message too large to send or to receive, a batch the peer finds invalid,
#: an error while handling it. Whatever else fails (UNAVAILABLE, CANCELLED,
#: ...) says the peer is unwell.
REJECTED_CALL = frozenset(
    {
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)

#: Opens a new stream call to the peer.
OpenStream = Callable[[], Any]


@dataclass(eq=False)
class _Stream(Generic[BatchResp]):
    call: Any
    opened: float
    waiting: dict[int, asyncio.Future[BatchResp]] = field(default_factory=dict)
    sent: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    reader: asyncio.Task[None] | None = None
    broken: str | None = None


class BatchStream(Generic[BatchReq, BatchResp]):
    """Sends batches to one peer over a few long-lived streams."""

    def __init__(
        self,
        *,
        peer: str,
        open_stream: OpenStream,
        streams: int = 2,
        max_age_s: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if streams < 1:
            raise ValueError("a batch stream needs at least one stream")
        self._peer = peer
        self._open = open_stream
        self._slots: list[_Stream[BatchResp] | None] = [None] * streams
        self._turn = itertools.cycle(range(streams))
        self._sequence = itertools.count(1)
        self._max_age_s = max_age_s
        self._monotonic = monotonic
        self._retired: set[_Stream[BatchResp]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def call(self, request: BatchReq, timeout: float) -> BatchResp:
        """Send `request`; its answer, PeerTimeout after `timeout`, or PeerUnavailable."""
        if self._closed:
            raise PeerUnavailable(f"{self._peer}: engine stopping")
        stream = self._stream()
        sequence = next(self._sequence)
        request.sequence = sequence
        future: asyncio.Future[BatchResp] = asyncio.get_running_loop().create_future()
        stream.waiting[sequence] = future
        writing = False
        try:
            async with asyncio.timeout(timeout):
                async with stream.lock:  # one write at a time on a call
                    # Before the write: its answer may be read before the write returns.
                    stream.sent = max(stream.sent, sequence)
                    writing = True
                    try:
                        await stream.call.write(request)
                    except (grpc.aio.AioRpcError, grpc.aio.UsageError, RuntimeError) as exc:
                        self._break(stream, _describe(exc))
                    writing = False
                return await future
        except TimeoutError:
            if writing:
                # A write cut short leaves the call in no known state.
                self._break(stream, "a write did not complete in time")
            raise PeerTimeout(f"{self._peer}: deadline exceeded") from None
        finally:
            stream.waiting.pop(sequence, None)

    def open(self) -> None:
        """Open every stream now, so that the first batches do not wait for it."""
        for _ in self._slots:
            self._stream()

    async def close(self) -> None:
        """Stop every stream; batches still waiting fail with PeerUnavailable."""
        self._closed = True
        streams = [s for s in self._slots if s is not None] + list(self._retired)
        for stream in streams:
            self._break(stream, "engine stopping")
        tasks = [s.reader for s in streams if s.reader is not None] + list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _stream(self) -> _Stream[BatchResp]:
        slot = next(self._turn)
        stream = self._slots[slot]
        now = self._monotonic()
        if stream is not None and (stream.broken or now - stream.opened > self._max_age_s):
            self._slots[slot] = None
            if not stream.broken:
                self._retire(stream)
            stream = None
        if stream is None:
            stream = _Stream(call=self._open(), opened=now)
            stream.reader = asyncio.create_task(self._read(stream), name=f"{self._peer}-stream")
            self._slots[slot] = stream
        return stream

    def _retire(self, stream: _Stream[BatchResp]) -> None:
        # Half-close: the peer answers what the stream carries, then ends it.
        self._retired.add(stream)

        async def finish() -> None:
            async with stream.lock:
                with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError, RuntimeError):
                    await stream.call.done_writing()

        task = asyncio.create_task(finish())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(self, stream: _Stream[BatchResp]) -> None:
        try:
            async for response in stream.call:
                future = stream.waiting.pop(response.sequence, None)
                if future is None:
                    if response.sequence > stream.sent or response.sequence < 1:
                        self._break(stream, "answered a batch it was not sent")
                        return
                    continue  # the answer to a batch whose caller gave up
                if not future.done():
                    future.set_result(response)
            self._break(stream, "ended the stream")
        except grpc.aio.AioRpcError as exc:
            # A stream ended by what one batch carried (an answer too large to
            # travel, say) fails the batches on it as rejected, not as a peer
            # that is down: the batcher asks again in halves on a new stream,
            # so one request cannot fail the others that shared the stream.
            self._break(stream, _describe(exc), rejected=exc.code() in REJECTED_CALL)
        except asyncio.CancelledError:
            self._break(stream, "engine stopping")
            raise
        finally:
            self._retired.discard(stream)

    def _break(self, stream: _Stream[BatchResp], reason: str, *, rejected: bool = False) -> None:
        """Fail what `stream` carries; the next batch on its slot opens another."""
        if stream.broken is None:
            stream.broken = reason
            if stream.waiting and reason != "ended the stream":
                logger.warning("%s stream broken: %s", self._peer, reason)
        stream.call.cancel()
        kind = PeerRejected if rejected else PeerUnavailable
        error = kind(f"{self._peer}: {stream.broken}")
        for future in stream.waiting.values():
            if not future.done():
                future.set_exception(error)
        stream.waiting.clear()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details() or ''}".strip()
    return f"stream failed: {exc!r}"
