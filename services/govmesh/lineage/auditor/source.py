"""What the auditor reads a log through: a source of checkpoints and entries."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class SourceCheckpoint:
    """A checkpoint as a source holds it."""

    tree_size: int
    note: str
    cosignatures: tuple[str, ...] = ()
    root_hash: bytes | None = None  # the separately stored root, where there is one


@dataclass(frozen=True)
class SourceEntry:
    """An entry as a source holds it; columns a source does not have are None."""

    index: int
    decision_id: str
    entry: bytes
    leaf_hash: bytes
    nodes: bytes | None = None
    kind: str | None = None
    decided_at: datetime | None = None
    subject: str | None = None
    trace_id: str | None = None
    has_columns: bool = False


class LogSource(Protocol):
    """Where the auditor reads a log from: a database, or the lineage service."""

    description: str

    def checkpoints(self) -> AsyncIterator[list[SourceCheckpoint]]:
        """Every checkpoint, smallest size first, in pages."""
        ...

    def entries(self) -> AsyncIterator[list[SourceEntry]]:
        """Every entry in index order, in pages."""
        ...

    async def locate(self, decision_ids: Sequence[str]) -> dict[str, tuple[int, str | None]]:
        """(index, type) of each decision id that is logged."""
        ...

    async def consistency_proof(self, first: int, second: int) -> list[bytes] | None:
        """The source's consistency proof, or None when it serves none."""
        ...

    async def head(self) -> tuple[int, bytes] | None:
        """The source's own idea of (size, root), when it keeps one."""
        ...
