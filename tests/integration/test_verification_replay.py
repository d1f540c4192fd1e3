"""The Postgres replay store against a real Postgres: atomicity, group commit, cleanup, faults."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from govmesh.artifacts.canonical import b64url_decode, request_digest
from govmesh.artifacts.keys import generate_ed25519, public_jwks
from govmesh.cli.devsetup import DEV_ISSUER, DEV_SUBJECT, DevSetup, write_dev_setup
from govmesh.client import Initiator, issue_mandate
from govmesh.runtime.db import libpq_database_url
from govmesh.v1 import common_pb2
from govmesh.verification.core import (
    ProofWindowClosed,
    ReplayStoreTimeout,
    ReplayStoreUnavailable,
    VerificationConfig,
    VerificationInput,
    Verifier,
    replay_key,
)
from govmesh.verification.replay import PostgresReplayStore
from govmesh.verification.trustsource import TrustSource
from tests.support.database import DatabaseFactory, fetch

OpenStore = Callable[..., Awaitable[PostgresReplayStore]]


def key(n: int | str) -> bytes:
    return hashlib.sha256(str(n).encode()).digest()


@pytest.fixture
async def open_store(database_url: str) -> AsyncIterator[OpenStore]:
    """Opens replay stores (each with its own connection pool); all closed afterwards."""
    opened: list[PostgresReplayStore] = []

    async def open_(url: str = database_url, **kwargs: object) -> PostgresReplayStore:
        store = PostgresReplayStore(database_url=url, **kwargs)  # type: ignore[arg-type]
        await store.start()
        opened.append(store)
        return store

    yield open_
    for store in opened:
        await store.close()


async def test_a_key_is_fresh_once(open_store: OpenStore) -> None:
    store = await open_store()
    later = time.time() + 60

    assert await store.remember(key(1), later, timeout=5) is True
    assert await store.remember(key(1), later, timeout=5) is False
    assert await store.remember(key(2), later, timeout=5) is True


async def test_seen_reads_without_recording(open_store: OpenStore) -> None:
    store = await open_store()

    assert await store.seen(key("x"), timeout=5) is False
    assert await store.seen(key("x"), timeout=5) is False
    assert await store.remember(key("x"), time.time() + 60, timeout=5) is True
    assert await store.seen(key("x"), timeout=5) is True


async def test_concurrent_inserts_are_group_committed(
    open_store: OpenStore, database_url: str
) -> None:
    store = await open_store()
    later = time.time() + 60

    results = await asyncio.gather(*(store.remember(key(n), later, timeout=10) for n in range(300)))

    assert all(results)
    assert store.inserted == 300
    assert store.batches < 30, "300 concurrent nonces should share a few commits"
    rows = await fetch(database_url, "SELECT count(*) AS n FROM verification_replay")
    assert rows[0]["n"] == 300


async def test_the_same_key_twice_in_one_batch_is_fresh_once(
    open_store: OpenStore,
) -> None:
    store = await open_store()
    later = time.time() + 60

    results = await asyncio.gather(
        *(store.remember(key("dup"), later, timeout=10) for _ in range(8))
    )

    assert results.count(True) == 1
    assert store.batches == 1


async def test_two_stores_racing_the_same_keys_admit_each_once(
    open_store: OpenStore,
) -> None:
    # Two stores, two connection pools: the race is decided by Postgres.
    first = await open_store()
    second = await open_store()
    later = time.time() + 60

    for n in range(40):
        a, b = await asyncio.gather(
            first.remember(key(f"race-{n}"), later, timeout=10),
            second.remember(key(f"race-{n}"), later, timeout=10),
        )
        assert [a, b].count(True) == 1, n


async def _record_expiring(database_url: str, name: str, seconds_from_now: float) -> None:
    """A nonce recorded earlier, expiring `seconds_from_now` by the database's clock."""
    await fetch(
        database_url,
        "INSERT INTO verification_replay (proof_key, expires_at) "
        "VALUES ($1, now() + make_interval(secs => $2))",
        key(name),
        seconds_from_now,
    )


async def test_a_commit_that_waits_does_not_hold_up_the_next_nonces(
    open_store: OpenStore, database_url: str
) -> None:
    # A batch stuck in its commit (here behind another transaction's row
    # lock; in production an fsync under a busy disk) must not make the
    # nonces that arrive after it wait for it: they commit beside it.
    store = await open_store()
    later = time.time() + 60
    blocker = await asyncpg.connect(libpq_database_url(database_url))
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute(
            "INSERT INTO verification_replay (proof_key, expires_at) VALUES ($1, now())",
            key("held"),
        )
        stuck = asyncio.ensure_future(store.remember(key("held"), later, timeout=10))
        await asyncio.sleep(0.2)
        assert not stuck.done()
        assert await store.remember(key("next"), later, timeout=2) is True
        await transaction.rollback()
    finally:
        await blocker.close()
    # The held key was never committed by anyone else: it is fresh, once.
    assert await stuck is True
    assert await store.remember(key("held"), later, timeout=5) is False


