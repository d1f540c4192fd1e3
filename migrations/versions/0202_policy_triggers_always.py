"""Policy: the append-only triggers fire in every session.

A trigger that is merely ENABLEd is skipped by sessions that set
session_replication_role = replica (logical replication, some restore tools),
which could then delete the newest epoch and roll enforcement back. ENABLE
ALWAYS makes policy_bundles and policy_epochs append-only for those sessions
too, as the lineage tables are. Only the table owner or a superuser can still
disable a trigger outright; each replica's record of the newest epoch it has
seen (GOVMESH_POLICY_STATE_FILE) covers that.

Revision ID: 0202_policy_triggers_always
Revises: 0201_policy_shadow_context
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0202_policy_triggers_always"
down_revision: str | Sequence[str] | None = "0201_policy_shadow_context"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TRIGGERS = tuple(
    (table, f"{table}_{kind}")
    for table in ("policy_bundles", "policy_epochs")
    for kind in ("append_only", "no_truncate")
)


def upgrade() -> None:
    for table, trigger in _TRIGGERS:
        op.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {trigger}")


def downgrade() -> None:
    for table, trigger in _TRIGGERS:
        op.execute(f"ALTER TABLE {table} ENABLE TRIGGER {trigger}")
