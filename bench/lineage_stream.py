"""An AppendStream client that coalesces concurrent appends: the streaming arm of bench/lineage.py.

The engine appends through its own batcher over AppendStream
(govmesh.engine.lineage.BatchingLineage on govmesh.engine.peers.GrpcLineage);
this one stands beside it in the latency benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import grpc

from govmesh.artifacts.receipts import receipt_problem
from govmesh.lineage.client import LineageError
from govmesh.v1 import common_pb2, lineage_pb2, lineage_pb2_grpc


@dataclass
class _Pending:
    request: lineage_pb2.AppendRequest
    future: asyncio.Future[common_pb2.LineageReceipt]


def checked_receipt(entry: bytes, answer: lineage_pb2.AppendResponse) -> common_pb2.LineageReceipt:
    """The receipt of `answer`, only if it is for exactly `entry` in a tree that holds it."""
    problem = receipt_problem(entry, answer)
    if problem is not None:
        raise LineageError(None, problem)
    return answer.receipt


class StreamingLineage:
    """Appends entries over an AppendStream, coalescing concurrent appends into batches.

    An append waits at most `linger_s` for company; a batch holds at most
    `max_batch` entries; at most `max_in_flight` batches await their answers.
    Its `append` has the shape of the engine's lineage sink: it returns the
    entry's receipt once committed, checked against the bytes it sent.

    Servers age connections out, so a stream is used for new batches for at
    most `max_stream_age` seconds: then a fresh one takes over and the old one
    is half-closed, answering what it carries before it ends. A broken stream
    fails only the appends it carried; the next append opens another.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        max_batch: int = 256,
        linger_s: float = 0.001,
        max_in_flight: int = 8,
        max_stream_age: float = 60.0,
    ) -> None:
        self._stub = lineage_pb2_grpc.LineageStub(channel)
        # Bounding the batches in flight lets batches grow when lineage is busy.
        self._slots = asyncio.Semaphore(max_in_flight)
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._max_stream_age = max_stream_age
        self._queue: list[_Pending] = []
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._call: Any = None
        self._opened = 0.0
        self._readers: set[asyncio.Task[None]] = set()
        self._in_flight: dict[int, tuple[Any, list[_Pending]]] = {}
        self._sequence = 0

    async def append(
        self, entry: bytes, decision_id: str, *, timeout: float
    ) -> common_pb2.LineageReceipt:
        """Append one entry; its receipt once lineage committed it."""
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_forever(), name="lineage-stream")
        future: asyncio.Future[common_pb2.LineageReceipt] = (
            asyncio.get_running_loop().create_future()
        )
        self._queue.append(
            _Pending(lineage_pb2.AppendRequest(entry=entry, decision_id=decision_id), future)
        )
        self._wake.set()
        async with asyncio.timeout(timeout):
            return await future

    async def close(self) -> None:
        """Stop; appends still waiting fail."""
        tasks = [t for t in (self._flusher, *self._readers) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for call, _ in list(self._in_flight.values()):
            call.cancel()
        if self._call is not None:
            self._call.cancel()
        self._fail([p for _, batch in self._in_flight.values() for p in batch] + self._queue)
        self._in_flight.clear()
        self._queue.clear()

    @staticmethod
    def _fail(pendings: list[_Pending], message: str = "lineage stream closed") -> None:
        for pending in pendings:
            if not pending.future.done():
                pending.future.set_exception(LineageError(grpc.StatusCode.UNAVAILABLE, message))

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            if len(self._queue) < self._max_batch and self._linger_s > 0:
                await asyncio.sleep(self._linger_s)
            self._wake.clear()
            while self._queue:
                await self._slots.acquire()
                batch = [p for p in self._queue[: self._max_batch] if not p.future.done()]
                del self._queue[: self._max_batch]
                if batch:
                    await self._send(batch)
                else:
                    self._slots.release()

    async def _stream(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._call is not None and loop.time() - self._opened > self._max_stream_age:
            old, self._call = self._call, None
            with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError, RuntimeError):
                await old.done_writing()
        if self._call is None:
            self._call = self._stub.AppendStream()
            self._opened = loop.time()
            reader = asyncio.create_task(self._read(self._call))
            self._readers.add(reader)
            reader.add_done_callback(self._readers.discard)
        return self._call

    async def _send(self, batch: list[_Pending]) -> None:
        call = await self._stream()
        self._sequence += 1
        self._in_flight[self._sequence] = (call, batch)
        request = lineage_pb2.AppendBatchRequest(
            entries=[p.request for p in batch], sequence=self._sequence
        )
        try:
            await call.write(request)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, RuntimeError) as exc:
            self._broken(call, f"lineage stream failed: {exc}")

    async def _read(self, call: Any) -> None:
        try:
            async for response in call:
                carried = self._in_flight.get(response.sequence)
                if carried is None or carried[0] is not call:
                    self._broken(call, "lineage answered a batch it was not sent")
                    return
                batch = self._in_flight.pop(response.sequence)[1]
                self._slots.release()
                if len(batch) != len(response.results):
                    self._broken(call, "lineage answered a batch with the wrong number of results")
                    return
                for pending, answer in zip(batch, response.results, strict=True):
                    if pending.future.done():
                        continue
                    try:
                        pending.future.set_result(checked_receipt(pending.request.entry, answer))
                    except LineageError as exc:
                        pending.future.set_exception(exc)
            self._broken(call, "lineage ended the stream")
        except grpc.aio.AioRpcError as exc:
            self._broken(call, f"lineage stream failed: {exc.code().name}: {exc.details()}")

    def _broken(self, call: Any, message: str) -> None:
        """Fail what `call` carried; the next batch opens a new stream."""
        if call is self._call:
            self._call = None
        call.cancel()
        lost = [seq for seq, (carrier, _) in self._in_flight.items() if carrier is call]
        for _ in lost:
            self._slots.release()
        self._fail([p for seq in lost for p in self._in_flight.pop(seq)[1]], message)
