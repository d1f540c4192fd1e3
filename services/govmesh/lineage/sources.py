"""Where the auditor reads a log: straight from Postgres, or through the lineage service."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence

import asyncpg

from govmesh.lineage.auditor import SourceCheckpoint, SourceEntry
from govmesh.lineage.client import LineageClient, LineageError
from govmesh.lineage.core import EntryRejected, is_canonical
from govmesh.lineage.merkle import ProofError
from govmesh.lineage.store import SESSION_SETTINGS
from govmesh.runtime.db import libpq_database_url

PAGE = 5000


def _kind(entry: bytes) -> str | None:
    try:
        _, document = is_canonical(entry)
    except EntryRejected:
        return None
    kind = document.get("type") if isinstance(document, dict) else None
    return kind if isinstance(kind, str) else None


class DatabaseSource:
    """The lineage tables, read with one connection (as the superuser an auditor may be)."""

    def __init__(self, conn: asyncpg.Connection, description: str) -> None:
        self._conn = conn
        self.description = description

    @classmethod
    async def connect(cls, url: str) -> DatabaseSource:
        conn = await asyncpg.connect(libpq_database_url(url), server_settings=SESSION_SETTINGS)
        return cls(conn, "database")

    async def close(self) -> None:
        await self._conn.close()

    async def checkpoints(self) -> AsyncIterator[list[SourceCheckpoint]]:
        after = -1
        while True:
            rows = await self._conn.fetch(
                "SELECT c.tree_size, c.root_hash, c.note, "
                "  coalesce(array_agg(s.line ORDER BY s.created_at, s.line) "
                "           FILTER (WHERE s.line IS NOT NULL), '{}') AS lines "
                "FROM lineage_checkpoints c LEFT JOIN lineage_cosignatures s USING (tree_size) "
                "WHERE c.tree_size > $1 GROUP BY c.tree_size ORDER BY c.tree_size LIMIT $2",
                after,
                PAGE,
            )
            if not rows:
                return
            yield [
                SourceCheckpoint(
                    tree_size=r["tree_size"],
                    note=r["note"],
                    cosignatures=tuple(r["lines"]),
                    root_hash=bytes(r["root_hash"]),
                )
                for r in rows
            ]
            after = rows[-1]["tree_size"]

    async def entries(self) -> AsyncIterator[list[SourceEntry]]:
        after = -1
        while True:
            # Ordered by index, as stored; duplicates of an index cannot exist (primary key).
            rows = await self._conn.fetch(
                "SELECT idx, decision_id, entry, leaf_hash, nodes, kind, decided_at, subject, "
                "trace_id FROM lineage_entries WHERE idx > $1 ORDER BY idx LIMIT $2",
                after,
                PAGE,
            )
            if not rows:
                return
            yield [
                SourceEntry(
                    index=r["idx"],
                    decision_id=str(r["decision_id"]),
                    entry=bytes(r["entry"]),
                    leaf_hash=bytes(r["leaf_hash"]),
                    nodes=bytes(r["nodes"]),
                    kind=r["kind"],
                    decided_at=r["decided_at"],
                    subject=r["subject"],
                    trace_id=r["trace_id"],
                    has_columns=True,
                )
                for r in rows
            ]
            after = rows[-1]["idx"]

    async def locate(self, decision_ids: Sequence[str]) -> dict[str, tuple[int, str | None]]:
        ids = []
        for text in decision_ids:
            try:
                ids.append(uuid.UUID(text))
            except ValueError:
                continue
        rows = await self._conn.fetch(
            "SELECT decision_id, idx, entry FROM lineage_entries WHERE decision_id = ANY($1)", ids
        )
        return {str(r["decision_id"]): (r["idx"], _kind(bytes(r["entry"]))) for r in rows}

    async def consistency_proof(self, first: int, second: int) -> list[bytes] | None:
        # Every stored subtree hash is compared with its recomputation already.
        return None

    async def head(self) -> tuple[int, bytes] | None:
        row = await self._conn.fetchrow("SELECT size, root_hash FROM lineage_head WHERE id = 1")
        return None if row is None else (int(row["size"]), bytes(row["root_hash"]))


class ServiceSource:
    """The log as the lineage service serves it, proofs included."""

    def __init__(self, client: LineageClient, description: str) -> None:
        self._client = client
        self.description = description

    async def checkpoints(self) -> AsyncIterator[list[SourceCheckpoint]]:
        async for page in self._client.list_checkpoints():
            yield [
                SourceCheckpoint(
                    tree_size=c.tree_size,
                    note=c.checkpoint,
                    cosignatures=tuple(c.cosignatures),
                    root_hash=c.root_hash,
                )
                for c in page.checkpoints
            ]

    async def entries(self) -> AsyncIterator[list[SourceEntry]]:
        async for page in self._client.list_entries(page_size=PAGE):
            yield [
                SourceEntry(
                    index=e.index,
                    decision_id=e.decision_id,
                    entry=e.entry,
                    leaf_hash=e.leaf_hash,
                )
                for e in page.entries
            ]

    async def locate(self, decision_ids: Sequence[str]) -> dict[str, tuple[int, str | None]]:
        found: dict[str, tuple[int, str | None]] = {}
        for decision_id in decision_ids:
            try:
                answer = await self._client.entry(decision_id)
            except LineageError:
                continue
            found[decision_id] = (answer.index, _kind(answer.entry))
        return found

    async def consistency_proof(self, first: int, second: int) -> list[bytes] | None:
        try:
            answer = await self._client.consistency_proof(first, second)
        except LineageError as exc:
            raise ProofError(f"the service gave no proof: {exc}") from None
        return list(answer.hashes)

    async def head(self) -> tuple[int, bytes] | None:
        return None
