"""The policy store in Postgres: bundles, the epoch history, shadow disagreements.

Every state change is one transaction that takes the epoch lock, checks that
the signed statement names exactly the next epoch, inserts it and notifies
the replicas (NOTIFY is delivered at commit, so a replica never hears of an
epoch it cannot read). A bundle and the epoch that activates it are written
in the same transaction: a bundle is never half-published or half-activated.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from govmesh.artifacts.canonical import CanonicalizationError, canonical_json
from govmesh.artifacts.signing import Activation, SignedActivation
from govmesh.policy.transitions import next_epoch
from govmesh.runtime.db import libpq_database_url
from govmesh.runtime.errors import Conflict, NotFound, PreconditionFailed

logger = logging.getLogger(__name__)

#: The channel replicas LISTEN on; the payload is the new epoch.
NOTIFY_CHANNEL = "govmesh_policy"
#: pg_advisory_xact_lock key serializing state changes ("gm-pol" in ASCII).
_EPOCH_LOCK = 0x676D2D706F6C


class StoreError(PreconditionFailed):
    """The store refused or failed a request; the message says why."""


class EpochConflict(Conflict):
    """The statement's epoch is not the next one: someone else changed the state first."""

    def __init__(self, wanted: int, current: int) -> None:
        super().__init__(
            f"epoch {wanted} is not the next epoch (the current epoch is {current}); "
            "sign a new statement for the current state and retry"
        )
        self.wanted = wanted
        self.current = current


class UnknownBundle(NotFound, LookupError):
    """No bundle, or more than one, has that version or prefix."""


@dataclass(frozen=True)
class StoredBundle:
    """A published bundle as stored."""

    version: str
    content: bytes
    signature: str
    signer_kid: str
    policy_count: int
    has_schema: bool
    metadata: dict[str, str] = field(default_factory=dict)
    published_at: datetime | None = None


@dataclass(frozen=True)
class EpochRecord:
    """One state of the authority: what is active and what is shadow from `epoch` on."""

    epoch: int
    active_version: str
    shadow_version: str | None
    statement: str
    signer_kid: str
    note: str = ""
    created_at: datetime | None = None

    @property
    def activation(self) -> Activation:
        """The state this epoch records, as its signed statement must say it."""
        return Activation(self.epoch, self.active_version, self.shadow_version)


@dataclass(frozen=True)
class ShadowRecord:
    """One request on which the shadow bundle decided otherwise than the active one."""

    epoch: int
    request_digest: str
    decision_id: str
    principal: str
    issuer: str
    action: str
    resource: str
    context: dict[str, Any]
    active_decision: str
    active_determining: tuple[str, ...]
    active_errors: tuple[str, ...]
    shadow_decision: str
    shadow_determining: tuple[str, ...]
    shadow_errors: tuple[str, ...]
    recorded_at: datetime | None = None


@dataclass(frozen=True)
class ShadowCounts:
    """Evaluations seen under a shadow, and how many disagreed."""

    evaluated: int = 0
    disagreed: int = 0
    dropped: int = 0


_metadata = MetaData()

bundles_table = Table(
    "policy_bundles",
    _metadata,
    Column("version", Text, primary_key=True),
    Column("content", LargeBinary, nullable=False),
    Column("signature", Text, nullable=False),
    Column("signer_kid", Text, nullable=False),
    Column("policy_count", Integer, nullable=False),
    Column("has_schema", Boolean, nullable=False),
    Column("metadata", JSONB, nullable=False),
    Column("published_at", DateTime(timezone=True)),
)

epochs_table = Table(
    "policy_epochs",
    _metadata,
    Column("epoch", BigInteger, primary_key=True),
    Column("active_version", Text, nullable=False),
    Column("shadow_version", Text),
    Column("statement", Text, nullable=False),
    Column("signer_kid", Text, nullable=False),
    Column("note", Text, nullable=False),
    Column("created_at", DateTime(timezone=True)),
)

