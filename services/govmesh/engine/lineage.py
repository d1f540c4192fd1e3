"""Recording decisions: batched appends to lineage, and the durable deny spool."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Protocol

from govmesh.artifacts.canonical import canonical_json
from govmesh.artifacts.entries import (
    derived_refusal_id,
    entry_problem,
    refusal_id,
    refusal_record,
    refuses,
)
from govmesh.artifacts.receipts import receipt_problem
from govmesh.engine.batching import MAX_BATCH_BYTES, Batcher
from govmesh.engine.core import PeerError, PeerUnavailable
from govmesh.engine.metrics import PeerCallMetrics
from govmesh.runtime.durable import durable_write
from govmesh.v1 import common_pb2, lineage_pb2

logger = logging.getLogger(__name__)


class LineageTransport(Protocol):
    """What the batcher and the spool need from the lineage service."""

    async def append_batch(
        self, requests: list[lineage_pb2.AppendRequest], *, timeout: float
    ) -> list[lineage_pb2.AppendResponse]: ...

    async def get_entry(self, decision_id: str, *, timeout: float) -> bytes | None: ...


def check_receipt(entry: bytes, response: lineage_pb2.AppendResponse) -> common_pb2.LineageReceipt:
    """Accept a receipt only if it is for these exact bytes, in a tree that holds them."""
    problem = receipt_problem(entry, response)
    if problem is not None:
        raise PeerUnavailable(problem)
    return response.receipt


class BatchingLineage:
    """Appends through AppendBatch calls shared by concurrent decisions.

    Each caller gets its own receipt, checked against the bytes it asked to
    append. `expected()` counts the decisions still on their way here (the
    engine's `Engine.before_lineage`): a batch lingers for company only
    while some are, so a decision alone never waits out the linger.
    """

    def __init__(
        self,
        *,
        transport: LineageTransport,
        max_batch: int = 256,
        linger_s: float = 0.0,
        max_in_flight: int = 8,
        expected: Callable[[], int] | None = None,
        metrics: PeerCallMetrics | None = None,
    ) -> None:
        self._batcher: Batcher[lineage_pb2.AppendRequest, lineage_pb2.AppendResponse] = Batcher(
            name="lineage",
            send=lambda requests, timeout: transport.append_batch(requests, timeout=timeout),
            size=lineage_pb2.AppendRequest.ByteSize,
            max_batch=max_batch,
            linger_s=linger_s,
            max_in_flight=max_in_flight,
            expected=expected,
            metrics=metrics,
        )

    def start(self) -> None:
        """Start sending."""
        self._batcher.start()

    async def close(self) -> None:
        """Stop; pending appends fail (their callers spool or deny)."""
        await self._batcher.close()

    async def append(
        self, entry: bytes, decision_id: str, *, timeout: float
    ) -> common_pb2.LineageReceipt:
        """Append one entry; returns its receipt once lineage committed it."""
        request = lineage_pb2.AppendRequest(entry=entry, decision_id=decision_id)
        return check_receipt(entry, await self._batcher.submit(request, timeout=timeout))


#: The namespace of amendment ids (uuid5 of the amended id and the answered entry).
_AMENDMENTS = uuid.UUID("5f1d3c2e-6a7b-4c8d-9e0f-a1b2c3d4e5f6")


def _chunks(entries: list[tuple[str, bytes]]) -> list[list[tuple[str, bytes]]]:
    # AppendBatch calls of at most 256 entries and MAX_BATCH_BYTES.
    chunks: list[list[tuple[str, bytes]]] = [[]]
    used = 0
    for decision_id, entry in entries:
        cost = len(entry) + len(decision_id) + 16
        if chunks[-1] and (len(chunks[-1]) == 256 or used + cost > MAX_BATCH_BYTES):
            chunks.append([])
            used = 0
        chunks[-1].append((decision_id, entry))
        used += cost
    return [chunk for chunk in chunks if chunk]


class FileSpool:
    """Denies that lineage could not take, kept on local disk until it can.

    Denies that arrive together are written together (group commit): one
    file per group, one line per entry ("<decision id> <entry>\\n"; canonical
    JSON holds no raw newline), written whole or not at all. The writing runs
    in a worker thread: an overloaded engine that denies a lot never stalls
    its event loop on fsync. Groups drain in the order they were written.

    An entry lineage refuses (its rules, `govmesh.artifacts.entries`, will
    refuse it on every try) is moved aside to `quarantine/`, with the
    reason, and a refusal record takes its place in the log: the auditor
    sees it, the engine's counter stays whole, and the spool moves on.

    A group the disk refuses (full, failing) fails its `put`s, so the engine
    knows those denies are not durable, but it is not dropped: it waits in
    memory (up to `max_unwritten_bytes`) and each drain first tries the disk
    again, then lineage directly. Only a crash of the engine while both the
    disk and lineage refuse loses it, and the auditor then reports the gap
    in the engine's counter.
    """

    def __init__(self, directory: Path, *, max_unwritten_bytes: int = 64 * 1024 * 1024) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.quarantine = directory / "quarantine"
        self._waiting: list[tuple[bytes, str, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._max_unwritten = max_unwritten_bytes
        self._unwritten: list[tuple[str, bytes]] = []
        self._unwritten_bytes = 0
        #: Entries on disk waiting for lineage (counted once here, then kept as they come and go).
        self.depth = sum(self._count(path) for path in self.pending())

    @property
    def unwritten(self) -> int:
        """Denies the disk refused, waiting in memory for the disk or lineage."""
        return len(self._unwritten)

    def _hold(self, entries: list[tuple[str, bytes]]) -> None:
        for decision_id, entry in entries:
            if self._unwritten_bytes + len(entry) > self._max_unwritten:
                logger.error(
                    "deny lost: the spool's disk refuses it and the memory kept for such "
                    "denies is full",
                    extra={"decision_id": decision_id},
                )
                continue
            self._unwritten.append((decision_id, entry))
            self._unwritten_bytes += len(entry)

    async def put(self, entry: bytes, decision_id: str) -> None:
        """Store an entry durably; returns once it is on disk, raises OSError if it cannot be."""
        if b"\n" in entry or " " in decision_id or "\n" in decision_id:
            raise ValueError("a spooled entry is one line of canonical JSON")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((entry, decision_id, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_groups(), name="spool-writer")
        await future

    async def _write_groups(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting, []
            try:
                await asyncio.to_thread(self._write, [(e, d) for e, d, _ in group])
            except OSError as exc:
                self._hold([(d, e) for e, d, _ in group])
                logger.error(
                    "the spool's disk refuses denies; kept in memory until the disk or "
                    "lineage takes them: %s",
                    exc,
                    extra={"entries": len(group), "unwritten": len(self._unwritten)},
                )
                for *_, future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.depth += len(group)
            for *_, future in group:
                if not future.done():
                    future.set_result(None)
            logger.warning("denies spooled", extra={"entries": len(group)})

    def _write(self, group: list[tuple[bytes, str]]) -> None:
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.spool"
        durable_write(self._dir / name, b"".join(d.encode() + b" " + e + b"\n" for e, d in group))

    async def flush(self) -> None:
        """Wait until every deny put so far is on disk (or failed and held in memory).

        Denies held in memory are tried on the disk once more.
        """
        while self._writer is not None and not self._writer.done():
            await asyncio.wait({self._writer})
        if self._unwritten:
            with contextlib.suppress(OSError):
                await self._persist_unwritten()

    async def _persist_unwritten(self) -> None:
        held = list(self._unwritten)  # more may be held while the thread writes
        await asyncio.to_thread(self._write, [(e, d) for d, e in held])
        self.depth += len(held)
        self._unwritten = self._unwritten[len(held) :]
        self._unwritten_bytes = sum(len(e) for _, e in self._unwritten)

    def pending(self) -> list[Path]:
        """Spooled groups, oldest first."""
        return sorted(self._dir.glob("*.spool"))

    def oldest(self) -> Path | None:
        """The oldest spooled group, if any."""
        return min(self._dir.glob("*.spool"), default=None)

    @staticmethod
    def _count(path: Path) -> int:
        # A group the engine cannot read now still drains or fails later, in drain().
        try:
            return path.read_bytes().count(b"\n")
        except OSError:
            return 0

    @staticmethod
    def _read(path: Path) -> list[tuple[str, bytes]]:
        entries = []
        for line in path.read_bytes().splitlines():
            decision_id, _, entry = line.partition(b" ")
            # A damaged line still reads: lineage's rules then refuse it, and
            # it is moved aside instead of stopping the drain.
            entries.append((decision_id.decode("utf-8", "backslashreplace"), entry))
        return entries

    async def drain(self, transport: LineageTransport, *, timeout: float = 5.0) -> int:
        """Append every spooled entry; returns how many left the spool.

        A group leaves the spool once every entry in it is logged. An entry
        already logged with the same bytes counts as logged (a drain that was
        interrupted repeats safely). An entry whose decision id is logged with
        other bytes (an ALLOW committed after the engine had given up on it
        and answered DENY) is recorded as an amendment naming that decision.
        An entry lineage refuses is quarantined and replaced by a refusal
        record (`_refuse`). A group that cannot drain now does not hold back the groups after it;
        raises the last error when nothing drained at all.
        """
        drained = 0
        failure: PeerError | None = None
        if self._unwritten:
            try:
                drained += await self._drain_unwritten(transport, timeout)
            except PeerError as exc:
                failure = exc
        for path in self.pending():
            try:
                drained += await self._drain_group(path, transport, timeout)
            except PeerError as exc:
                failure = exc
                logger.warning("spool group waits", extra={"group": path.name, "error": str(exc)})
        if failure is not None and not drained:
            raise failure
        return drained

    async def _drain_unwritten(self, transport: LineageTransport, timeout: float) -> int:
        # 1. The disk again: once it has room, they are a group like any other
        #    (drained below) and survive a restart.
        try:
            await self._persist_unwritten()
            return 0
        except OSError:
            pass
        # 2. Else lineage directly. Sending an entry twice is safe: one logged
        #    with the same bytes counts as logged.
        held = list(self._unwritten)
        settled = await self._settle(held, transport, timeout)
        self._unwritten = self._unwritten[len(held) :]
        self._unwritten_bytes = sum(len(e) for _, e in self._unwritten)
        return settled

    async def _drain_group(self, path: Path, transport: LineageTransport, timeout: float) -> int:
        entries = self._read(path)
        settled = await self._settle(entries, transport, timeout)
        if settled < len(entries):
            return 0
        await asyncio.to_thread(path.unlink)
        self.depth = max(0, self.depth - len(entries))
        return settled

    async def _settle(
        self, entries: list[tuple[str, bytes]], transport: LineageTransport, timeout: float
    ) -> int:
        """Log each entry (or its refusal, or its amendment); raises PeerError if lineage fails."""
        settled = 0
        sendable = []
        for decision_id, entry in entries:
            # Lineage's own rules, checked here: an entry they refuse is never
            # sent, it would be refused on every drain.
            problem = entry_problem(entry, decision_id)
            if problem is None:
                sendable.append((decision_id, entry))
            else:
                await self._refuse(transport, decision_id, entry, problem, timeout)
                settled += 1
        for chunk in _chunks(sendable):
            responses = await transport.append_batch(
                [lineage_pb2.AppendRequest(entry=e, decision_id=d) for d, e in chunk],
                timeout=timeout,
            )
            if len(responses) != len(chunk):
                raise PeerUnavailable("lineage answered a spool batch with the wrong count")
            for (decision_id, entry), response in zip(chunk, responses, strict=True):
                if not response.error:
                    check_receipt(entry, response)
                    settled += 1
                    continue
                logged = await transport.get_entry(decision_id, timeout=timeout)
                if logged is None:
                    # AppendBatch fails the whole call for anything passing (an
                    # unreachable database, a restart); an error for one entry
                    # that is not logged is lineage's rules refusing it, for good.
                    await self._refuse(transport, decision_id, entry, response.error, timeout)
                elif logged != entry and not refuses(logged, entry):
                    await self._amend(transport, decision_id, entry, timeout)
                settled += 1
        return settled

    async def _refuse(
        self,
        transport: LineageTransport,
        decision_id: str,
        entry: bytes,
        reason: str,
        timeout: float,
    ) -> None:
        """Move a refused entry aside and log a refusal record in its place.

        1. The entry and the reason are written to `quarantine/` (durable)
           before anything else: the log will only hold their hash.
        2. The refusal record takes the entry's decision id (so a query for
           the decision finds it) unless another entry holds that id; it is
           derived, not random, so a drain that was interrupted finds the
           record it already appended instead of appending a second one.
        """
        digest = sha256(entry).hexdigest()
        logger.error(
            "lineage refuses a spooled entry; moved aside: %s",
            reason,
            extra={"decision_id": decision_id, "entry_sha256": digest},
        )
        # 1. Aside, durably.
        aside = canonical_json(
            {
                "decision_id": decision_id.encode("utf-8", "backslashreplace").decode(),
                "entry_sha256": digest,
                "reason": reason.encode("utf-8", "backslashreplace").decode(),
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            }
        )
        await asyncio.to_thread(self._quarantine_write, digest, aside + b"\n" + entry)
        # 2. The record of the refusal, under the entry's id when that is free.
        record_id = refusal_id(decision_id, entry)
        holder = await transport.get_entry(record_id, timeout=timeout)
        if holder is not None:
            if refuses(holder, entry):
                return  # appended by an earlier, interrupted drain
            record_id = derived_refusal_id(entry)
        record, _ = refusal_record(record_id, entry, reason, time=datetime.now(UTC))
        [response] = await transport.append_batch(
            [lineage_pb2.AppendRequest(entry=record, decision_id=record_id)], timeout=timeout
        )
        if response.error:
            logged = await transport.get_entry(record_id, timeout=timeout)
            if logged is not None and refuses(logged, entry):
                return
            raise PeerUnavailable(f"lineage refused the record of a refusal: {response.error}")
        check_receipt(record, response)

    def _quarantine_write(self, digest: str, data: bytes) -> None:
        self.quarantine.mkdir(exist_ok=True, mode=0o700)
        durable_write(self.quarantine / f"{digest}.refused", data)

    def quarantined(self) -> list[Path]:
        """Entries lineage refused, moved aside: a JSON line (id, hash, reason), then the entry."""
        return sorted(self.quarantine.glob("*.refused"))

    @staticmethod
    async def _amend(
        transport: LineageTransport, decision_id: str, entry: bytes, timeout: float
    ) -> None:
        answered = json.loads(entry)
        # Derived, not random: an amendment appended before a drain was
        # interrupted is a duplicate the next time, not a second amendment.
        amendment_id = str(uuid.uuid5(_AMENDMENTS, decision_id + sha256(entry).hexdigest()))
        amendment = canonical_json(
            {
                "v": 1,
                "type": "amendment",
                "decision_id": amendment_id,
                "amends": decision_id,
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "decision": answered.get("decision"),
                "reason": answered.get("reason"),
                "failed_checks": answered.get("failed_checks"),
            }
        )
        [response] = await transport.append_batch(
            [lineage_pb2.AppendRequest(entry=amendment, decision_id=amendment_id)], timeout=timeout
        )
        if response.error and await transport.get_entry(amendment_id, timeout=timeout) is not None:
            return  # appended by an earlier, interrupted drain
        check_receipt(amendment, response)

    async def run(self, transport: LineageTransport, *, interval_s: float) -> None:
        """Drain forever, every `interval_s` seconds."""
        while True:
            if self._unwritten or self.pending():
                try:
                    drained = await self.drain(transport)
                    if drained:
                        logger.info("spool drained", extra={"entries": drained})
                except (PeerError, OSError) as exc:
                    logger.info("spool waits for lineage", extra={"error": str(exc)})
                except Exception:
                    # The drainer must outlive any one bad drain: it is the
                    # only way spooled denies reach the log.
                    logger.exception("spool drain failed; retrying")
            await asyncio.sleep(interval_s)
