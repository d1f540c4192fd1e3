"""Verification: the replay store of proof nonces, shared by every replica.

A row is a proof's (key thumbprint, jti), hashed, kept until the proof can no
longer be accepted anywhere (its iat plus the proof window plus the clock
skew). The primary key makes "insert if absent" atomic across replicas; the
index on expires_at serves the background cleanup. The table is logged: a
crash must not forget which proofs were used.

Revision ID: 0100_verification
Revises: 0001_base
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0100_verification"
down_revision: str | Sequence[str] | None = "0001_base"
branch_labels: str | Sequence[str] | None = ("verification",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE verification_replay (
            proof_key  bytea       PRIMARY KEY CHECK (length(proof_key) = 32),
            expires_at timestamptz NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX verification_replay_expires_at ON verification_replay (expires_at)")


def downgrade() -> None:
    op.execute("DROP TABLE verification_replay")