disagreements_table = Table(
    "policy_shadow_disagreements",
    _metadata,
    Column("id", BigInteger, primary_key=True),
    Column("epoch", BigInteger, nullable=False),
    Column("recorded_at", DateTime(timezone=True)),
    Column("request_digest", Text, nullable=False),
    Column("decision_id", Text, nullable=False),
    Column("principal", Text, nullable=False),
    Column("issuer", Text, nullable=False),  # migration 0203
    Column("action", Text, nullable=False),
    Column("resource", Text, nullable=False),
    Column("context", Text, nullable=False),  # JSON text (migration 0201)
    Column("active_decision", Text, nullable=False),
    Column("active_determining", JSONB, nullable=False),
    Column("active_errors", JSONB, nullable=False),
    Column("shadow_decision", Text, nullable=False),
    Column("shadow_determining", JSONB, nullable=False),
    Column("shadow_errors", JSONB, nullable=False),
)

counts_table = Table(
    "policy_shadow_counts",
    _metadata,
    Column("epoch", BigInteger, primary_key=True),
    Column("evaluated", BigInteger, nullable=False),
    Column("disagreed", BigInteger, nullable=False),
    Column("dropped", BigInteger, nullable=False),
)

_BUNDLE_INFO = (
    bundles_table.c.version,
    bundles_table.c.signer_kid,
    bundles_table.c.policy_count,
    bundles_table.c.has_schema,
    bundles_table.c.metadata,
    bundles_table.c.published_at,
)


def _epoch(row: Any) -> EpochRecord:
    return EpochRecord(
        epoch=row.epoch,
        active_version=row.active_version,
        shadow_version=row.shadow_version,
        statement=row.statement,
        signer_kid=row.signer_kid,
        note=row.note,
        created_at=row.created_at,
    )


def _bundle(row: Any, content: bool) -> StoredBundle:
    return StoredBundle(
        version=row.version,
        content=bytes(row.content) if content else b"",
        signature=row.signature if content else "",
        signer_kid=row.signer_kid,
        policy_count=row.policy_count,
        has_schema=row.has_schema,
        metadata=dict(row.metadata or {}),
        published_at=row.published_at,
    )


def _record(row: Any) -> ShadowRecord:
    return ShadowRecord(
        epoch=row.epoch,
        request_digest=row.request_digest,
        decision_id=row.decision_id,
        principal=row.principal,
        issuer=row.issuer,
        action=row.action,
        resource=row.resource,
        context=json.loads(row.context),
        active_decision=row.active_decision,
        active_determining=tuple(row.active_determining),
        active_errors=tuple(row.active_errors),
        shadow_decision=row.shadow_decision,
        shadow_determining=tuple(row.shadow_determining),
        shadow_errors=tuple(row.shadow_errors),
        recorded_at=row.recorded_at,
    )


def _text(value: str) -> str:
    # Postgres text cannot hold NUL: a caller's NUL is kept visible as U+FFFD.
    return value.replace("\x00", "\ufffd")


def _disagreement_row(record: ShadowRecord) -> dict[str, Any]:
    """A disagreement as stored: the context as canonical JSON text, which Postgres always
    accepts (JSON escapes NUL and every other control character), the rest NUL-free."""
    try:
        context = canonical_json(record.context).decode()
    except CanonicalizationError as exc:
        raise ValueError(f"the request context has no canonical JSON: {exc}") from None
    return {
        "epoch": record.epoch,
        "request_digest": _text(record.request_digest),
        "decision_id": _text(record.decision_id),
        "principal": _text(record.principal),
        "issuer": _text(record.issuer),
        "action": _text(record.action),
        "resource": _text(record.resource),
        "context": context,
        "active_decision": record.active_decision,
        "active_determining": [_text(t) for t in record.active_determining],
        "active_errors": [_text(t) for t in record.active_errors],
        "shadow_decision": record.shadow_decision,
        "shadow_determining": [_text(t) for t in record.shadow_determining],
        "shadow_errors": [_text(t) for t in record.shadow_errors],
    }


