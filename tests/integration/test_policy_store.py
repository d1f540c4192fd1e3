"""The authority over a real Postgres: publishing, refusals, epochs, rollback, shadows."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from joserfc.jwk import OKPKey

from govmesh.artifacts.keys import generate_ed25519, load_private_jwk
from govmesh.artifacts.signing import (
    Activation,
    AdminKeys,
    SignatureRejected,
    load_admin_keys,
    sign_activation,
    sign_bundle,
)
from govmesh.cli.devsetup import SAMPLE_POLICY, DevSetup
from govmesh.policy.authority import Authority, NotReady, Published, staleness_limit
from govmesh.policy.bundle import BundleRejected, BundleSource, PolicyFile, SchemaFile
from govmesh.policy.core import PolicyRequest
from govmesh.policy.floor import EpochFloor
from govmesh.policy.shadow import ShadowRecorder
from govmesh.policy.store import (
    EpochConflict,
    PolicyStore,
    ShadowRecord,
    StoredBundle,
    StoreError,
    UnknownBundle,
)
from govmesh.runtime.db import create_db_engine, libpq_database_url
from tests.integration.policy_faults import PostgresProxy
from tests.support.database import fetch

STRICT = SAMPLE_POLICY.replace("<= 1000", "<= 100")


def bundle(text: str = SAMPLE_POLICY, schema: str | None = None) -> BundleSource:
    return BundleSource(
        policies=(PolicyFile("policies.cedar", text),),
        schema=SchemaFile("cedar", schema) if schema else None,
    )


def transfer(amount: float, resource: str = "account:acme/treasury") -> PolicyRequest:
    return PolicyRequest(
        principal="spiffe://govmesh.dev/agent/demo",
        issuer="https://issuer.govmesh.dev",
        action="payments.transfer",
        resource=resource,
        context={"request": {"amount": amount}, "env": {}, "attribution": {}},
    )


@dataclass
class Setup:
    store: PolicyStore
    keys: AdminKeys
    admin: OKPKey
    database_url: str
    clock: list[float]
    #: This host's record of the newest epoch verified (shared by the replicas of a test).
    state_file: Path

    #: The monotonic clock staleness is measured with.
    ticks: list[float] = field(default_factory=lambda: [1000.0])

    def authority(
        self, recorder: ShadowRecorder | None = None, store: PolicyStore | None = None
    ) -> Authority:
        return Authority(
            store=store or self.store,
            admin_keys=self.keys,
            floor=EpochFloor(self.state_file),
            recorder=recorder,
            clock=lambda: self.clock[0],
            monotonic=lambda: self.ticks[0],
        )

    def statement(
        self, epoch: int, active: str, shadow: str | None = None, key: OKPKey | None = None
    ) -> str:
        return sign_activation(
            Activation(epoch, active, shadow), key or self.admin, clock=lambda: self.clock[0]
        )

    async def push(
        self,
        authority: Authority,
        source: BundleSource,
        *,
        epoch: int | None,
        shadow_of: str | None = None,
        key: OKPKey | None = None,
    ) -> Published:
        """Publish `source`; activate it at `epoch` (as shadow of `shadow_of`), or stage it."""
        signer = key or self.admin
        statement = ""
        if epoch is not None:
            statement = (
                self.statement(epoch, shadow_of, source.version, signer)
                if shadow_of
                else self.statement(epoch, source.version, None, signer)
            )
        return await authority.publish(
            source.canonical(), sign_bundle(source.version, signer), statement
        )


@pytest.fixture
async def setup(dev_setup: DevSetup, database_url: str, tmp_path: Path) -> AsyncIterator[Setup]:
    engine = create_db_engine(database_url)
    try:
        yield Setup(
            store=PolicyStore(engine),
            keys=load_admin_keys(dev_setup.trust_file),
            admin=load_private_jwk(dev_setup.keys_dir / "policy-admin.jwk.json"),
            database_url=database_url,
            clock=[1_900_000_000.0],
            state_file=tmp_path / "state" / "policy-epoch.json",
        )
    finally:
        await engine.dispose()


async def counts(url: str) -> tuple[int, int]:
    rows = await fetch(
        url,
        "SELECT (SELECT count(*) FROM policy_bundles) AS b, "
        "(SELECT count(*) FROM policy_epochs) AS e",
    )
    return int(rows[0]["b"]), int(rows[0]["e"])


async def test_nothing_is_answered_before_the_first_activation(setup: Setup) -> None:
    authority = setup.authority()
    await authority.refresh()

    assert not authority.ready
    with pytest.raises(NotReady):
        authority.evaluate(transfer(1))

    # A staged bundle is not an active one.
    await setup.push(authority, bundle(), epoch=None)
    assert not authority.ready


async def test_publish_and_activate_then_answer_under_that_epoch(setup: Setup) -> None:
    authority = setup.authority()

    published = await setup.push(authority, bundle(), epoch=1)

    assert published.created and published.epoch is not None and published.epoch.epoch == 1
    answer = authority.evaluate(transfer(250))
    assert answer.active.allowed
    assert answer.active.determining == ("transfers-up-to-1000",)
    assert (answer.snapshot.epoch, answer.snapshot.active.version) == (1, bundle().version)
    rows = await fetch(setup.database_url, "SELECT version, signer_kid FROM policy_bundles")
    assert [r["version"] for r in rows] == [bundle().version]
    assert rows[0]["signer_kid"] == setup.admin.as_dict()["kid"]


SCHEMA = """
entity Issuer; entity Agent in [Issuer]; entity Resource;
action "payments.transfer" appliesTo {
  principal: [Agent], resource: [Resource],
  context: { request: { amount: Long }, env: {}, attribution: {} }
};
"""


@pytest.mark.parametrize(
    ("source", "untrusted", "error", "named"),
    [
        (bundle(STRICT), True, SignatureRejected, "not a trusted policy admin"),
        (bundle("permit (principal, action, resource"), False, BundleRejected, "does not parse"),
        (bundle("// nothing here"), False, BundleRejected, "no policy"),
        (
            bundle(
                'permit (principal, action == Action::"payments.transfer", resource) '
                "when { context.request.amont < 5 };",
                schema=SCHEMA,
            ),
            False,
            BundleRejected,
            "schema validation",
        ),
    ],
)
async def test_a_refused_bundle_leaves_the_old_one_active_and_nothing_written(
    setup: Setup,
    source: BundleSource,
    untrusted: bool,
    error: type[Exception],
    named: str,
) -> None:
    authority = setup.authority()
    await setup.push(authority, bundle(), epoch=1)
    before = await counts(setup.database_url)

    with pytest.raises(error, match=named):
        await setup.push(authority, source, epoch=2, key=generate_ed25519() if untrusted else None)

    assert await counts(setup.database_url) == before
    assert authority.evaluate(transfer(250)).snapshot.epoch == 1
    assert authority.evaluate(transfer(250)).active.allowed
    other = setup.authority()
    await other.refresh()
    assert other.snapshot is not None and other.snapshot.active.version == bundle().version


async def test_a_bundle_signed_for_other_content_is_refused(setup: Setup) -> None:
    authority = setup.authority()
    await setup.push(authority, bundle(), epoch=1)

    with pytest.raises(SignatureRejected, match="another bundle"):
        await authority.publish(
            bundle(STRICT).canonical(),
            sign_bundle(bundle(SAMPLE_POLICY + "\n").version, setup.admin),
            setup.statement(2, bundle(STRICT).version),
        )

    assert await counts(setup.database_url) == (1, 1)


async def test_a_failing_activation_publishes_nothing(setup: Setup) -> None:
    # Bundle and epoch share one transaction: a refused epoch takes the bundle with it.
    authority = setup.authority()
    await setup.push(authority, bundle(), epoch=1)

    with pytest.raises(EpochConflict):
        await setup.push(authority, bundle(STRICT), epoch=5)
    with pytest.raises(UnknownBundle):
        await authority.publish(
            bundle(STRICT).canonical(),
            sign_bundle(bundle(STRICT).version, setup.admin),
            setup.statement(2, bundle(STRICT).version, "f" * 64),
        )

    assert await counts(setup.database_url) == (1, 1)


async def test_rollback_activates_an_older_bundle_at_a_new_epoch(setup: Setup) -> None:
    authority = setup.authority()
    first = await setup.push(authority, bundle(), epoch=1)
    await setup.push(authority, bundle(STRICT), epoch=2)
    assert not authority.evaluate(transfer(500)).active.allowed

    record = await authority.activate(setup.statement(3, first.bundle.version))

    assert record.epoch == 3
    answer = authority.evaluate(transfer(500))
    assert answer.active.allowed
    assert (answer.snapshot.epoch, answer.snapshot.active.version) == (3, first.bundle.version)
    history = await setup.store.history()
    assert [(e.epoch, e.active_version) for e in history] == [
        (3, bundle().version),
        (2, bundle(STRICT).version),
        (1, bundle().version),
    ]


async def test_statements_cannot_be_replayed_forged_or_kept_for_later(setup: Setup) -> None:
    authority = setup.authority()
    await setup.push(authority, bundle(), epoch=1)
    second = setup.statement(2, bundle(STRICT).version)
    await setup.push(authority, bundle(STRICT), epoch=None)
    await authority.activate(second)

    # Replayed: epoch 2 is taken for ever, so rolling forward again needs a new statement.
    await authority.activate(setup.statement(3, bundle().version))
    with pytest.raises(EpochConflict):
        await authority.activate(second)
    # Signed by a key the authority does not trust.
    with pytest.raises(SignatureRejected, match="not a trusted"):
        await authority.activate(setup.statement(4, bundle(STRICT).version, key=generate_ed25519()))
    # Signed long ago.
    stale = setup.statement(4, bundle(STRICT).version)
    setup.clock[0] += 3600
    with pytest.raises(SignatureRejected, match="fresh"):
        await authority.activate(stale)
    # A no-op is not a new epoch.
    with pytest.raises(StoreError, match="already has exactly this state"):
        await authority.activate(setup.statement(4, bundle().version))

    assert authority.evaluate(transfer(500)).snapshot.epoch == 3


async def test_epochs_and_bundles_are_append_only(setup: Setup) -> None:
    authority = setup.authority()
    await setup.push(authority, bundle(), epoch=1)

    for statement in (
        "UPDATE policy_epochs SET active_version = active_version",
        "DELETE FROM policy_epochs",
        "TRUNCATE policy_epochs CASCADE",
        "UPDATE policy_bundles SET content = content",
        "DELETE FROM policy_bundles",
    ):
        with pytest.raises(Exception, match="append-only"):
            await fetch(setup.database_url, statement)

    assert await counts(setup.database_url) == (1, 1)


async def test_append_only_holds_for_sessions_in_replica_mode_too(setup: Setup) -> None:
    # session_replication_role = replica skips ordinary triggers (what logical
    # replication and some restore tools set); the append-only ones must still fire.
    authority = setup.authority()
    await setup.push(authority, bundle(), epoch=1)
    conn = await asyncpg.connect(libpq_database_url(setup.database_url))
    try:
        await conn.execute("SET session_replication_role = replica")
        for statement in (
            "DELETE FROM policy_epochs",
            "UPDATE policy_epochs SET active_version = active_version",
            "TRUNCATE policy_epochs CASCADE",
            "DELETE FROM policy_bundles",
            "TRUNCATE policy_bundles CASCADE",
        ):
            with pytest.raises(asyncpg.PostgresError, match="append-only"):
                await conn.execute(statement)
    finally:
        await conn.close()

    assert await counts(setup.database_url) == (1, 1)


async def test_a_replica_restarting_serves_the_newest_epoch_and_continues_it(setup: Setup) -> None:
    first = setup.authority()
    await setup.push(first, bundle(), epoch=1)
    await setup.push(first, bundle(STRICT), epoch=2)

    restarted = setup.authority()
    await restarted.refresh()

    assert restarted.snapshot is not None
    assert (restarted.snapshot.epoch, restarted.snapshot.active.version) == (
        2,
        bundle(STRICT).version,
    )
    record = await restarted.activate(setup.statement(3, bundle().version))
    assert record.epoch == 3


async def test_a_forged_epoch_in_the_store_stops_the_replica(setup: Setup) -> None:
    authority = setup.authority()
    await setup.push(authority, bundle(), epoch=1)
    await setup.push(authority, bundle(STRICT), epoch=None)
    intruder = generate_ed25519()
    # Someone with write access to the database adds an epoch of their own.
    await fetch(
        setup.database_url,
        "INSERT INTO policy_epochs (epoch, active_version, statement, signer_kid) "
        "VALUES (2, $1, $2, 'intruder')",
        bundle(STRICT).version,
        setup.statement(2, bundle(STRICT).version, key=intruder),
    )

    await authority.refresh()

    assert not authority.ready
    assert "epoch 2" in authority.problem and "not a trusted" in authority.problem
    with pytest.raises(NotReady):
        authority.evaluate(transfer(1))


async def test_a_tampered_bundle_in_the_store_is_not_loaded(setup: Setup) -> None:
    authority = setup.authority()
    await setup.push(authority, bundle(), epoch=1)
    await setup.push(authority, bundle(STRICT), epoch=None)
    await fetch(setup.database_url, "ALTER TABLE policy_bundles DISABLE TRIGGER USER")
    tampered = bundle("permit (principal, action, resource);").canonical()
    await fetch(
        setup.database_url,
        "UPDATE policy_bundles SET content = $1 WHERE version = $2",
        tampered,
        bundle(STRICT).version,
    )
    await fetch(
        setup.database_url,
        "INSERT INTO policy_epochs (epoch, active_version, statement, signer_kid) "
        "VALUES (2, $1, $2, 'k')",
        bundle(STRICT).version,
        setup.statement(2, bundle(STRICT).version),
    )
    fresh = setup.authority()

    await fresh.refresh()
    await authority.refresh()

    assert not fresh.ready
    assert "does not hash to its version" in fresh.problem
    # The replica that verified the bundle when it was published serves that, not the tampering.
    answer = authority.evaluate(transfer(500))
    assert answer.snapshot.epoch == 2 and not answer.active.allowed


async def test_a_store_going_back_in_epochs_stops_the_replica(setup: Setup) -> None:
    authority = setup.authority()
    await setup.push(authority, bundle(), epoch=1)
    await setup.push(authority, bundle(STRICT), epoch=2)
    await fetch(setup.database_url, "ALTER TABLE policy_epochs DISABLE TRIGGER USER")
    await fetch(setup.database_url, "DELETE FROM policy_epochs WHERE epoch = 2")

    await authority.refresh()

    assert not authority.ready
    assert "went back" in authority.problem


async def test_a_restarted_replica_refuses_a_store_rolled_back_behind_what_it_verified(
    setup: Setup,
) -> None:
    first = setup.authority()
    await setup.push(first, bundle(), epoch=1)
    await setup.push(first, bundle(STRICT), epoch=2)  # e.g. an emergency freeze
    # The newest epoch disappears (a superuser, a backup restored), while no replica runs.
    await fetch(setup.database_url, "ALTER TABLE policy_epochs DISABLE TRIGGER USER")
    await fetch(setup.database_url, "DELETE FROM policy_epochs WHERE epoch = 2")

    restarted = setup.authority()
    await restarted.refresh()

    assert not restarted.ready
    assert "went back from epoch 2 to 1" in restarted.problem
    assert str(setup.state_file) in restarted.problem
    with pytest.raises(NotReady):
        restarted.evaluate(transfer(500))
    # An empty store is no way around it either: neither for the replica that
    # restarted nor for the one still serving epoch 2, which stops at its next
    # refresh instead of answering until the staleness limit (its monotonic
    # clock stands still here, so only the empty store can stop it).
    assert first.ready and first.evaluate(transfer(500)).snapshot.epoch == 2
    await fetch(setup.database_url, "DELETE FROM policy_epochs")
    await first.refresh()
    await restarted.refresh()
    for replica in (first, restarted):
        assert not replica.ready
        assert "the store has no policy epoch, but epoch 2 was verified here" in replica.problem
        with pytest.raises(NotReady):
            replica.evaluate(transfer(500))

    # A new signed epoch at or past the one verified is served again.
    await fetch(setup.database_url, "ALTER TABLE policy_epochs ENABLE TRIGGER USER")
    await restarted.activate(setup.statement(1, bundle().version))
    await restarted.refresh()
    assert not restarted.ready
    await restarted.activate(setup.statement(2, bundle(STRICT).version))
    assert restarted.ready
    answer = restarted.evaluate(transfer(500))
    assert answer.snapshot.epoch == 2 and not answer.active.allowed


async def test_replicas_starting_together_activate_the_start_bundle_once(setup: Setup) -> None:
    replicas = [setup.authority() for _ in range(3)]

    await asyncio.gather(*(r.bootstrap(bundle(), setup.admin) for r in replicas))
    await asyncio.gather(*(r.refresh() for r in replicas))

    assert await counts(setup.database_url) == (1, 1)
    assert {r.snapshot.epoch for r in replicas if r.snapshot} == {1}
    # Started again with other policies: the next epoch, never an old one.
    await replicas[0].bootstrap(bundle(STRICT), setup.admin)
    await replicas[0].bootstrap(bundle(STRICT), setup.admin)
    assert [e.epoch for e in await setup.store.history()] == [2, 1]


async def test_the_start_bundle_must_be_signed_by_a_trusted_key(setup: Setup) -> None:
    from govmesh.runtime.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="not trusted"):
        await setup.authority().bootstrap(bundle(), generate_ed25519())


async def test_shadow_is_evaluated_never_enforced_and_disagreements_recorded(
    setup: Setup,
) -> None:
    recorder = ShadowRecorder(setup.store)
    authority = setup.authority(recorder)
    active = await setup.push(authority, bundle(), epoch=1)
    await setup.push(authority, bundle(STRICT), epoch=2, shadow_of=active.bundle.version)

    agree = authority.evaluate(transfer(50), request_digest="d-50", decision_id="id-50")
    disagree = authority.evaluate(transfer(500), request_digest="d-500", decision_id="id-500")
    await recorder.flush()

    assert agree.active.allowed and agree.shadow is not None and agree.shadow.allowed
    assert disagree.active.allowed  # enforced: the active bundle's answer
    assert disagree.shadow is not None and not disagree.shadow.allowed
    epochs, totals, records = await setup.store.shadow_report(
        bundle().version, bundle(STRICT).version, 10
    )
    assert epochs == [2]
    assert (totals.evaluated, totals.disagreed) == (2, 1)
    assert [(r.decision_id, r.active_decision, r.shadow_decision) for r in records] == [
        ("id-500", "ALLOW", "DENY")
    ]
    assert records[0].context["request"] == {"amount": 500}
    assert records[0].active_determining == ("transfers-up-to-1000",)


async def test_a_failing_shadow_never_changes_the_active_answer(setup: Setup) -> None:
    authority = setup.authority(ShadowRecorder(setup.store))
    active = await setup.push(authority, bundle(), epoch=1)
    erroring = bundle(
        SAMPLE_POLICY + '\n@id("broken") forbid (principal, action, resource) when { context.x };'
    )
    await setup.push(authority, erroring, epoch=2, shadow_of=active.bundle.version)

    answer = authority.evaluate(transfer(250))

    assert answer.active.allowed
    assert answer.shadow is not None and not answer.shadow.allowed
    assert "broken" in answer.shadow.errors[0]


async def _shadowing(setup: Setup, recorder: ShadowRecorder) -> Authority:
    authority = setup.authority(recorder)
    active = await setup.push(authority, bundle(), epoch=1)
    await setup.push(authority, bundle(STRICT), epoch=2, shadow_of=active.bundle.version)
    return authority


def disagreeing(
    context: dict[str, Any], principal: str = "spiffe://govmesh.dev/agent/demo"
) -> PolicyRequest:
    return PolicyRequest(
        principal=principal,
        issuer="https://issuer.govmesh.dev",
        action="payments.transfer",
        resource="account:acme/treasury",
        context={"request": {"amount": 500, **context}, "env": {}, "attribution": {}},
    )


async def test_requests_postgres_cannot_store_as_given_are_still_recorded(setup: Setup) -> None:
    # Postgres refuses NUL in text and in jsonb: a caller's NUL must not stop the recording.
    recorder = ShadowRecorder(setup.store)
    authority = await _shadowing(setup, recorder)
    authority.evaluate(disagreeing({"note": "a\x00b", "k\x00": 1}), decision_id="nul")
    authority.evaluate(disagreeing({}, principal="agent\x00x"), decision_id="principal")
    await recorder.flush()
    authority.evaluate(disagreeing({"note": "later"}), decision_id="later")
    await recorder.flush()

    _, totals, records = await setup.store.shadow_report(
        bundle().version, bundle(STRICT).version, 10
    )

    assert (totals.evaluated, totals.disagreed, totals.dropped) == (3, 3, 0)
    assert recorder.pending == 0
    by_id = {r.decision_id: r for r in records}
    assert set(by_id) == {"nul", "principal", "later"}
    assert by_id["nul"].context["request"]["note"] == "a\x00b"
    assert by_id["nul"].context["request"]["k\x00"] == 1
    assert by_id["principal"].principal == "agent\ufffdx"
    assert (
        by_id["later"].issuer == "https://issuer.govmesh.dev"
    )  # the same sub of another issuer is another agent


def _record(
    decision_id: str, epoch: int = 2, context: dict[str, Any] | None = None
) -> ShadowRecord:
    return ShadowRecord(
        epoch=epoch,
        request_digest="digest",
        decision_id=decision_id,
        principal="spiffe://govmesh.dev/agent/demo",
        issuer="https://issuer.govmesh.dev",
        action="payments.transfer",
        resource="account:acme/treasury",
        context={"request": {"amount": 500}} if context is None else context,
        active_decision="ALLOW",
        active_determining=("transfers-up-to-1000",),
        active_errors=(),
        shadow_decision="DENY",
        shadow_determining=(),
        shadow_errors=(),
    )


async def test_a_record_the_store_refuses_is_dropped_counted_and_the_rest_recorded(
    setup: Setup,
) -> None:
    recorder = ShadowRecorder(setup.store)
    await _shadowing(setup, recorder)
    # Whatever cannot be stored, for reasons nobody foresaw (here: text that is not
    # UTF-8, a context without a JSON form), is dropped alone and counted as dropped;
    # the records around it are kept.
    for n in range(7):
        recorder.observe(2, _record(f"good-{n}"))
        if n == 3:
            recorder.observe(2, _record("bad-\ud800"))
        if n == 5:
            recorder.observe(2, _record("nan", context={"ratio": math.nan}))
    recorder.observe(99, _record("no-such-epoch", epoch=99))
    await recorder.flush()
    await recorder.flush()
    recorder.observe(2, _record("after"))
    await recorder.flush()

    _, totals, records = await setup.store.shadow_report(
        bundle().version, bundle(STRICT).version, 20
    )

    assert recorder.pending == 0  # nothing is retried for ever
    assert {r.decision_id for r in records} == {f"good-{n}" for n in range(7)} | {"after"}
    assert (totals.evaluated, totals.disagreed, totals.dropped) == (10, 10, 2)


async def test_a_store_away_keeps_the_records_for_later(setup: Setup) -> None:
    await _shadowing(setup, ShadowRecorder(setup.store))
    proxy = PostgresProxy(setup.database_url)
    engine = create_db_engine(proxy.url)
    try:
        recorder = ShadowRecorder(PolicyStore(engine))
        proxy.cut()
        recorder.observe(2, _record("kept"))
        await recorder.flush()
        assert recorder.pending == 2  # the record and its epoch's counters, nothing dropped

        proxy.restore()
        await recorder.flush()
    finally:
        await engine.dispose()
        proxy.close()

    assert recorder.pending == 0
    _, totals, records = await setup.store.shadow_report(
        bundle().version, bundle(STRICT).version, 5
    )
    assert [r.decision_id for r in records] == ["kept"]
    assert (totals.evaluated, totals.disagreed, totals.dropped) == (1, 1, 0)


async def test_an_epoch_the_store_stops_confirming_is_not_served_past_the_limit(
    setup: Setup,
) -> None:
    authority = setup.authority()
    await setup.push(authority, bundle(), epoch=1)
    limit = staleness_limit(5.0)
    assert limit == 15.0

    setup.ticks[0] += limit - 0.1
    await authority.enforce_freshness(limit)
    assert authority.ready  # confirmed at publish time, within the limit
    await authority.refresh()  # the store confirms epoch 1 again
    setup.ticks[0] += limit - 0.1
    await authority.enforce_freshness(limit)
    assert authority.ready

    setup.ticks[0] += 0.2  # no confirmation for longer than the limit
    await authority.enforce_freshness(limit)

    assert not authority.ready
    assert "has not confirmed epoch 1" in authority.problem
    with pytest.raises(NotReady):
        authority.evaluate(transfer(1))
    await authority.refresh()  # the store answers again
    assert authority.ready
    assert authority.evaluate(transfer(250)).active.allowed


class _Flaky(PolicyStore):
    """The store, failing its next `failures` bundle reads (a dropped connection)."""

    failures = 0

    async def bundle(self, version: str) -> StoredBundle | None:
        if self.failures:
            self.failures -= 1
            raise OSError("connection reset by peer")
        return await super().bundle(version)


async def test_a_newer_epoch_that_cannot_be_loaded_stops_the_old_one_at_once(
    setup: Setup, database_url: str
) -> None:
    engine = create_db_engine(database_url)
    try:
        flaky = _Flaky(engine)
        admin = setup.authority()
        await setup.push(admin, bundle(), epoch=1)
        replica = setup.authority(store=flaky)
        await replica.refresh()
        assert replica.ready
        await setup.push(admin, bundle(STRICT), epoch=2)
        flaky.failures = 1

        await replica.refresh()  # knows of epoch 2, cannot load it

        assert not replica.ready
        assert "cannot load policy epoch 2 yet" in replica.problem
        await replica.refresh()  # the next refresh loads it
        assert replica.ready
        assert not replica.evaluate(transfer(500)).active.allowed
    finally:
        await engine.dispose()
