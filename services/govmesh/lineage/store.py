"""The log in Postgres, through asyncpg.

asyncpg is used directly rather than through SQLAlchemy: appends move
thousands of rows a second with binary COPY and array parameters, tails wait
on LISTEN/NOTIFY, and both need the driver itself.

Every stored subtree hash is addressed by the row of its last leaf
(`merkle.perfect_location`), so any proof is one `idx = ANY(...)` query over
O(log n) primary-key rows.
"""

from __future__ import annotations

import abc
import contextlib
import enum
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from govmesh.lineage import merkle
from govmesh.lineage.merkle import Range
from govmesh.runtime.db import libpq_database_url
from govmesh.runtime.errors import PreconditionFailed

#: The channel every committed batch is announced on (payload: the new size).
CHANNEL = "govmesh_lineage"

#: Prepared statements are planned for their actual parameters every time: a
#: cached generic plan cannot see that `idx >= $1` or `$2 IS NULL OR ...`
#: select a handful of rows, and would scan the whole log instead.
SESSION_SETTINGS = {"plan_cache_mode": "force_custom_plan"}

ENTRY_COLUMNS = (
    "idx",
    "decision_id",
    "entry",
    "leaf_hash",
    "nodes",
    "logged_at",
    "kind",
    "decided_at",
    "subject",
    "trace_id",
)


class LogCorrupted(PreconditionFailed):
    """The stored log contradicts itself or its signed checkpoints; nothing is signed."""


class AppendOutcome(enum.StrEnum):
    """What `lineage_append_if_head` answered (the SQL function returns this text)."""

    #: The rows and the checkpoint are committed.
    APPENDED = "appended"
    #: The head is no longer the tree given; nothing was written.
    MOVED = "moved"
    #: A decision id is already logged; nothing was written.
    TAKEN = "taken"


@dataclass(frozen=True)
class StoredEntry:
    """One row of the log as stored."""

    index: int
    decision_id: uuid.UUID
    entry: bytes
    leaf_hash: bytes
    nodes: bytes
    logged_at: datetime | None = None


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint row and the cosignature lines stored for it."""

    tree_size: int
    root_hash: bytes
    note: str
    cosignatures: tuple[str, ...] = ()

    def with_cosignatures(self) -> str:
        """The note with every stored cosignature line appended."""
        return self.note + "".join(self.cosignatures)


def _entry(row: asyncpg.Record) -> StoredEntry:
    return StoredEntry(
        index=row["idx"],
        decision_id=row["decision_id"],
        entry=bytes(row["entry"]),
        leaf_hash=bytes(row["leaf_hash"]),
        nodes=bytes(row["nodes"]),
        logged_at=row["logged_at"],
    )


class _Reads(abc.ABC):
    """Queries shared by the pool and by an open transaction."""

    @abc.abstractmethod
    def _conn(self) -> Any:
        """What the queries run on: the pool, or the transaction's connection."""

    async def perfect_hashes(self, ranges: Iterable[Range]) -> dict[Range, bytes]:
        """The stored hashes of perfect subtrees; LogCorrupted if one is missing."""
        wanted = {r: merkle.perfect_location(*r) for r in ranges}
        if not wanted:
            return {}
        rows = await self._conn().fetch(
            "SELECT idx, leaf_hash, nodes FROM lineage_entries WHERE idx = ANY($1::bigint[])",
            sorted({row for row, _ in wanted.values()}),
        )
        by_row = {r["idx"]: (bytes(r["leaf_hash"]), bytes(r["nodes"])) for r in rows}
        found: dict[Range, bytes] = {}
        for r, (row, level) in wanted.items():
            stored = by_row.get(row)
            if stored is None:
                raise LogCorrupted(f"entry {row} is missing")
            leaf, nodes = stored
            if level == 0:
                found[r] = leaf
            else:
                h = nodes[(level - 1) * 32 : level * 32]
                if len(h) != 32:
                    raise LogCorrupted(f"entry {row} lacks the hash of entries {r[0]}..{r[1] - 1}")
                found[r] = h
        return found

    async def tree_hashes(self, ranges: Sequence[Range]) -> list[bytes]:
        """The subtree hashes of `ranges` (proof order), from stored perfect subtrees."""
        perfect = await self.perfect_hashes(merkle.needed_perfect(ranges))
        return merkle.assemble(ranges, perfect)

    async def checkpoint(self, tree_size: int) -> StoredCheckpoint | None:
        """The checkpoint of exactly `tree_size`, with its cosignatures."""
        return _checkpoint(await self._conn().fetchrow(_CHECKPOINT_OF_SIZE, tree_size))


