"""Policy: shadow disagreements keep their request context as JSON text.

A request context is whatever the caller sent, and jsonb refuses some of it
(a NUL character, NaN): one such request made every later write of the
shadow report fail. The context is now the text of its JSON (RFC 8785
canonical JSON when it has one), which Postgres always accepts, since JSON
escapes every control character.

Revision ID: 0201_policy_shadow_context
Revises: 0200_policy
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0201_policy_shadow_context"
down_revision: str | Sequence[str] | None = "0200_policy"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE policy_shadow_disagreements ALTER COLUMN context TYPE text USING context::text"
    )


def downgrade() -> None:
    # A context holding an escaped NUL or NaN has no jsonb form: it becomes an empty object.
    op.execute(
        """
        CREATE FUNCTION pg_temp.policy_context_jsonb(context text) RETURNS jsonb
        LANGUAGE plpgsql AS $$
        BEGIN
            RETURN context::jsonb;
        EXCEPTION WHEN others THEN
            RETURN '{}'::jsonb;
        END
        $$
        """
    )
    op.execute(
        "ALTER TABLE policy_shadow_disagreements ALTER COLUMN context TYPE jsonb "
        "USING pg_temp.policy_context_jsonb(context)"
    )
