"""Lineage: the append-only decision log.

Revision ID: 0300_lineage
Revises: 0001_base
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0300_lineage"
down_revision: str | Sequence[str] | None = "0001_base"
branch_labels: str | Sequence[str] | None = ("lineage",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE lineage_entries (
            idx         bigint PRIMARY KEY CHECK (idx >= 0),
            decision_id uuid   NOT NULL UNIQUE,
            entry       bytea  NOT NULL,
            leaf_hash   bytea  NOT NULL CHECK (length(leaf_hash) = 32),
            created_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    # The next index lives in one row, locked by every append: indices stay
    # contiguous across crashes and concurrent writers (a sequence would leave gaps).
    op.execute(
        """
        CREATE TABLE lineage_head (
            id   smallint PRIMARY KEY CHECK (id = 1),
            size bigint NOT NULL CHECK (size >= 0)
        )
        """
    )
    op.execute("INSERT INTO lineage_head (id, size) VALUES (1, 0)")


def downgrade() -> None:
    op.execute("DROP TABLE lineage_head")
    op.execute("DROP TABLE lineage_entries")
