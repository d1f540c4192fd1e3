"""Lineage entries: what the log accepts, stores and hashes. Pure logic, no I/O.

An entry is one decision (or an amendment of one, or the record of a
refused entry) as RFC 8785 canonical JSON; the rules are stated once, in
`govmesh.artifacts.entries`. The log stores exactly the bytes it was given
and hashes exactly those bytes (RFC 9162 leaf hash).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from govmesh.artifacts.entries import MAX_ENTRY_BYTES, EntryRejected, is_canonical, read_entry
from govmesh.lineage.merkle import leaf_hash

__all__ = [
    "MAX_ENTRY_BYTES",
    "Entry",
    "EntryRejected",
    "Receipt",
    "check_entry",
    "is_canonical",
    "leaf_hash",
]


class Entry(NamedTuple):
    """A checked entry: `data` is exactly what is stored and hashed.

    The other fields are read from `data` for the query indexes; they are
    never trusted over the bytes (the auditor re-reads the bytes).
    """

    decision_id: uuid.UUID
    data: bytes
    leaf_hash: bytes
    kind: str | None = None
    time: datetime | None = None
    subject: str | None = None
    trace_id: str | None = None
    engine_id: str | None = None
    engine_seq: int | None = None
    amends: uuid.UUID | None = None


@dataclass(frozen=True)
class Receipt:
    """Where a committed entry sits, and the signed checkpoint that commits to it."""

    index: int
    leaf_hash: bytes
    tree_size: int
    checkpoint: str


def check_entry(data: bytes, decision_id: str) -> Entry:
    """Accept only entries the shared rules accept (`govmesh.artifacts.entries.read_entry`).

    The engine checks its entries with the same rules before sending them,
    so an entry refused here is one it could not have built.
    """
    fields = read_entry(data, decision_id)
    return Entry(
        decision_id=fields.decision_id,
        data=data,
        leaf_hash=leaf_hash(data),
        kind=fields.kind,
        time=fields.time,
        subject=fields.subject,
        trace_id=fields.trace_id,
        engine_id=fields.engine_id,
        engine_seq=fields.engine_seq,
        amends=fields.amends,
    )
