"""The gRPC edge of the lineage service: protobuf in, core and store calls, protobuf out.

Errors map to status codes in one place (`_status`): a refused entry is an
answer (its `error` field), a log that contradicts its own checkpoints is
FAILED_PRECONDITION, an unreachable database is UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import asyncpg
import grpc
from google.protobuf import timestamp_pb2

from govmesh.lineage import merkle
from govmesh.lineage.core import Entry, EntryRejected, Receipt, check_entry
from govmesh.lineage.floor import StateFileError
from govmesh.lineage.metrics import LineageMetrics
from govmesh.lineage.notes import (
    Checkpoint,
    NoteError,
    VerifierKey,
    parse_note,
)
from govmesh.lineage.sequencer import Sequencer, SequencerStopped
from govmesh.lineage.store import LogCorrupted, LogStore, StoredCheckpoint, StoredEntry
from govmesh.lineage.watch import CommitWatch
from govmesh.runtime.streams import answer_batches
from govmesh.v1 import common_pb2, lineage_pb2, lineage_pb2_grpc

logger = logging.getLogger(__name__)

MAX_BATCH = 4096
DEFAULT_PAGE = 1000
MAX_PAGE = 5000
DEFAULT_QUERY_LIMIT = 100
MAX_QUERY_LIMIT = 1000
TAIL_POLL_S = 1.0
#: Entry bytes in one page: well inside the 4 MiB message limit, whatever the
#: entries' sizes (up to 64 KiB each).
PAGE_BYTES = 2 * 1024 * 1024

Context = grpc.aio.ServicerContext[Any, Any]


class _Invalid(Exception):
    """A request the service cannot answer as asked."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


async def _abort(context: Context, exc: BaseException) -> NoReturn:
    code, message = _status(exc)
    await context.abort(code, message)
    raise AssertionError("unreachable")


