"""Policy: signed bundles, the epoch history of activations, shadow disagreements.

policy_bundles and policy_epochs are append-only (UPDATE, DELETE and TRUNCATE
are refused by triggers): a bundle version names one content forever, and an
epoch, once used, is never used again. The current state is the newest epoch.

Revision ID: 0200_policy
Revises: 0001_base
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0200_policy"
down_revision: str | Sequence[str] | None = "0001_base"
branch_labels: str | Sequence[str] | None = ("policy",)
depends_on: str | Sequence[str] | None = None

_APPEND_ONLY = ("policy_bundles", "policy_epochs")


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE policy_bundles (
            version      text PRIMARY KEY CHECK (version ~ '^[0-9a-f]{64}$'),
            content      bytea NOT NULL,
            signature    text NOT NULL,
            signer_kid   text NOT NULL,
            policy_count integer NOT NULL CHECK (policy_count > 0),
            has_schema   boolean NOT NULL,
            metadata     jsonb NOT NULL DEFAULT '{}'::jsonb,
            published_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE policy_epochs (
            epoch          bigint PRIMARY KEY CHECK (epoch > 0),
            active_version text NOT NULL REFERENCES policy_bundles (version),
            shadow_version text REFERENCES policy_bundles (version),
            statement      text NOT NULL,
            signer_kid     text NOT NULL,
            note           text NOT NULL DEFAULT '',
            created_at     timestamptz NOT NULL DEFAULT now(),
            CHECK (shadow_version IS NULL OR shadow_version <> active_version)
        )
        """
    )
    op.execute(
        """
        CREATE FUNCTION policy_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    for table in _APPEND_ONLY:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION policy_refuse_change()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION policy_refuse_change()"
        )
    op.execute(
        """
        CREATE TABLE policy_shadow_disagreements (
            id                 bigserial PRIMARY KEY,
            epoch              bigint NOT NULL REFERENCES policy_epochs (epoch),
            recorded_at        timestamptz NOT NULL DEFAULT now(),
            request_digest     text NOT NULL,
            decision_id        text NOT NULL,
            principal          text NOT NULL,
            action             text NOT NULL,
            resource           text NOT NULL,
            context            jsonb NOT NULL,
            active_decision    text NOT NULL,
            active_determining jsonb NOT NULL,
            active_errors      jsonb NOT NULL,
            shadow_decision    text NOT NULL,
            shadow_determining jsonb NOT NULL,
            shadow_errors      jsonb NOT NULL
        )
        """
    )
    op.execute(
        "CREATE INDEX policy_shadow_disagreements_epoch ON policy_shadow_disagreements (epoch, id)"
    )
    op.execute(
        """
        CREATE TABLE policy_shadow_counts (
            epoch     bigint PRIMARY KEY REFERENCES policy_epochs (epoch),
            evaluated bigint NOT NULL DEFAULT 0,
            disagreed bigint NOT NULL DEFAULT 0,
            dropped   bigint NOT NULL DEFAULT 0
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE policy_shadow_counts")
    op.execute("DROP TABLE policy_shadow_disagreements")
    for table in _APPEND_ONLY:
        op.execute(f"DROP TRIGGER {table}_no_truncate ON {table}")
        op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
    op.execute("DROP TABLE policy_epochs")
    op.execute("DROP TABLE policy_bundles")
    op.execute("DROP FUNCTION policy_refuse_change()")
