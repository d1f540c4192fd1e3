"""The log in Postgres: one transaction per batch, contiguous indices."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from govmesh.lineage.core import Entry, EntryRejected, Receipt


class LineageStore:
    """Appends batches of entries and reads them back."""

    def __init__(self, *, engine: AsyncEngine) -> None:
        self._engine = engine

    async def append(self, entries: Sequence[Entry]) -> list[Receipt | EntryRejected]:
        """Commit `entries` in one transaction; refuse duplicates, keep the rest.

        Returns, in order, a receipt for each committed entry or the reason it
        was refused. Receipts exist only after the commit.
        """
        results: list[Receipt | EntryRejected] = []
        async with self._engine.begin() as conn:
            head = await conn.execute(text("SELECT size FROM lineage_head WHERE id = 1 FOR UPDATE"))
            size = int(head.scalar_one())
            ids = [e.decision_id for e in entries]
            known = await conn.execute(
                text("SELECT decision_id FROM lineage_entries WHERE decision_id = ANY(:ids)"),
                {"ids": ids},
            )
            taken = {row[0] for row in known}
            rows: list[dict[str, object]] = []
            pending: list[tuple[int, Entry]] = []
            for entry in entries:
                if entry.decision_id in taken:
                    results.append(EntryRejected(f"decision {entry.decision_id} already logged"))
                    continue
                taken.add(entry.decision_id)
                index = size + len(rows)
                rows.append(
                    {
                        "idx": index,
                        "decision_id": entry.decision_id,
                        "entry": entry.data,
                        "leaf_hash": entry.leaf_hash,
                    }
                )
                pending.append((len(results), entry))
                results.append(EntryRejected("pending"))
            if rows:
                await conn.execute(
                    text(
                        "INSERT INTO lineage_entries (idx, decision_id, entry, leaf_hash) "
                        "VALUES (:idx, :decision_id, :entry, :leaf_hash)"
                    ),
                    rows,
                )
                await conn.execute(
                    text("UPDATE lineage_head SET size = :size WHERE id = 1"),
                    {"size": size + len(rows)},
                )
        tree_size = size + len(rows)
        for offset, (position, entry) in enumerate(pending):
            results[position] = Receipt(
                index=size + offset, leaf_hash=entry.leaf_hash, tree_size=tree_size, checkpoint=""
            )
        return results

    async def get(self, decision_id: str) -> tuple[int, bytes, bytes] | None:
        """(index, entry, leaf hash) of a decision, or None."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT idx, entry, leaf_hash FROM lineage_entries "
                        "WHERE decision_id = CAST(:id AS uuid)"
                    ),
                    {"id": decision_id},
                )
            ).first()
        return None if row is None else (int(row[0]), bytes(row[1]), bytes(row[2]))

    async def size(self) -> int:
        """The number of committed entries."""
        async with self._engine.connect() as conn:
            return int((await conn.execute(text("SELECT size FROM lineage_head"))).scalar_one())
