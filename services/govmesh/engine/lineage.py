"""Recording decisions: batched appends to lineage, and the durable deny spool."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Protocol

from govmesh.artifacts.canonical import canonical_json
from govmesh.engine.batching import MAX_BATCH_BYTES, Batcher
from govmesh.engine.core import PeerError, PeerUnavailable
from govmesh.lineage.core import leaf_hash
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
    if response.error or not response.HasField("receipt"):
        raise PeerUnavailable(f"lineage refused the entry: {response.error or 'no receipt'}")
    receipt = response.receipt
    if receipt.leaf_hash != leaf_hash(entry) or receipt.tree_size <= receipt.index:
        raise PeerUnavailable("lineage answered with a receipt for something else")
    return receipt


class BatchingLineage:
    """Appends through AppendBatch calls shared by concurrent decisions.

    Each caller gets its own receipt, checked against the bytes it asked to
    append.
    """

    def __init__(
        self,
        *,
        transport: LineageTransport,
        max_batch: int = 256,
        linger: float = 0.0,
        max_in_flight: int = 8,
    ) -> None:
        self._batcher: Batcher[lineage_pb2.AppendRequest, lineage_pb2.AppendResponse] = Batcher(
            name="lineage",
            send=lambda requests, timeout: transport.append_batch(requests, timeout=timeout),
            size=lineage_pb2.AppendRequest.ByteSize,
            max_batch=max_batch,
            linger=linger,
            max_in_flight=max_in_flight,
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
    JSON holds no raw newline), written to a temporary name, fsynced and
    renamed, so a crash leaves a whole group or none of it. The writing runs
    in a worker thread: an overloaded engine that denies a lot never stalls
    its event loop on fsync. Groups drain in the order they were written.
    """

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._waiting: list[tuple[bytes, str, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

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
                for *_, future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for *_, future in group:
                if not future.done():
                    future.set_result(None)
            logger.warning("denies spooled", extra={"entries": len(group)})

    def _write(self, group: list[tuple[bytes, str]]) -> None:
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.spool"
        tmp = self._dir / (name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"".join(d.encode() + b" " + e + b"\n" for e, d in group))
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.rename(self._dir / name)
        dir_fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def flush(self) -> None:
        """Wait until every deny put so far is on disk (or failed)."""
        while self._writer is not None and not self._writer.done():
            await asyncio.wait({self._writer})

    def pending(self) -> list[Path]:
        """Spooled groups, oldest first."""
        return sorted(self._dir.glob("*.spool"))

    @staticmethod
    def _read(path: Path) -> list[tuple[str, bytes]]:
        entries = []
        for line in path.read_bytes().splitlines():
            decision_id, _, entry = line.partition(b" ")
            entries.append((decision_id.decode(), entry))
        return entries

    async def drain(self, transport: LineageTransport, *, timeout: float = 5.0) -> int:
        """Append every spooled entry; returns how many left the spool.

        A group leaves the spool once every entry in it is logged. An entry
        already logged with the same bytes counts as logged (a drain that was
        interrupted repeats safely). An entry whose decision id is logged with
        other bytes (an ALLOW committed after the engine had given up on it
        and answered DENY) is recorded as an amendment naming that decision.
        A group that cannot drain now does not hold back the groups after it;
        raises the last error when nothing drained at all.
        """
        drained = 0
        failure: PeerError | None = None
        for path in self.pending():
            try:
                drained += await self._drain_group(path, transport, timeout)
            except PeerError as exc:
                failure = exc
                logger.warning("spool group waits", extra={"group": path.name, "error": str(exc)})
        if failure is not None and not drained:
            raise failure
        return drained

    async def _drain_group(self, path: Path, transport: LineageTransport, timeout: float) -> int:
        entries = self._read(path)
        settled = 0
        for chunk in _chunks(entries):
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
                    logger.error(
                        "spooled deny refused",
                        extra={"decision_id": decision_id, "error": response.error},
                    )
                    continue
                if logged != entry:
                    await self._amend(transport, decision_id, entry, timeout)
                settled += 1
        if settled < len(entries):
            return 0
        await asyncio.to_thread(path.unlink)
        return settled

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

    async def run(self, transport: LineageTransport, *, interval: float) -> None:
        """Drain forever, every `interval` seconds."""
        while True:
            if self.pending():
                try:
                    drained = await self.drain(transport)
                    if drained:
                        logger.info("spool drained", extra={"entries": drained})
                except (PeerError, OSError) as exc:
                    logger.info("spool waits for lineage", extra={"error": str(exc)})
            await asyncio.sleep(interval)
