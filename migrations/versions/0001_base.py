"""Base revision: every service's schema branches from here.

Each service owns one Alembic branch (branch label = the service name), so the
schemas of verification, policy and lineage evolve independently and
`govmesh db upgrade` applies every head.

Revision ID: 0001_base
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0001_base"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
