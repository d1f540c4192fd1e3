"""Group commit: appends become contiguous leaves under one signed checkpoint per batch.

`Sequencer.append` queues a group of checked entries (one RPC's worth) and
waits. One batch at a time (the shared core in `govmesh.runtime.batching`
with a single in-flight slot), the committer takes every queued group, up to
`max_batch` entries, and commits them in one transaction:

1. Lock the counter row; read the committed size and root.
2. If another writer moved the head (or a commit's outcome was unknown),
   reload the compact range from stored hashes and re-establish trust: it
   must hash to the head's root, the stored checkpoint of that size must carry
   the log's valid signature over that root, and it must be consistent with
   the last tree this process trusted. Otherwise nothing is signed.
3. Refuse decision ids already logged (or repeated in the batch).
4. Give each remaining entry the next index, hash it into the compact range
   and record the perfect subtrees it completes.
5. Sign one checkpoint for the new tree: it extends the trusted tree by
   construction, so the log never signs two inconsistent checkpoints.
6. Insert rows and checkpoint, advance the counter row, commit.
7. Record the new tree in the state file (floor.py) as the floor, durably.
8. Only then hand out receipts.

Steps 7 and 8 of one batch run beside steps 1 to 6 of the next: the next
transaction does not wait for this batch's fdatasync, which on a busy disk
takes as long as the commit itself. State-file writes stay one at a time,
in order, and each records the newest committed tree, so a batch's receipts
leave only once a tree that holds it is durable in the state file.

At start the stored head is verified as in step 2, and it must also extend
the floor, the newest tree recorded in the state file: a database that went
back in time (a restored backup, a rolled-back owner) is refused, never
signed over.

A failed transaction leaves nothing behind: its checkpoint is discarded
unseen, and the next batch starts from the head again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from govmesh.lineage import merkle
from govmesh.lineage.core import Entry, EntryRejected, Receipt
from govmesh.lineage.floor import SignedTree, StateFile
from govmesh.lineage.notes import Checkpoint, NoteError, NoteSigner, open_checkpoint
from govmesh.lineage.store import AppendOutcome, LogCorrupted, LogStore, LogTransaction
from govmesh.runtime.batching import BatchQueue, Limit, Pending, fail
from govmesh.runtime.errors import Unavailable

if TYPE_CHECKING:
    from govmesh.lineage.metrics import LineageMetrics

logger = logging.getLogger(__name__)


class SequencerStopped(Unavailable):
    """The sequencer is closed; nothing more is appended."""


@dataclass(frozen=True)
class TrustedTree:
    """A committed tree this process verified or built: its compact range and checkpoint."""

    frontier: merkle.Frontier
    root: bytes
    checkpoint: str

    @property
    def size(self) -> int:
        return self.frontier.size


@dataclass
class _Plan:
    """A batch laid out on top of a trusted tree: rows to insert and the new root."""

    frontier: merkle.Frontier
    root: bytes
    rows: list[tuple[Any, ...]]
    placed: list[int | EntryRejected]


#: One queued append: a group of entries (one RPC's worth) and its caller's answer.
_Group = Pending[Sequence[Entry], list[Receipt | EntryRejected]]


class Sequencer:
    """Batches appends into transactions and signs one checkpoint per batch."""

    def __init__(
        self,
        *,
        store: LogStore,
        signer: NoteSigner,
        origin: str,
        state_file: StateFile,
        max_batch: int = 2048,
        linger_s: float = 0.0,
        clock: Callable[[], float] = time.time,
        metrics: LineageMetrics | None = None,
    ) -> None:
        self._store = store
        self._signer = signer
        self._origin = origin
        self._state_file = state_file
        self._clock = clock
        # One batch at a time: each commit extends the tree the one before built.
        self._batches: BatchQueue[Sequence[Entry], list[Receipt | EntryRejected]] = BatchQueue(
            name="lineage",
            flush=self._commit_groups,
            error=SequencerStopped,
            limits=[Limit(max_batch, len)],
            linger_s=linger_s,
            max_in_flight=1,
        )
        self._trusted: TrustedTree | None = None
        self._listeners: list[Callable[[int], None]] = []
        self._publishing: set[asyncio.Task[None]] = set()
        self._state_file_lock = asyncio.Lock()
        self._metrics = metrics
        self.batches = 0
        #: When (clock time) the newest trusted tree was committed here or verified at start.
        self.trusted_at = clock()

    @property
    def trusted(self) -> TrustedTree | None:
        """The newest tree this process committed or verified."""
        return self._trusted

    def on_commit(self, listener: Callable[[int], None]) -> None:
        """Call `listener(new_size)` after every commit."""
        self._listeners.append(listener)

    async def start(self) -> None:
        """Verify the stored log head against the floor in the state file, then start committing."""
        floor = await asyncio.to_thread(self._state_file.open)
        try:
            await self._start(floor)
        except BaseException:
            self._state_file.close()
            raise
        self._batches.start()

    async def _start(self, floor: SignedTree | None) -> None:
        if floor is not None and floor.origin != self._origin:
            raise LogCorrupted(
                f"the state file {self._state_file.path} belongs to the log {floor.origin!r}, "
                f"not {self._origin!r}"
            )
        async with self._store.transaction() as tx:
            size, root = await tx.lock_head()
            if floor is not None and size < floor.size:
                raise LogCorrupted(
                    f"the database went back in time: it holds {size} entries, but this log "
                    f"signed a checkpoint of {floor.size} (recorded in {self._state_file.path})"
                )
            # Verified as an extension of the floor, like any moved head.
            previous = None if floor is None else (floor.size, floor.root)
            self._trusted = await self._establish(tx, size, root, previous)
        await self._record()

    async def close(self, grace: float = 5.0) -> None:
        """Stop taking appends, let queued ones commit for up to `grace` seconds, then stop."""
        loop = asyncio.get_running_loop()
        until = loop.time() + grace
        await self._batches.stop(grace)
        # Committed batches still owe their state-file write and receipts.
        if self._publishing:
            await asyncio.wait(self._publishing, timeout=max(0.0, until - loop.time()))
        for task in list(self._publishing):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._state_file.close()

    async def append(self, entries: Sequence[Entry]) -> list[Receipt | EntryRejected]:
        """Commit `entries`; in order, a receipt for each one or why it was refused."""
        return await self._batches.submit(entries)

    async def _commit_groups(self, batch: list[_Group], slot: int) -> None:
        entries = [e for g in batch for e in g.item]
        started = time.perf_counter()
        try:
            results = await self._commit(entries)
        except Exception as exc:
            self._fail(batch, exc)
            return
        self.batches += 1
        self.trusted_at = self._clock()
        if self._metrics is not None:
            self._metrics.commit_seconds.observe(time.perf_counter() - started)
            self._metrics.commit_entries.observe(len(entries))
        # 7 and 8 beside the next batch's commit.
        task = asyncio.create_task(self._publish(batch, results))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish(self, batch: list[_Group], results: list[Receipt | EntryRejected]) -> None:
        try:
            # 7. Durable in the state file before any receipt leaves: the
            # newest committed tree, which holds this batch (writes in order).
            async with self._state_file_lock:
                size = await self._record()
        except asyncio.CancelledError:
            self._fail(batch, SequencerStopped("lineage is stopping"))
            raise
        except Exception as exc:
            self._fail(batch, exc)
            return
        # 8. Receipts.
        offset = 0
        for group in batch:
            part = results[offset : offset + len(group.item)]
            offset += len(group.item)
            if not group.future.done():
                group.future.set_result(part)
        if size is not None:
            for listener in self._listeners:
                listener(size)

    @staticmethod
    def _fail(batch: list[_Group], exc: BaseException) -> None:
        if isinstance(exc, LogCorrupted):
            logger.error("lineage refuses to sign: %s", exc)
        elif not isinstance(exc, SequencerStopped):
            logger.warning("lineage batch failed", extra={"error": repr(exc)})
        fail(batch, exc)

    async def _commit(self, entries: Sequence[Entry]) -> list[Receipt | EntryRejected]:
        now = datetime.fromtimestamp(self._clock(), UTC)
        trusted = self._trusted
        if trusted is not None:
            # The common case, in one round trip: the head is still the tree this
            # process trusts and no entry is a duplicate. The database checks both
            # under the counter row's lock and answers otherwise without writing;
            # then the checkpoint signed here is dropped unseen and the batch takes
            # the locked path below.
            plan = self._plan(trusted, entries, set(), now)
            if plan.rows:
                note = self._sign(plan)
                outcome = await self._store.append_if_head(
                    trusted.size, trusted.root, plan.rows, plan.frontier.size, plan.root, note
                )
                if outcome is AppendOutcome.APPENDED:
                    return self._committed(plan, note)
        return await self._commit_locked(entries, now)

    async def _commit_locked(
        self, entries: Sequence[Entry], now: datetime
    ) -> list[Receipt | EntryRejected]:
        async with self._store.transaction() as tx:
            # 1. The counter row, locked until commit.
            size, root = await tx.lock_head()
            # 2. Trust the head only as this process left it, or after re-verifying it.
            trusted = self._trusted
            if trusted is None or trusted.size != size or trusted.root != root:
                previous = None if trusted is None else (trusted.size, trusted.root)
                trusted = await self._establish(tx, size, root, previous)
                self._trusted = trusted
            # 3. Duplicates are refused, in the log and within the batch.
            taken = await tx.taken([e.decision_id for e in entries])
            # 4. Indices and stored subtree hashes.
            plan = self._plan(trusted, entries, taken, now)
            if not plan.rows:
                return [p for p in plan.placed if isinstance(p, EntryRejected)]
            # 5. One checkpoint for the new tree, which extends the trusted one.
            note = self._sign(plan)
            # 6. Rows, checkpoint and counter in the same transaction.
            await tx.insert_entries(plan.rows)
            await tx.publish(plan.frontier.size, plan.root, note)
        # 7. Committed: receipts now.
        return self._committed(plan, note)

    @staticmethod
    def _plan(
        trusted: TrustedTree, entries: Sequence[Entry], taken: set[uuid.UUID], now: datetime
    ) -> _Plan:
        frontier = trusted.frontier.copy()
        rows = []
        placed: list[int | EntryRejected] = []
        for e in entries:
            if e.decision_id in taken:
                placed.append(EntryRejected(f"decision {e.decision_id} is already logged"))
                continue
            taken.add(e.decision_id)
            index = frontier.size
            completed = frontier.append(e.leaf_hash)
            rows.append(
                (
                    index,
                    e.decision_id,
                    e.data,
                    e.leaf_hash,
                    b"".join(completed),
                    now,
                    e.kind,
                    e.time,
                    e.subject,
                    e.trace_id,
                )
            )
            placed.append(index)
        return _Plan(frontier, frontier.root(), rows, placed)

    def _sign(self, plan: _Plan) -> str:
        return self._signer.sign(Checkpoint(self._origin, plan.frontier.size, plan.root).text())

    def _committed(self, plan: _Plan, note: str) -> list[Receipt | EntryRejected]:
        self._trusted = TrustedTree(plan.frontier, plan.root, note)
        leaves = {r[0]: r[3] for r in plan.rows}
        size = plan.frontier.size
        return [
            p
            if isinstance(p, EntryRejected)
            else Receipt(index=p, leaf_hash=leaves[p], tree_size=size, checkpoint=note)
            for p in plan.placed
        ]

    async def _record(self) -> int | None:
        """Record the newest committed tree durably as the floor; returns its size."""
        trusted = self._trusted
        if trusted is None:
            return None
        tree = SignedTree(self._origin, trusted.size, trusted.root)
        await asyncio.to_thread(self._state_file.record, tree)
        return trusted.size

    async def _establish(
        self, tx: LogTransaction, size: int, root: bytes, previous: tuple[int, bytes] | None
    ) -> TrustedTree:
        """Verify the stored head of `size` and `root`, which must extend `previous`
        (size, root) when given; LogCorrupted if it cannot be trusted."""
        old_size, old_root = previous or (0, merkle.EMPTY_ROOT)
        if size < old_size:
            raise LogCorrupted(f"the log shrank from {old_size} to {size} entries")
        if size == old_size and previous is not None and root != old_root:
            raise LogCorrupted(f"the tree of size {size} has another root than the one trusted")
        if size == 0:
            if root != merkle.EMPTY_ROOT:
                raise LogCorrupted("an empty log with a root hash")
            return TrustedTree(merkle.Frontier(), root, "")
        ranges = merkle.frontier_ranges(size)
        perfect = await tx.perfect_hashes(ranges)
        frontier = merkle.Frontier.from_parts(size, [perfect[r] for r in ranges])
        if frontier.root() != root:
            raise LogCorrupted(f"stored subtree hashes do not hash to the head at size {size}")
        stored = await tx.checkpoint(size)
        if stored is None:
            raise LogCorrupted(f"no checkpoint for the head at size {size}")
        try:
            signed = open_checkpoint(stored.note, self._signer.verifier, origin=self._origin)
        except NoteError as exc:
            raise LogCorrupted(f"the checkpoint at size {size} is not ours: {exc}") from None
        if signed.size != size or signed.root != root:
            raise LogCorrupted(f"the checkpoint at size {size} does not match the head")
        if 0 < old_size < size:
            proof = await tx.tree_hashes(merkle.consistency_ranges(old_size, size))
            try:
                merkle.verify_consistency(old_size, size, old_root, root, proof)
            except merkle.ProofError as exc:
                raise LogCorrupted(
                    f"the log at size {size} is not consistent with size {old_size}: {exc}"
                ) from None
        return TrustedTree(frontier, root, stored.note)