def _status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, _Invalid):
        return exc.code, str(exc)
    if isinstance(exc, LogCorrupted):
        return grpc.StatusCode.FAILED_PRECONDITION, f"lineage refuses: {exc}"
    if isinstance(exc, SequencerStopped | StateFileError):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if isinstance(exc, asyncpg.PostgresError | OSError | asyncpg.InterfaceError):
        return grpc.StatusCode.UNAVAILABLE, "lineage store unavailable"
    return grpc.StatusCode.INTERNAL, "lineage failed"


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Turn ProofError and bad ids into _Invalid inside a handler."""
    try:
        yield
    except merkle.ProofError as exc:
        raise _Invalid(grpc.StatusCode.OUT_OF_RANGE, str(exc)) from None


def _receipt(receipt: Receipt) -> common_pb2.LineageReceipt:
    return common_pb2.LineageReceipt(
        index=receipt.index,
        leaf_hash=receipt.leaf_hash,
        tree_size=receipt.tree_size,
        checkpoint=receipt.checkpoint,
    )


def _log_entry(entry: StoredEntry) -> lineage_pb2.LogEntry:
    message = lineage_pb2.LogEntry(
        index=entry.index,
        entry=entry.entry,
        leaf_hash=entry.leaf_hash,
        decision_id=str(entry.decision_id),
    )
    if entry.logged_at is not None:
        message.logged_at.FromDatetime(entry.logged_at)
    return message


def _pages(rows: Sequence[StoredEntry]) -> Iterator[list[StoredEntry]]:
    """`rows` cut into pages of at most PAGE_BYTES of entries (at least one row each)."""
    page: list[StoredEntry] = []
    size = 0
    for row in rows:
        if page and size + len(row.entry) > PAGE_BYTES:
            yield page
            page, size = [], 0
        page.append(row)
        size += len(row.entry)
    if page:
        yield page


def _decision_uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise _Invalid(grpc.StatusCode.INVALID_ARGUMENT, "decision_id is not a UUID") from None


def _timestamp(message: Any, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    value: timestamp_pb2.Timestamp = getattr(message, field)
    return value.ToDatetime(tzinfo=UTC)


class LineageServicer(lineage_pb2_grpc.LineageServicer):
    """Appends decisions, serves proofs, checkpoints and queries."""

    def __init__(
        self,
        *,
        store: LogStore,
        sequencer: Sequencer,
        watch: CommitWatch,
        witnesses: Sequence[VerifierKey] = (),
        metrics: LineageMetrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._store = store
        self._sequencer = sequencer
        self._watch = watch
        self._witnesses = list(witnesses)

    # --- appends -------------------------------------------------------------

    async def _append(
        self, requests: Sequence[lineage_pb2.AppendRequest]
    ) -> list[lineage_pb2.AppendResponse]:
        if self._metrics is None:
            return await self._append_checked(requests)
        started = time.perf_counter()
        try:
            return await self._append_checked(requests)
        finally:
            self._metrics.append_seconds.observe(time.perf_counter() - started)

    async def _append_checked(
        self, requests: Sequence[lineage_pb2.AppendRequest]
    ) -> list[lineage_pb2.AppendResponse]:
        answers: list[lineage_pb2.AppendResponse | None] = [None] * len(requests)
        checked: list[Entry] = []
        positions: list[int] = []
        for position, request in enumerate(requests):
            try:
                checked.append(check_entry(request.entry, request.decision_id))
                positions.append(position)
            except EntryRejected as exc:
                answers[position] = lineage_pb2.AppendResponse(
                    decision_id=request.decision_id, error=str(exc)
                )
        if checked:
            results = await self._sequencer.append(checked)
            for position, result in zip(positions, results, strict=True):
                decision_id = requests[position].decision_id
                answers[position] = (
                    lineage_pb2.AppendResponse(decision_id=decision_id, receipt=_receipt(result))
                    if isinstance(result, Receipt)
                    else lineage_pb2.AppendResponse(decision_id=decision_id, error=str(result))
                )
        return [a for a in answers if a is not None]

    async def Append(
        self, request: lineage_pb2.AppendRequest, context: Context
    ) -> lineage_pb2.AppendResponse:
        try:
            [response] = await self._append([request])
        except Exception as exc:
            await _abort(context, exc)
        if response.error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, response.error)
        return response

    async def AppendBatch(
        self, request: lineage_pb2.AppendBatchRequest, context: Context
    ) -> lineage_pb2.AppendBatchResponse:
        if not 0 < len(request.entries) <= MAX_BATCH:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"a batch holds 1..{MAX_BATCH} entries"
            )
        try:
            results = await self._append(request.entries)
        except Exception as exc:
            await _abort(context, exc)
        return lineage_pb2.AppendBatchResponse(results=results)

    async def AppendStream(
        self,
        request_iterator: AsyncIterator[lineage_pb2.AppendBatchRequest],
        context: Context,
    ) -> AsyncIterator[lineage_pb2.AppendBatchResponse]:
        # Batches are appended concurrently (the sequencer groups them into
        # transactions) and answered as they commit.
        async def answer(
            request: lineage_pb2.AppendBatchRequest,
        ) -> lineage_pb2.AppendBatchResponse:
            if not 0 < len(request.entries) <= MAX_BATCH:
                error = f"a batch holds 1..{MAX_BATCH} entries"
                results = [
                    lineage_pb2.AppendResponse(decision_id=r.decision_id, error=error)
                    for r in request.entries
                ]
            else:
                try:
                    results = await self._append(request.entries)
                except Exception as exc:
                    _, error = _status(exc)
                    results = [
                        lineage_pb2.AppendResponse(decision_id=r.decision_id, error=error)
                        for r in request.entries
                    ]
            return lineage_pb2.AppendBatchResponse(results=results, sequence=request.sequence)

        async for response in answer_batches(request_iterator, answer):
            yield response

    # --- checkpoints and entries -------------------------------------------

    async def GetCheckpoint(
        self, request: lineage_pb2.GetCheckpointRequest, context: Context
    ) -> lineage_pb2.GetCheckpointResponse:
        try:
            if request.tree_size:
                stored = await self._store.checkpoint(request.tree_size)
            else:
                stored = await self._store.latest_checkpoint(witnessed=request.witnessed)
            if stored is None:
                raise _Invalid(grpc.StatusCode.NOT_FOUND, "no such checkpoint")
        except Exception as exc:
            await _abort(context, exc)
        return lineage_pb2.GetCheckpointResponse(
            checkpoint=stored.with_cosignatures(),
            tree_size=stored.tree_size,
            root_hash=stored.root_hash,
        )

    async def _find(self, decision_id: str, index: int | None) -> StoredEntry:
        if index is not None:
            found = await self._store.entry_by_index(index)
        else:
            found = await self._store.entry_by_decision(_decision_uuid(decision_id))
        if found is None:
            raise _Invalid(grpc.StatusCode.NOT_FOUND, "no such entry")
        return found

    async def GetEntry(
        self, request: lineage_pb2.GetEntryRequest, context: Context
    ) -> lineage_pb2.GetEntryResponse:
        try:
            index = request.index if request.HasField("index") else None
            found = await self._find(request.decision_id, index)
        except Exception as exc:
            await _abort(context, exc)
        return lineage_pb2.GetEntryResponse(
            index=found.index,
            entry=found.entry,
            leaf_hash=found.leaf_hash,
            decision_id=str(found.decision_id),
        )

    # --- proofs --------------------------------------------------------------

    async def GetInclusionProof(
        self, request: lineage_pb2.GetInclusionProofRequest, context: Context
    ) -> lineage_pb2.GetInclusionProofResponse:
        try:
            with _translated():
                index = request.index if request.HasField("index") else None
                if request.tree_size or request.witnessed:
                    found = await self._find(request.decision_id, index)
                    size, stored = await self._tree_for(found.index, request)
                else:
                    # The newest checkpoint covers every entry: read both at once.
                    found, stored = await asyncio.gather(
                        self._find(request.decision_id, index), self._store.latest_checkpoint()
                    )
                    if stored is None or stored.tree_size <= found.index:
                        raise LogCorrupted(f"no checkpoint covers entry {found.index}")
                    size = stored.tree_size
                hashes = await self._store.tree_hashes(merkle.inclusion_ranges(found.index, size))
                if stored is not None:
                    # Never hand out a proof that the log's own signature contradicts.
                    try:
                        merkle.verify_inclusion(
                            found.index, size, found.leaf_hash, hashes, stored.root_hash
                        )
                    except merkle.ProofError:
                        raise LogCorrupted(
                            f"stored hashes do not prove entry {found.index} "
                            f"in the checkpoint of size {size}"
                        ) from None
        except Exception as exc:
            await _abort(context, exc)
        return lineage_pb2.GetInclusionProofResponse(
            index=found.index,
            tree_size=size,
            hashes=hashes,
            entry=found.entry,
            leaf_hash=found.leaf_hash,
            checkpoint=stored.with_cosignatures() if stored else "",
            decision_id=str(found.decision_id),
        )

    async def _tree_for(
        self, index: int, request: lineage_pb2.GetInclusionProofRequest
    ) -> tuple[int, StoredCheckpoint | None]:
        if request.tree_size:
            head, _ = await self._store.head()
            if request.tree_size > head:
                raise _Invalid(grpc.StatusCode.OUT_OF_RANGE, f"the log has only {head} entries")
            if index >= request.tree_size:
                raise _Invalid(
                    grpc.StatusCode.OUT_OF_RANGE,
                    f"entry {index} is not in the tree of size {request.tree_size}",
                )
            return request.tree_size, await self._store.checkpoint(request.tree_size)
        stored = None
        if request.witnessed:
            stored = await self._store.covering_checkpoint(index, witnessed=True)
        if stored is None:
            stored = await self._store.covering_checkpoint(index, witnessed=False)
        if stored is None:
            raise LogCorrupted(f"no checkpoint covers entry {index}")
        return stored.tree_size, stored

    async def GetConsistencyProof(
        self, request: lineage_pb2.GetConsistencyProofRequest, context: Context
    ) -> lineage_pb2.GetConsistencyProofResponse:
        try:
            with _translated():
                first, second = request.first, request.second
                if second == 0:
                    latest = await self._store.latest_checkpoint()
                    second = latest.tree_size if latest else 0
                head, _ = await self._store.head()
                if second > head:
                    raise _Invalid(grpc.StatusCode.OUT_OF_RANGE, f"the log has only {head} entries")
                if not 0 < first <= second:
                    raise _Invalid(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"a consistency proof needs 0 < first <= second, got {first}, {second}",
                    )
                hashes, old, new = await asyncio.gather(
                    self._store.tree_hashes(merkle.consistency_ranges(first, second)),
                    self._store.checkpoint(first),
                    self._store.checkpoint(second),
                )
                if old is not None and new is not None:
                    try:
                        merkle.verify_consistency(
                            first, second, old.root_hash, new.root_hash, hashes
                        )
                    except merkle.ProofError:
                        raise LogCorrupted(
                            f"stored hashes do not prove checkpoint {first} "
                            f"consistent with {second}"
                        ) from None
        except Exception as exc:
            await _abort(context, exc)
        return lineage_pb2.GetConsistencyProofResponse(
            first=first,
            second=second,
            hashes=hashes,
            checkpoint=new.with_cosignatures() if new else "",
        )

    # --- reading the log -------------------------------------------------------

    async def ListEntries(
        self, request: lineage_pb2.ListEntriesRequest, context: Context
    ) -> AsyncIterator[lineage_pb2.EntryPage]:
        try:
            head, _ = await self._store.head()
            end = min(request.end, head) if request.end else head
            page = min(request.page_size or DEFAULT_PAGE, MAX_PAGE)
            start = request.start
            while start < end:
                rows = await self._store.entries(start, end, limit=page)
                if not rows:
                    break
                for part in _pages(rows):
                    yield lineage_pb2.EntryPage(
                        entries=[_log_entry(r) for r in part], tree_size=head
                    )
                start = rows[-1].index + 1
        except Exception as exc:
            await _abort(context, exc)

    async def ListCheckpoints(
        self, request: lineage_pb2.ListCheckpointsRequest, context: Context
    ) -> AsyncIterator[lineage_pb2.CheckpointPage]:
        try:
            after = request.after_size
            while True:
                rows = await self._store.checkpoints(after, limit=DEFAULT_PAGE)
                if not rows:
                    break
                yield lineage_pb2.CheckpointPage(
                    checkpoints=[
                        lineage_pb2.CheckpointRecord(
                            tree_size=r.tree_size,
                            root_hash=r.root_hash,
                            checkpoint=r.note,
                            cosignatures=list(r.cosignatures),
                        )
                        for r in rows
                    ]
                )
                after = rows[-1].tree_size
        except Exception as exc:
            await _abort(context, exc)

    async def QueryEntries(
        self, request: lineage_pb2.QueryEntriesRequest, context: Context
    ) -> lineage_pb2.EntryPage:
        try:
            since = _timestamp(request, "since")
            until = _timestamp(request, "until")
            decision = _decision_uuid(request.decision_id) if request.decision_id else None
            if not (decision or request.trace_id or request.subject or since or until):
                raise _Invalid(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "name a decision id, trace id, subject or time range",
                )
            limit = min(request.limit or DEFAULT_QUERY_LIMIT, MAX_QUERY_LIMIT)
            after = request.after_index if request.HasField("after_index") else -1
            rows = await self._store.query(
                decision_id=decision,
                trace_id=request.trace_id or None,
                subject=request.subject or None,
                since=since,
                until=until,
                after=after,
                limit=limit + 1,
            )
            head, _ = await self._store.head()
        except Exception as exc:
            await _abort(context, exc)
        # One page answers a query: cut at the byte bound too, and say there is more.
        page = next(_pages(rows[:limit]), [])
        return lineage_pb2.EntryPage(
            entries=[_log_entry(r) for r in page], tree_size=head, more=len(rows) > len(page)
        )

    async def Tail(
        self, request: lineage_pb2.TailRequest, context: Context
    ) -> AsyncIterator[lineage_pb2.EntryPage]:
        try:
            head, _ = await self._store.head()
            self._watch.committed(head)
            next_index = head if request.from_end else request.start
            while True:
                rows = await self._store.entries(next_index, limit=DEFAULT_PAGE)
                if rows:
                    for part in _pages(rows):
                        yield lineage_pb2.EntryPage(
                            entries=[_log_entry(r) for r in part], tree_size=self._watch.size
                        )
                    next_index = rows[-1].index + 1
                    continue
                await self._watch.wait_beyond(next_index, TAIL_POLL_S)
        except Exception as exc:
            await _abort(context, exc)

    # --- witnesses -------------------------------------------------------------

    async def AddCosignature(
        self, request: lineage_pb2.AddCosignatureRequest, context: Context
    ) -> lineage_pb2.AddCosignatureResponse:
        try:
            if not self._witnesses:
                raise _Invalid(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "this log accepts no cosignatures (GOVMESH_LINEAGE_WITNESSES is empty)",
                )
            try:
                note = parse_note(request.checkpoint)
                checkpoint = Checkpoint.parse(note.text)
            except NoteError as exc:
                raise _Invalid(
                    grpc.StatusCode.INVALID_ARGUMENT, f"not a checkpoint: {exc}"
                ) from None
            stored = await self._store.checkpoint(checkpoint.size)
            if stored is None or parse_note(stored.note).text != note.text:
                raise _Invalid(grpc.StatusCode.NOT_FOUND, "the log signed no such checkpoint")
            added: list[str] = []
            for witness in self._witnesses:
                try:
                    signature = note.verified_by(witness)
                except NoteError as exc:
                    raise _Invalid(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
                if signature is None:
                    continue
                await self._store.add_cosignature(
                    checkpoint.size, witness.name, witness.key_id, signature.line
                )
                added.append(witness.name)
            if not added:
                raise _Invalid(
                    grpc.StatusCode.PERMISSION_DENIED, "no cosignature by a witness this log trusts"
                )
        except Exception as exc:
            await _abort(context, exc)
        return lineage_pb2.AddCosignatureResponse(tree_size=checkpoint.size, witnesses=added)
