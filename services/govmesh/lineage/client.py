"""The one client of the lineage service, for the CLI, witnesses, auditors and benchmarks.

It stays in govmesh.lineage (not govmesh.client) because the witness here
uses it, and a service imports only the shared packages.

async with await LineageClient.connect("127.0.0.1:50054") as lineage:
    checkpoint = await lineage.checkpoint()
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import grpc

from govmesh.runtime.channel import ChannelClient
from govmesh.runtime.errors import Unavailable
from govmesh.v1 import lineage_pb2, lineage_pb2_grpc

T = TypeVar("T")

#: The largest message the client accepts (a page of entries).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class LineageError(Unavailable):
    """The lineage service gave no usable answer; `code` is its status, if it sent one."""

    def __init__(self, code: grpc.StatusCode | None, message: str) -> None:
        super().__init__(message)
        self.code = code


def _error(exc: grpc.aio.AioRpcError) -> LineageError:
    code = exc.code()
    return LineageError(code, f"lineage: {code.name if code else 'error'}: {exc.details()}")


class LineageClient(ChannelClient):
    """One channel to a lineage service; every call raises LineageError on failure."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float) -> None:
        super().__init__(channel)
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

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None

    async def append_batch(
        self, entries: Sequence[tuple[bytes, str]]
    ) -> list[lineage_pb2.AppendResponse]:
        """Append (entry bytes, decision id) pairs; one answer per entry, in order."""
        request = lineage_pb2.AppendBatchRequest(
            entries=[lineage_pb2.AppendRequest(entry=e, decision_id=d) for e, d in entries]
        )
        response = await self._call(lambda: self._stub.AppendBatch(request, timeout=self._timeout))
        return list(response.results)

    async def checkpoint(
        self, tree_size: int = 0, *, witnessed: bool = False
    ) -> lineage_pb2.GetCheckpointResponse:
        """The newest checkpoint (or the one of `tree_size`, or the newest cosigned one)."""
        request = lineage_pb2.GetCheckpointRequest(tree_size=tree_size, witnessed=witnessed)
        return await self._call(lambda: self._stub.GetCheckpoint(request, timeout=self._timeout))

    async def entry(
        self, decision_id: str = "", *, index: int | None = None
    ) -> lineage_pb2.GetEntryResponse:
        request = lineage_pb2.GetEntryRequest(decision_id=decision_id)
        if index is not None:
            request.index = index
        return await self._call(lambda: self._stub.GetEntry(request, timeout=self._timeout))

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
        return await self._call(
            lambda: self._stub.GetInclusionProof(request, timeout=self._timeout)
        )

    async def consistency_proof(
        self, first: int, second: int = 0
    ) -> lineage_pb2.GetConsistencyProofResponse:
        request = lineage_pb2.GetConsistencyProofRequest(first=first, second=second)
        return await self._call(
            lambda: self._stub.GetConsistencyProof(request, timeout=self._timeout)
        )

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
        return await self._call(lambda: self._stub.QueryEntries(request, timeout=self._timeout))

    async def add_cosignature(self, note: str) -> lineage_pb2.AddCosignatureResponse:
        request = lineage_pb2.AddCosignatureRequest(checkpoint=note)
        return await self._call(lambda: self._stub.AddCosignature(request, timeout=self._timeout))

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