async def test_one_key_in_two_batches_committing_at_once_is_fresh_once(
    open_store: OpenStore,
) -> None:
    store = await open_store(max_batch=1, max_in_flight=4)
    later = time.time() + 60

    for n in range(20):
        results = await asyncio.gather(
            *(store.remember(key(f"twice-{n}"), later, timeout=10) for _ in range(4))
        )
        assert results.count(True) == 1, n


async def test_cleanup_deletes_only_expired_rows(open_store: OpenStore, database_url: str) -> None:
    store = await open_store(cleanup_margin_s=5.0, cleanup_chunk=2)
    for name, expiry in (("old-1", -60.0), ("old-2", -30.0), ("old-3", -10.0), ("in-margin", -1.0)):
        await _record_expiring(database_url, name, expiry)
    await store.remember(key("live"), time.time() + 60, timeout=5)

    deleted = await store.cleanup()

    assert deleted == 3
    rows = await fetch(database_url, "SELECT proof_key FROM verification_replay")
    assert {bytes(r["proof_key"]) for r in rows} == {key("in-margin"), key("live")}


async def test_cleanup_runs_in_the_background(open_store: OpenStore, database_url: str) -> None:
    await open_store(cleanup_interval_s=0.05, cleanup_margin_s=0.0)
    await _record_expiring(database_url, "expired", -1.0)

    for _ in range(200):
        rows = await fetch(database_url, "SELECT count(*) AS n FROM verification_replay")
        if rows[0]["n"] == 0:
            break
        await asyncio.sleep(0.05)
    assert rows[0]["n"] == 0


async def test_a_key_expired_by_the_database_clock_is_never_recorded(
    open_store: OpenStore, database_url: str
) -> None:
    store = await open_store()

    # The caller's clock says the window is still open; the database's does not.
    with pytest.raises(ProofWindowClosed):
        await store.remember(key("late"), time.time() - 1, timeout=5)
    results = await asyncio.gather(
        store.remember(key("late"), time.time() - 1, timeout=5),
        store.remember(key("on-time"), time.time() + 60, timeout=5),
        return_exceptions=True,
    )

    assert isinstance(results[0], ProofWindowClosed) and results[1] is True
    rows = await fetch(database_url, "SELECT proof_key FROM verification_replay")
    assert {bytes(r["proof_key"]) for r in rows} == {key("on-time")}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_store_never_says_fresh(open_store: OpenStore) -> None:
    url = f"postgresql://postgres@127.0.0.1:{_closed_port()}/nowhere"
    store = await open_store(url)

    with pytest.raises(ReplayStoreUnavailable):
        await store.remember(key(1), time.time() + 60, timeout=5)
    with pytest.raises(ReplayStoreUnavailable):
        await store.seen(key(1), timeout=5)
    with pytest.raises(ReplayStoreUnavailable):
        await store.check()


async def test_a_database_without_the_table_never_says_fresh(
    open_store: OpenStore, databases: DatabaseFactory
) -> None:
    store = await open_store(databases.create(migrate=False))

    with pytest.raises(ReplayStoreUnavailable):
        await store.remember(key(1), time.time() + 60, timeout=5)
    with pytest.raises(ReplayStoreUnavailable):
        await store.check()