class PolicyStore:
    """Bundles and epochs in Postgres (SQLAlchemy async on asyncpg)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def current(self) -> EpochRecord | None:
        """The newest epoch, or None before the first activation."""
        query = select(epochs_table).order_by(epochs_table.c.epoch.desc()).limit(1)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _epoch(row) if row is not None else None

    async def epoch(self, epoch: int) -> EpochRecord | None:
        """One epoch of the history."""
        query = select(epochs_table).where(epochs_table.c.epoch == epoch)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _epoch(row) if row is not None else None

    async def bundle(self, version: str) -> StoredBundle | None:
        """The stored bundle of exactly `version`."""
        query = select(bundles_table).where(bundles_table.c.version == version)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _bundle(row, content=True) if row is not None else None

    async def resolve(self, prefix: str) -> str:
        """The one version starting with `prefix` (at least 4 hex digits)."""
        prefix = prefix.strip().lower()
        if len(prefix) < 4 or any(c not in "0123456789abcdef" for c in prefix):
            raise UnknownBundle(f"{prefix!r} is not a bundle version (give at least 4 hex digits)")
        query = (
            select(bundles_table.c.version)
            .where(bundles_table.c.version.startswith(prefix, autoescape=True))
            .limit(2)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        if not rows:
            raise UnknownBundle(f"no bundle has version {prefix}")
        if len(rows) > 1:
            raise UnknownBundle(f"more than one bundle has a version starting with {prefix}")
        return str(rows[0].version)

    async def bundles(self, limit: int = 100) -> list[StoredBundle]:
        """Published bundles, newest first, without their content."""
        query = (
            select(*_BUNDLE_INFO)
            .order_by(bundles_table.c.published_at.desc(), bundles_table.c.version)
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_bundle(row, content=False) for row in rows]

    async def history(self, limit: int = 100, *, version: str | None = None) -> list[EpochRecord]:
        """Epochs, newest first; with `version`, those where it was active or shadow."""
        query = select(epochs_table).order_by(epochs_table.c.epoch.desc()).limit(limit)
        if version is not None:
            query = query.where(
                (epochs_table.c.active_version == version)
                | (epochs_table.c.shadow_version == version)
            )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_epoch(row) for row in rows]

    async def commit(
        self,
        *,
        bundle: StoredBundle | None = None,
        activation: SignedActivation | None = None,
        note: str = "",
    ) -> tuple[bool, EpochRecord | None]:
        """Publish `bundle` and/or record `activation`, atomically.

        1. Take the epoch lock (one state change at a time, across replicas).
        2. Insert the bundle unless that version is already stored (same
           content by construction: the version is its hash).
        3. The statement's epoch must be exactly the next one, and change the state.
        4. Every version it names must be stored.
        5. Insert the epoch and notify the replicas, at commit.

        Returns whether the bundle was new, and the new epoch (if any).
        """
        try:
            async with self._engine.begin() as conn:
                # 1. Lock.
                await conn.execute(select(func.pg_advisory_xact_lock(_EPOCH_LOCK)))
                # 2. Bundle.
                created = False
                if bundle is not None:
                    created = await self._insert_bundle(conn, bundle)
                if activation is None:
                    return created, None
                # 3. Next epoch, and a change.
                latest = (
                    await conn.execute(
                        select(epochs_table).order_by(epochs_table.c.epoch.desc()).limit(1)
                    )
                ).first()
                current = _epoch(latest) if latest is not None else None
                wanted = activation.activation.epoch
                if wanted != next_epoch(current.activation if current is not None else None):
                    raise EpochConflict(wanted, current.epoch if current is not None else 0)
                if current is not None and (current.active_version, current.shadow_version) == (
                    activation.activation.active,
                    activation.activation.shadow,
                ):
                    raise StoreError(f"epoch {current.epoch} already has exactly this state")
                # 4. Known versions.
                named = [activation.activation.active]
                if activation.activation.shadow is not None:
                    named.append(activation.activation.shadow)
                for version in named:
                    found = await conn.execute(
                        select(bundles_table.c.version).where(bundles_table.c.version == version)
                    )
                    if found.first() is None:
                        raise UnknownBundle(f"no bundle has version {version}")
                # 5. Epoch and notification.
                row = (
                    await conn.execute(
                        insert(epochs_table)
                        .values(
                            epoch=wanted,
                            active_version=activation.activation.active,
                            shadow_version=activation.activation.shadow,
                            statement=activation.token,
                            signer_kid=activation.kid,
                            note=note,
                        )
                        .returning(*epochs_table.c)
                    )
                ).one()
                await conn.execute(select(func.pg_notify(NOTIFY_CHANNEL, str(wanted))))
                return created, _epoch(row)
        except IntegrityError as exc:
            # Only a writer outside govmesh can get past the lock and the checks.
            raise StoreError(f"the store refused the change: {exc.orig}") from exc

    @staticmethod
    async def _insert_bundle(conn: AsyncConnection, bundle: StoredBundle) -> bool:
        result = await conn.execute(
            insert(bundles_table)
            .values(
                version=bundle.version,
                content=bundle.content,
                signature=bundle.signature,
                signer_kid=bundle.signer_kid,
                policy_count=bundle.policy_count,
                has_schema=bundle.has_schema,
                metadata=dict(bundle.metadata),
            )
            .on_conflict_do_nothing(index_elements=["version"])
            .returning(bundles_table.c.version)
        )
        return result.first() is not None

    # --- shadow disagreements -------------------------------------------------------

    async def ping(self) -> None:
        """Raise unless the store answers a query."""
        async with self._engine.connect() as conn:
            await conn.execute(select(1))

    async def record_shadow(
        self, records: Sequence[ShadowRecord], counts: dict[int, ShadowCounts]
    ) -> None:
        """Append disagreements and add to the per-epoch counters, in one transaction.

        Raises ValueError for a record that has no stored form (its context
        has no canonical JSON, e.g. NaN, or its text is not Unicode).
        """
        rows = [_disagreement_row(r) for r in records]
        async with self._engine.begin() as conn:
            if rows:
                await conn.execute(insert(disagreements_table), rows)
            # In epoch order, so that replicas adding to the same counters never deadlock.
            for epoch, count in sorted(counts.items()):
                upsert = insert(counts_table).values(
                    epoch=epoch,
                    evaluated=count.evaluated,
                    disagreed=count.disagreed,
                    dropped=count.dropped,
                )
                await conn.execute(
                    upsert.on_conflict_do_update(
                        index_elements=["epoch"],
                        set_={
                            "evaluated": counts_table.c.evaluated + upsert.excluded.evaluated,
                            "disagreed": counts_table.c.disagreed + upsert.excluded.disagreed,
                            "dropped": counts_table.c.dropped + upsert.excluded.dropped,
                        },
                    )
                )

    async def shadow_report(
        self, active: str, shadow: str, limit: int
    ) -> tuple[list[int], ShadowCounts, list[ShadowRecord]]:
        """Every epoch that paired `active` with `shadow`: counters and the newest disagreements."""
        async with self._engine.connect() as conn:
            epochs = [
                int(epoch)
                for epoch in (
                    await conn.execute(
                        select(epochs_table.c.epoch)
                        .where(
                            (epochs_table.c.active_version == active)
                            & (epochs_table.c.shadow_version == shadow)
                        )
                        .order_by(epochs_table.c.epoch)
                    )
                ).scalars()
            ]
            totals = (
                await conn.execute(
                    select(
                        func.coalesce(func.sum(counts_table.c.evaluated), 0),
                        func.coalesce(func.sum(counts_table.c.disagreed), 0),
                        func.coalesce(func.sum(counts_table.c.dropped), 0),
                    ).where(counts_table.c.epoch.in_(epochs))
                )
            ).one()
            rows = (
                await conn.execute(
                    select(disagreements_table)
                    .where(disagreements_table.c.epoch.in_(epochs))
                    .order_by(disagreements_table.c.id.desc())
                    .limit(limit)
                )
            ).all()
        counts = ShadowCounts(int(totals[0]), int(totals[1]), int(totals[2]))
        return epochs, counts, [_record(row) for row in rows]


class EpochListener:
    """LISTENs for new epochs on a dedicated connection; reconnects when it drops.

    `on_notify` is called for every notification and after every
    (re)connection, since notifications sent while disconnected are lost.
    """

    def __init__(
        self, database_url: str, on_notify: Callable[[], None], *, retry_s: float = 1.0
    ) -> None:
        self._url = libpq_database_url(database_url)
        self._on_notify = on_notify
        self._retry_s = retry_s
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Listen until cancelled."""
        while True:
            lost = asyncio.Event()
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._url, timeout=10)
                conn.add_termination_listener(lambda _, lost=lost: lost.set())
                await conn.add_listener(NOTIFY_CHANNEL, lambda *_: self._on_notify())
                self.connected.set()
                self._on_notify()
                await lost.wait()
                logger.warning("lost the policy notification connection; reconnecting")
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                logger.warning("cannot listen for policy activations: %s", exc)
            finally:
                self.connected.clear()
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(self._retry_s)
