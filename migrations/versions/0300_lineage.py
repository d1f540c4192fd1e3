"""Lineage: the append-only decision log, its checkpoints and cosignatures.

Tables
  lineage_entries       one row per leaf: the exact entry bytes, the leaf hash,
                        and the hashes of the perfect subtrees that end at this
                        leaf (`nodes`, 32 bytes per level from 1 up), so that a
                        proof reads O(log n) rows and nothing is ever rehashed.
                        The query columns are copies of entry fields, for
                        indexes only; the bytes are the record.
  lineage_checkpoints   every signed checkpoint (C2SP signed note), by size.
  lineage_cosignatures  witness cosignature lines, by checkpoint.
  lineage_head          the counter row: size and root of the committed tree.
                        Every append locks it, so indices stay contiguous
                        across crashes and concurrent writers (a sequence
                        would leave gaps on rollback).

Immutability: triggers refuse UPDATE, DELETE and TRUNCATE on the three log
tables and DELETE/TRUNCATE on the head, ENABLED ALWAYS so that even
session_replication_role = replica does not skip them. The head may only
grow, and only over rows that are all there. Roles govmesh_lineage_writer
(INSERT and SELECT on the log, UPDATE of the counter row) and
govmesh_lineage_reader (SELECT) are created when the migrating user may
create roles; a superuser can still bypass all of this, which is why the
auditor (`govmesh lineage verify`) is the real guarantee.

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

LOG_TABLES = ("lineage_entries", "lineage_checkpoints", "lineage_cosignatures")


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE lineage_entries (
            idx         bigint      PRIMARY KEY CHECK (idx >= 0),
            decision_id uuid        NOT NULL UNIQUE,
            entry       bytea       NOT NULL,
            leaf_hash   bytea       NOT NULL CHECK (length(leaf_hash) = 32),
            nodes       bytea       NOT NULL CHECK (length(nodes) % 32 = 0),
            logged_at   timestamptz NOT NULL,
            kind        text,
            decided_at  timestamptz,
            subject     text,
            trace_id    text
        )
        """
    )
    op.execute(
        "CREATE INDEX lineage_entries_subject ON lineage_entries (subject, idx) "
        "WHERE subject IS NOT NULL"
    )
    op.execute(
        "CREATE INDEX lineage_entries_trace ON lineage_entries (trace_id) "
        "WHERE trace_id IS NOT NULL"
    )
    # Decision times rise with the index (give or take clock skew and spooled
    # denies), so a block-range index finds a time range at almost no cost per insert.
    op.execute("CREATE INDEX lineage_entries_time ON lineage_entries USING brin (decided_at)")
    op.execute(
        """
        CREATE TABLE lineage_checkpoints (
            tree_size  bigint      PRIMARY KEY CHECK (tree_size > 0),
            root_hash  bytea       NOT NULL CHECK (length(root_hash) = 32),
            note       text        NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE lineage_cosignatures (
            tree_size  bigint      NOT NULL REFERENCES lineage_checkpoints (tree_size),
            witness    text        NOT NULL,
            key_id     bytea       NOT NULL CHECK (length(key_id) = 4),
            line       text        NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tree_size, witness, key_id)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE lineage_head (
            id        smallint PRIMARY KEY CHECK (id = 1),
            size      bigint   NOT NULL CHECK (size >= 0),
            root_hash bytea    NOT NULL CHECK (length(root_hash) = 32)
        )
        """
    )
    op.execute(
        "INSERT INTO lineage_head (id, size, root_hash) "
        "VALUES (1, 0, sha256(''::bytea))"  # MTH of the empty tree
    )

    op.execute(
        """
        CREATE FUNCTION lineage_refuse_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'lineage is append-only: % on % is refused', TG_OP, TG_TABLE_NAME
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    for table in LOG_TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE "
            f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION lineage_refuse_change()"
        )
        op.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_append_only")
    op.execute(
        "CREATE TRIGGER lineage_head_kept BEFORE DELETE OR TRUNCATE ON lineage_head "
        "FOR EACH STATEMENT EXECUTE FUNCTION lineage_refuse_change()"
    )
    op.execute("ALTER TABLE lineage_head ENABLE ALWAYS TRIGGER lineage_head_kept")

    # The counter only grows, and only over a contiguous run of committed rows:
    # after the update, rows old.size .. new.size-1 all exist and nothing lies beyond.
    op.execute(
        """
        CREATE FUNCTION lineage_head_grows() RETURNS trigger
        LANGUAGE plpgsql
        -- A cached generic plan would estimate `idx >= $1` at a third of the
        -- table and scan all of it; a custom plan reads only the new rows.
        SET plan_cache_mode = force_custom_plan
        AS $$
        DECLARE
            top bigint;
            added bigint;
        BEGIN
            IF NEW.id <> OLD.id OR NEW.size < OLD.size THEN
                RAISE EXCEPTION 'lineage head may only grow (% -> %)', OLD.size, NEW.size
                    USING ERRCODE = 'integrity_constraint_violation';
            END IF;
            SELECT max(idx) INTO top FROM lineage_entries;
            SELECT count(*) INTO added FROM lineage_entries
                WHERE idx >= OLD.size AND idx < NEW.size;
            IF coalesce(top + 1, 0) <> NEW.size OR added <> NEW.size - OLD.size THEN
                RAISE EXCEPTION 'lineage head % does not match entries (top %, % new)',
                    NEW.size, top, added
                    USING ERRCODE = 'integrity_constraint_violation';
            END IF;
            RETURN NEW;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER lineage_head_contiguous BEFORE UPDATE ON lineage_head "
        "FOR EACH ROW EXECUTE FUNCTION lineage_head_grows()"
    )
    op.execute("ALTER TABLE lineage_head ENABLE ALWAYS TRIGGER lineage_head_contiguous")

    # The common append in one round trip (transaction and commit included):
    # only while the head is what the caller's checkpoint extends and no
    # decision id is taken. Otherwise it writes nothing and says why, and the
    # caller takes its slower, fully locked path.
    op.execute(
        """
        CREATE FUNCTION lineage_append_if_head(
            expect_size bigint, expect_root bytea,
            idxs bigint[], ids uuid[], entries bytea[], leaves bytea[], node_hashes bytea[],
            logged timestamptz, kinds text[], times timestamptz[], subjects text[],
            traces text[], new_size bigint, new_root bytea, note text
        ) RETURNS text
        LANGUAGE plpgsql
        SET plan_cache_mode = force_custom_plan
        AS $$
        DECLARE
            head record;
        BEGIN
            SELECT size, root_hash INTO head FROM lineage_head WHERE id = 1 FOR UPDATE;
            IF head.size IS DISTINCT FROM expect_size
                    OR head.root_hash IS DISTINCT FROM expect_root THEN
                RETURN 'moved';
            END IF;
            IF EXISTS (SELECT 1 FROM lineage_entries WHERE decision_id = ANY (ids)) THEN
                RETURN 'taken';
            END IF;
            INSERT INTO lineage_entries (idx, decision_id, entry, leaf_hash, nodes, logged_at,
                                         kind, decided_at, subject, trace_id)
                SELECT u.i, u.d, u.e, u.l, u.n, logged, u.k, u.t, u.s, u.tr
                FROM unnest(idxs, ids, entries, leaves, node_hashes, kinds, times, subjects,
                            traces) AS u(i, d, e, l, n, k, t, s, tr);
            INSERT INTO lineage_checkpoints (tree_size, root_hash, note)
                VALUES (new_size, new_root, note);
            UPDATE lineage_head SET size = new_size, root_hash = new_root WHERE id = 1;
            PERFORM pg_notify('govmesh_lineage', new_size::text);
            RETURN 'appended';
        END
        $$
        """
    )

    # Roles and grants, where the server lets the migrating user create roles.
    # Roles are cluster-wide: another database may have created them already.
    op.execute(
        """
        DO $$
        DECLARE
            can_create boolean;
        BEGIN
            SELECT rolsuper OR rolcreaterole INTO can_create
                FROM pg_roles WHERE rolname = current_user;
            IF NOT can_create THEN
                RAISE NOTICE 'lineage: % may not create roles; skipping lineage roles',
                    current_user;
                RETURN;
            END IF;
            BEGIN
                CREATE ROLE govmesh_lineage_writer NOLOGIN;
            EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
            END;
            BEGIN
                CREATE ROLE govmesh_lineage_reader NOLOGIN;
            EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
            END;
            GRANT SELECT, INSERT ON lineage_entries, lineage_checkpoints, lineage_cosignatures
                TO govmesh_lineage_writer;
            GRANT SELECT ON lineage_head TO govmesh_lineage_writer;
            GRANT UPDATE (size, root_hash) ON lineage_head TO govmesh_lineage_writer;
            GRANT SELECT ON lineage_entries, lineage_checkpoints, lineage_cosignatures,
                lineage_head TO govmesh_lineage_reader;
        END
        $$
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'govmesh_lineage_writer') THEN
                REVOKE ALL ON lineage_entries, lineage_checkpoints, lineage_cosignatures,
                    lineage_head FROM govmesh_lineage_writer;
            END IF;
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'govmesh_lineage_reader') THEN
                REVOKE ALL ON lineage_entries, lineage_checkpoints, lineage_cosignatures,
                    lineage_head FROM govmesh_lineage_reader;
            END IF;
        END
        $$
        """
    )
    for table in ("lineage_cosignatures", "lineage_checkpoints", "lineage_head", "lineage_entries"):
        op.execute(f"DROP TABLE {table}")
    op.execute("DROP FUNCTION lineage_append_if_head")
    op.execute("DROP FUNCTION lineage_head_grows()")
    op.execute("DROP FUNCTION lineage_refuse_change()")