async def test_a_store_that_does_not_answer_in_time_fails(
    open_store: OpenStore, database_url: str
) -> None:
    store = await open_store(flush_timeout_s=5.0)
    blocker = await asyncpg.connect(libpq_database_url(database_url))
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("LOCK TABLE verification_replay IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(ReplayStoreTimeout):
            await store.remember(key("locked"), time.time() + 60, timeout=0.3)
        await transaction.rollback()
    finally:
        await blocker.close()
    # Once the lock is gone the store answers again (the timed-out nonce may or may not be in).
    assert await store.remember(key("after"), time.time() + 60, timeout=10) is True


async def test_a_closed_store_refuses(open_store: OpenStore) -> None:
    store = await open_store()
    await store.close()

    with pytest.raises(ReplayStoreUnavailable):
        await store.remember(key(1), time.time() + 60, timeout=5)


async def test_a_key_rotated_in_during_the_replay_lookup_cannot_let_a_proof_pass_twice(
    database_url: str, tmp_path: Path
) -> None:
    # The mandate is signed by a key the issuer is rotating in. The first
    # examination fails (key unknown), so step 11 only reads the nonce; the
    # rotation lands during that read and step 12 re-examines under it.
    setup = write_dev_setup(tmp_path / "trust")
    old_key, new_key = setup.dev_key("issuer"), generate_ed25519()
    agent = Initiator(setup.dev_key("agent"))

    class RotatesDuringLookup(PostgresReplayStore):
        rotate: Callable[[], object] | None = None

        async def seen(self, key: bytes, *, timeout: float) -> bool:
            if self.rotate is not None:
                self.rotate()
                self.rotate = None
            return await super().seen(key, timeout=timeout)

    store = RotatesDuringLookup(database_url=database_url)
    await store.start()
    try:
        verifier = Verifier(
            trust=TrustSource(setup.trust_file, cache_size=100),
            replay=store,
            clock=time.time,
            config=VerificationConfig(),
        )
        mandate = issue_mandate(
            new_key,
            issuer=DEV_ISSUER,
            subject=DEV_SUBJECT,
            holder_thumbprint=agent.thumbprint,
            scope=[{"action": "payments.transfer", "resource": "account:acme/*"}],
        )
        context = {"amount": 1}
        request = VerificationInput(
            request_digest=request_digest("payments.transfer", "account:acme/t", context),
            action="payments.transfer",
            resource="account:acme/t",
            context=context,
            mandate=mandate,
            proof=agent.proof(mandate, "payments.transfer", "account:acme/t", context),
        )
        store.rotate = lambda: (setup.root / "issuer.jwks.json").write_text(
            json.dumps(public_jwks([old_key, new_key]))
        )
        results = [await verifier.verify(request, timeout=2.0) for _ in range(3)]
    finally:
        await store.close()

    assert [r.verified for r in results] == [True, False, False]
    assert all(o.check.value == "replay" for o in results[1].failed)


class Replicas:
    """Verification replicas on one real Postgres, each with its own clock and store."""

    def __init__(self, trust_file: Path, database_url: str) -> None:
        self.trust_file = trust_file
        self.database_url = database_url
        self.stores: list[PostgresReplayStore] = []

    async def replica(self, skew_s: float = 0.0) -> tuple[Verifier, PostgresReplayStore]:
        store = PostgresReplayStore(database_url=self.database_url, cleanup_margin_s=5.0)
        await store.start()
        self.stores.append(store)
        verifier = Verifier(
            trust=TrustSource(self.trust_file, cache_size=100),
            replay=store,
            clock=lambda: time.time() + skew_s,
            config=VerificationConfig(clock_skew_s=5.0, proof_window_s=60.0),
        )
        return verifier, store


@pytest.fixture
async def replicas(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[Replicas, DevSetup]]:
    setup = write_dev_setup(tmp_path / "trust")
    group = Replicas(setup.trust_file, database_url)
    try:
        yield group, setup
    finally:
        for store in group.stores:
            await store.close()


def _request(setup: DevSetup, *, issued_at: float) -> VerificationInput:
    """A valid request whose mandate and proof were signed at `issued_at`."""
    agent = Initiator(setup.dev_key("agent"), clock=lambda: issued_at)
    mandate = issue_mandate(
        setup.dev_key("issuer"),
        issuer=DEV_ISSUER,
        subject=DEV_SUBJECT,
        holder_thumbprint=agent.thumbprint,
        scope=[{"action": "payments.transfer", "resource": "account:acme/*"}],
        clock=lambda: issued_at - 30,
    )
    context = {"amount": 1}
    return VerificationInput(
        request_digest=request_digest("payments.transfer", "account:acme/t", context),
        action="payments.transfer",
        resource="account:acme/t",
        context=context,
        mandate=mandate,
        proof=agent.proof(mandate, "payments.transfer", "account:acme/t", context),
    )


async def test_a_replica_whose_clock_runs_ahead_cannot_make_the_others_forget_a_proof(
    replicas: tuple[Replicas, DevSetup],
) -> None:
    group, setup = replicas
    honest, _ = await group.replica()
    _, ahead = await group.replica(skew_s=80.0)  # far more than skew and margin together
    request = _request(setup, issued_at=time.time())

    first = await honest.verify(request, timeout=5.0)
    # The replica running ahead cleans up by the clock that decides expiry.
    await ahead.cleanup()
    again = await honest.verify(request, timeout=5.0)

    assert first.verified
    assert not again.verified
    assert [(o.check.value, o.reason) for o in again.failed] == [
        ("replay", common_pb2.REPLAY_DETECTED)
    ]


async def test_a_replica_whose_clock_runs_behind_cannot_accept_a_proof_already_forgotten(
    replicas: tuple[Replicas, DevSetup],
) -> None:
    group, setup = replicas
    honest, store = await group.replica()
    behind, _ = await group.replica(skew_s=-60.0)
    # Used 75 s ago, when it was fresh; its window (60 s and 5 s of skew) has
    # closed since, and the cleanup forgot its nonce.
    issued_at = time.time() - 75
    request = _request(setup, issued_at=issued_at)
    proof = json.loads(b64url_decode(request.proof.split(".")[1]))
    await fetch(
        group.database_url,
        "INSERT INTO verification_replay (proof_key, expires_at) VALUES ($1, to_timestamp($2))",
        replay_key(Initiator(setup.dev_key("agent")).thumbprint, proof["jti"]),
        float(issued_at + 65),
    )
    assert await store.cleanup() == 1

    # To the replica 60 s behind the proof looks 15 s old.
    replayed = await behind.verify(request, timeout=5.0)

    assert not replayed.verified
    assert [(o.check.value, o.reason) for o in replayed.failed] == [
        ("replay", common_pb2.EXPIRED_AUTHORIZATION)
    ]
    assert replayed.reason == common_pb2.EXPIRED_AUTHORIZATION
    # ...and the honest replica refuses it by its own clock.
    assert not (await honest.verify(request, timeout=5.0)).verified
