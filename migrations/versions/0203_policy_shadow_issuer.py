"""Policy: shadow disagreements keep the issuer of their principal.

A subject is one agent only under its issuer (DESIGN.md section 5), and
policy evaluates the principal as a member of its Issuer: a disagreement
recorded without the issuer could not be told apart from the same subject
of another issuer, nor replayed. Rows recorded before keep an empty issuer.

Revision ID: 0203_policy_shadow_issuer
Revises: 0202_policy_triggers_always
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0203_policy_shadow_issuer"
down_revision: str | Sequence[str] | None = "0202_policy_triggers_always"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE policy_shadow_disagreements ADD COLUMN issuer text NOT NULL DEFAULT ''")


def downgrade() -> None:
    op.execute("ALTER TABLE policy_shadow_disagreements DROP COLUMN issuer")
