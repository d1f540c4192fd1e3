"""A client of the lineage service, for the CLI, witnesses, auditors and benchmarks.

async with await LineageClient.connect("127.0.0.1:50054") as lineage:
    checkpoint = await lineage.checkpoint()
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

import grpc

from govmesh.artifacts.receipts import receipt_problem
from govmesh.v1 import common_pb2, lineage_pb2, lineage_pb2_grpc

#: The largest message the client accepts (a page of entries).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class LineageError(Exception):
    """The lineage service gave no usable answer."""

    def __init__(self, code: grpc.StatusCode | None, message: str) -> None:
        super().__init__(message)
        self.code = code


def _error(exc: grpc.aio.AioRpcError) -> LineageError:
    code = exc.code()
    return LineageError(code, f"lineage: {code.name if code else 'error'}: {exc.details()}")


class LineageClient:
    """One channel to a lineage service; every call raises LineageError on failure."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float) -> None:
        self._channel = channel
        self._stub = lineage_pb2_grpc.LineageStub(channel)
        self._timeout = timeout

    @classmethod
    async def connect(cls, target: str, *, timeout: float = 10.0) -> LineageClient:
        """Open a channel to `target` (host:port) and wait until it is ready."""
        channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        try:
            await _ready(channel, timeout)
        except Exception:
            await channel.close()
            raise
        return cls(channel, timeout=timeout)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> LineageClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None

    async def append_batch(
        self, entries: Sequence[tuple[bytes, str]]
    ) -> list[lineage_pb2.AppendResponse]:
        """Append (entry bytes, decision id) pairs; one answer per entry, in order."""
        request = lineage_pb2.AppendBatchRequest(
            entries=[lineage_pb2.AppendRequest(entry=e, decision_id=d) for e, d in entries]
        )
        response: lineage_pb2.AppendBatchResponse = await self._call(
            self._stub.AppendBatch, request
        )
        return list(response.results)

    async def checkpoint(
        self, tree_size: int = 0, *, witnessed: bool = False
    ) -> lineage_pb2.GetCheckpointResponse:
        """The newest checkpoint (or the one of `tree_size`, or the newest cosigned one)."""
        response: lineage_pb2.GetCheckpointResponse = await self._call(
            self._stub.GetCheckpoint,
            lineage_pb2.GetCheckpointRequest(tree_size=tree_size, witnessed=witnessed),
        )
        return response

    async def entry(
        self, decision_id: str = "", *, index: int | None = None
    ) -> lineage_pb2.GetEntryResponse:
        request = lineage_pb2.GetEntryRequest(decision_id=decision_id)
        if index is not None:
            request.index = index
        response: lineage_pb2.GetEntryResponse = await self._call(self._stub.GetEntry, request)
        return response

    async def inclusion_proof(
        self,
        decision_id: str = "",
        *,
        index: int | None = None,
        tree_size: int = 0,
        witnessed: bool = False,
    ) -> lineage_pb2.GetInclusionProofResponse:
        request = lineage_pb2.GetInclusionProofRequest(
            decision_id=decision_id, tree_size=tree_size, witnessed=witnessed
        )
        if index is not None:
            request.index = index
        response: lineage_pb2.GetInclusionProofResponse = await self._call(
            self._stub.GetInclusionProof, request
        )
        return response

    async def consistency_proof(
        self, first: int, second: int = 0
    ) -> lineage_pb2.GetConsistencyProofResponse:
        response: lineage_pb2.GetConsistencyProofResponse = await self._call(
            self._stub.GetConsistencyProof,
            lineage_pb2.GetConsistencyProofRequest(first=first, second=second),
        )
        return response

    async def query(
        self,
        *,
        decision_id: str = "",
        trace_id: str = "",
        subject: str = "",
        since: datetime | None = None,
        until: datetime | None = None,
        after_index: int | None = None,
        limit: int = 100,
    ) -> lineage_pb2.EntryPage:
        request = lineage_pb2.QueryEntriesRequest(
            decision_id=decision_id, trace_id=trace_id, subject=subject, limit=limit
        )
        if since is not None:
            request.since.FromDatetime(since)
        if until is not None:
            request.until.FromDatetime(until)
        if after_index is not None:
            request.after_index = after_index
        response: lineage_pb2.EntryPage = await self._call(self._stub.QueryEntries, request)
        return response

    async def add_cosignature(self, note: str) -> lineage_pb2.AddCosignatureResponse:
        response: lineage_pb2.AddCosignatureResponse = await self._call(
            self._stub.AddCosignature, lineage_pb2.AddCosignatureRequest(checkpoint=note)
        )
        return response

    async def list_entries(
        self, start: int = 0, end: int = 0, *, page_size: int = 1000
    ) -> AsyncIterator[lineage_pb2.EntryPage]:
        """Pages of entries in index order (no deadline: a whole log can take a while)."""
        call = self._stub.ListEntries(
            lineage_pb2.ListEntriesRequest(start=start, end=end, page_size=page_size)
        )
        async for page in _stream(call):
            yield page

    async def list_checkpoints(
        self, after_size: int = 0
    ) -> AsyncIterator[lineage_pb2.CheckpointPage]:
        call = self._stub.ListCheckpoints(lineage_pb2.ListCheckpointsRequest(after_size=after_size))
        async for page in _stream(call):
            yield page

    async def tail(
        self, start: int = 0, *, from_end: bool = False
    ) -> AsyncIterator[lineage_pb2.LogEntry]:
        """Entries from `start` (or from the end), then each new one, until cancelled."""
        call = self._stub.Tail(lineage_pb2.TailRequest(start=start, from_end=from_end))
        async for page in _stream(call):
            for entry in page.entries:
                yield entry


async def _stream(call: Any) -> AsyncIterator[Any]:
    try:
        async for message in call:
            yield message
    except grpc.aio.AioRpcError as exc:
        raise _error(exc) from None
    finally:
        with contextlib.suppress(Exception):
            call.cancel()


async def _ready(channel: grpc.aio.Channel, timeout: float) -> None:
    try:
        await asyncio.wait_for(channel.channel_ready(), timeout)
    except TimeoutError:
        raise LineageError(
            grpc.StatusCode.UNAVAILABLE, f"lineage: no answer within {timeout:.0f} s"
        ) from None


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

    An append waits at most `linger` for company; a batch holds at most
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
        linger: float = 0.001,
        max_in_flight: int = 8,
        max_stream_age: float = 60.0,
    ) -> None:
        self._stub = lineage_pb2_grpc.LineageStub(channel)
        # Bounding the batches in flight lets batches grow when lineage is busy.
        self._slots = asyncio.Semaphore(max_in_flight)
        self._max_batch = max_batch
        self._linger = linger
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
            if len(self._queue) < self._max_batch and self._linger > 0:
                await asyncio.sleep(self._linger)
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