#: Checkpoint rows with their cosignature lines (constant queries, parameters only).
_CHECKPOINT_ROWS = (
    "SELECT c.tree_size, c.root_hash, c.note, "
    "coalesce(array_agg(s.line ORDER BY s.created_at, s.line) "
    "FILTER (WHERE s.line IS NOT NULL), '{}') AS lines "
    "FROM lineage_checkpoints c LEFT JOIN lineage_cosignatures s USING (tree_size) "
)
_CHECKPOINT_OF_SIZE = _CHECKPOINT_ROWS + "WHERE c.tree_size = $1 GROUP BY c.tree_size"
_NEWEST_CHECKPOINT = (
    _CHECKPOINT_ROWS  # noqa: S608 - constant fragments only
    + "WHERE c.tree_size = (SELECT max(tree_size) FROM lineage_checkpoints) GROUP BY c.tree_size"
)
_NEWEST_WITNESSED = (
    _CHECKPOINT_ROWS  # noqa: S608 - constant fragments only
    + "WHERE c.tree_size = (SELECT max(tree_size) FROM lineage_cosignatures) "
    "GROUP BY c.tree_size"
)
_NEWEST_WITNESSED_COVERING = (
    _CHECKPOINT_ROWS  # noqa: S608 - constant fragments only
    + "WHERE c.tree_size = "
    "(SELECT max(tree_size) FROM lineage_cosignatures WHERE tree_size > $1) GROUP BY c.tree_size"
)
_CHECKPOINTS_AFTER = (
    _CHECKPOINT_ROWS + "WHERE c.tree_size > $1 GROUP BY c.tree_size ORDER BY c.tree_size LIMIT $2"
)


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Return a connection to the pool as it is (asyncpg has already rolled back
    an open transaction and dropped its listeners).

    asyncpg's default reset runs `SELECT pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL` on every release: a second round trip for each
    append. The store leaves nothing for it to undo: it takes no advisory
    locks, opens no cursors, LISTENs only on connections of its own
    (`listen`) and sets its session settings only when it connects.
    """


def _checkpoint(row: asyncpg.Record | None) -> StoredCheckpoint | None:
    if row is None:
        return None
    return StoredCheckpoint(
        row["tree_size"], bytes(row["root_hash"]), row["note"], tuple(row["lines"])
    )


class LogTransaction(_Reads):
    """One append transaction, holding the counter row lock."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._c = conn

    def _conn(self) -> Any:
        return self._c

    async def lock_head(self) -> tuple[int, bytes]:
        """Lock the counter row; (size, root) of the committed tree."""
        row = await self._c.fetchrow(
            "SELECT size, root_hash FROM lineage_head WHERE id = 1 FOR UPDATE"
        )
        if row is None:
            raise LogCorrupted("the lineage counter row is missing")
        return int(row["size"]), bytes(row["root_hash"])

    async def taken(self, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Which of `ids` are already logged."""
        rows = await self._c.fetch(
            "SELECT decision_id FROM lineage_entries WHERE decision_id = ANY($1::uuid[])", ids
        )
        return {r["decision_id"] for r in rows}

    async def insert_entries(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert rows in ENTRY_COLUMNS order (binary COPY)."""
        await self._c.copy_records_to_table(
            "lineage_entries", records=rows, columns=list(ENTRY_COLUMNS)
        )

    async def publish(self, size: int, root: bytes, note: str) -> None:
        """Store the checkpoint, advance the counter row and announce the new size."""
        await self._c.execute(
            """
            WITH cp AS (
                INSERT INTO lineage_checkpoints (tree_size, root_hash, note) VALUES ($1, $2, $3)
            ), head AS (
                UPDATE lineage_head SET size = $1, root_hash = $2 WHERE id = 1 RETURNING size
            )
            SELECT pg_notify($4, size::text) FROM head
            """,
            size,
            root,
            note,
            CHANNEL,
        )


class LogStore(_Reads):
    """The lineage tables, over a pool of asyncpg connections."""

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self._pool = pool
        self._dsn = dsn

    @classmethod
    async def open(cls, url: str, *, min_size: int = 2, max_size: int = 10) -> LogStore:
        """Connect to the database at `url` (any Postgres URL form govmesh accepts)."""
        dsn = libpq_database_url(url)
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            server_settings=SESSION_SETTINGS,
            reset=_keep_session,
        )
        return cls(pool, dsn)

    async def close(self) -> None:
        await self._pool.close()

    def _conn(self) -> Any:
        return self._pool

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[LogTransaction]:
        """An append transaction; committed when the block exits cleanly."""
        async with self._pool.acquire() as conn, conn.transaction():
            yield LogTransaction(conn)

    async def append_if_head(
        self,
        size: int,
        root: bytes,
        rows: Sequence[tuple[Any, ...]],
        new_size: int,
        new_root: bytes,
        note: str,
    ) -> AppendOutcome:
        """Append `rows` and publish `note` in one statement, if the head is (size, root)
        and no row's decision id is logged; APPENDED, else why nothing was written."""
        columns = list(zip(*rows, strict=True))
        outcome: str = await self._pool.fetchval(
            "SELECT lineage_append_if_head($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,"
            " $13, $14, $15)",
            size,
            root,
            list(columns[0]),
            list(columns[1]),
            list(columns[2]),
            list(columns[3]),
            list(columns[4]),
            columns[5][0],
            list(columns[6]),
            list(columns[7]),
            list(columns[8]),
            list(columns[9]),
            new_size,
            new_root,
            note,
        )
        try:
            return AppendOutcome(outcome)
        except ValueError:
            raise LogCorrupted(f"the database answered an append with {outcome!r}") from None

    # --- reads ---------------------------------------------------------------

    async def head(self) -> tuple[int, bytes]:
        """(size, root) of the committed tree, without locking."""
        row = await self._pool.fetchrow("SELECT size, root_hash FROM lineage_head WHERE id = 1")
        if row is None:
            raise LogCorrupted("the lineage counter row is missing")
        return int(row["size"]), bytes(row["root_hash"])

    async def entry_by_decision(self, decision_id: uuid.UUID) -> StoredEntry | None:
        row = await self._pool.fetchrow(
            "SELECT idx, decision_id, entry, leaf_hash, nodes, logged_at FROM lineage_entries "
            "WHERE decision_id = $1",
            decision_id,
        )
        return None if row is None else _entry(row)

    async def entry_by_index(self, index: int) -> StoredEntry | None:
        row = await self._pool.fetchrow(
            "SELECT idx, decision_id, entry, leaf_hash, nodes, logged_at FROM lineage_entries "
            "WHERE idx = $1",
            index,
        )
        return None if row is None else _entry(row)

    async def entries(
        self, start: int, end: int | None = None, *, limit: int = 1000
    ) -> list[StoredEntry]:
        """Up to `limit` rows with start <= idx < end, in index order."""
        rows = await self._pool.fetch(
            "SELECT idx, decision_id, entry, leaf_hash, nodes, logged_at FROM lineage_entries "
            "WHERE idx >= $1 AND ($2::bigint IS NULL OR idx < $2) ORDER BY idx LIMIT $3",
            start,
            end,
            limit,
        )
        return [_entry(r) for r in rows]

    async def query(
        self,
        *,
        decision_id: uuid.UUID | None = None,
        trace_id: str | None = None,
        subject: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after: int = -1,
        limit: int = 100,
    ) -> list[StoredEntry]:
        """Entries matching every given filter, by index, after index `after`."""
        rows = await self._pool.fetch(
            "SELECT idx, decision_id, entry, leaf_hash, nodes, logged_at FROM lineage_entries "
            "WHERE idx > $1 "
            "AND ($2::uuid IS NULL OR decision_id = $2) "
            "AND ($3::text IS NULL OR trace_id = $3) "
            "AND ($4::text IS NULL OR subject = $4) "
            "AND ($5::timestamptz IS NULL OR decided_at >= $5) "
            "AND ($6::timestamptz IS NULL OR decided_at < $6) "
            "ORDER BY idx LIMIT $7",
            after,
            decision_id,
            trace_id,
            subject,
            since,
            until,
            limit,
        )
        return [_entry(r) for r in rows]

    async def latest_checkpoint(self, *, witnessed: bool = False) -> StoredCheckpoint | None:
        """The newest checkpoint (or the newest one carrying a cosignature)."""
        query = _NEWEST_WITNESSED if witnessed else _NEWEST_CHECKPOINT
        return _checkpoint(await self._pool.fetchrow(query))

    async def covering_checkpoint(self, index: int, *, witnessed: bool) -> StoredCheckpoint | None:
        """The newest checkpoint containing entry `index` (cosigned ones only if asked)."""
        if not witnessed:
            return await self.latest_checkpoint()
        return _checkpoint(await self._pool.fetchrow(_NEWEST_WITNESSED_COVERING, index))

    async def checkpoints(
        self, after_size: int = 0, *, limit: int = 1000
    ) -> list[StoredCheckpoint]:
        """Checkpoints larger than `after_size`, smallest first, with cosignatures."""
        rows = await self._pool.fetch(_CHECKPOINTS_AFTER, after_size, limit)
        return [c for c in map(_checkpoint, rows) if c is not None]

    async def add_cosignature(self, tree_size: int, witness: str, key_id: bytes, line: str) -> bool:
        """Store a cosignature line; False when that witness key already cosigned that size."""
        status = await self._pool.execute(
            "INSERT INTO lineage_cosignatures (tree_size, witness, key_id, line) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            tree_size,
            witness,
            key_id,
            line,
        )
        return bool(status == "INSERT 0 1")

    async def listen(self) -> asyncpg.Connection:
        """A dedicated connection for LISTEN (the caller adds listeners and closes it)."""
        conn: asyncpg.Connection = await asyncpg.connect(
            self._dsn, server_settings=SESSION_SETTINGS
        )
        return conn
