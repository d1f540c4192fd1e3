"""The verification process itself: replicas, the replay store, key rotation, start-up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health
from sqlalchemy.engine import make_url

from govmesh.artifacts.keys import generate_ed25519
from govmesh.artifacts.trust import load_trust
from govmesh.runtime.db import libpq_database_url
from govmesh.runtime.server import Health
from govmesh.runtime.settings import load_settings
from govmesh.v1 import verification_pb2, verification_pb2_grpc
from govmesh.verification import trustsource
from govmesh.verification.config import VerificationSettings
from govmesh.verification.server import VerificationService
from tests.support.database import DatabaseFactory
from tests.support.processes import ServiceProcess
from tests.support.verification import (
    ISSUER,
    Clock,
    World,
    costly_request,
    failed_checks,
    jwks,
    make_world,
    reason,
    verify_request,
    write_json,
)

Start = Callable[..., ServiceProcess]
StubFor = Callable[[ServiceProcess], "verification_pb2_grpc.VerificationAsyncStub"]


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path / "trust", clock=Clock.live())


@pytest.fixture
def env(world: World, database_url: str) -> dict[str, str]:
    return {
        "GOVMESH_TRUST_FILE": str(world.trust_file),
        "GOVMESH_DATABASE_URL": database_url,
    }


@pytest.fixture
async def stub_for() -> AsyncIterator[StubFor]:
    channels: list[grpc.aio.Channel] = []

    def stub(process: ServiceProcess) -> verification_pb2_grpc.VerificationAsyncStub:
        channel = grpc.aio.insecure_channel(process.address)
        channels.append(channel)
        return verification_pb2_grpc.VerificationStub(channel)

    yield stub
    for channel in channels:
        await channel.close()


async def test_two_replicas_racing_the_same_proof_admit_it_once(
    services: Start, env: dict[str, str], world: World, stub_for: StubFor
) -> None:
    first = stub_for(services("verification", env))
    second = stub_for(services("verification", env))
    mandate = world.mandate()

    for _ in range(25):
        request = verify_request(world.request(mandate=mandate))
        a, b = await asyncio.gather(
            first.Verify(request, timeout=10), second.Verify(request, timeout=10)
        )
        assert sorted([a.verified, b.verified]) == [False, True]
        loser = b if a.verified else a
        assert reason(loser) == "REPLAY_DETECTED"
        assert failed_checks(loser) == ["replay"]


async def test_an_unreachable_replay_store_denies_and_recovers(
    services: Start,
    env: dict[str, str],
    world: World,
    stub_for: StubFor,
    database_url: str,
    pg_server_url: str,
) -> None:
    stub = stub_for(services("verification", env))
    assert (await stub.Verify(verify_request(world.request()), timeout=10)).verified
    name = make_url(database_url).database
    admin = await asyncpg.connect(libpq_database_url(pg_server_url))
    try:
        # Our own test database stops taking connections and loses the ones it had.
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        answer = await stub.Verify(verify_request(world.request()), timeout=10)

        assert not answer.verified
        assert failed_checks(answer) == ["replay"]
        assert reason(answer) in ("PEER_UNAVAILABLE", "PEER_TIMEOUT")
        assert "replay store" in answer.message
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
    answer = await stub.Verify(verify_request(world.request()), timeout=10)
    assert answer.verified, answer.message


async def test_a_removed_key_stops_verifying_with_the_next_request(
    services: Start, env: dict[str, str], world: World, stub_for: StubFor
) -> None:
    stub = stub_for(services("verification", env))
    mandate = world.mandate(key=world.issuer_es)
    before = await stub.Verify(verify_request(world.request(mandate=mandate)), timeout=10)
    assert before.verified  # and now in the verified-token cache

    write_json(world.root / "issuer.jwks.json", jwks(world.issuer, world.issuer_rs))
    after = await stub.Verify(verify_request(world.request(mandate=mandate)), timeout=10)

    assert not after.verified
    assert failed_checks(after) == ["signature"]
    assert "issuer-es" in after.message
    assert after.trust_version != before.trust_version


async def test_a_rotated_in_key_verifies_with_the_next_request(
    services: Start, env: dict[str, str], world: World, stub_for: StubFor
) -> None:
    stub = stub_for(services("verification", env))
    new_key = generate_ed25519("issuer-ed-2")
    mandate = world.mandate(key=new_key)
    before = await stub.Verify(verify_request(world.request(mandate=mandate)), timeout=10)
    assert failed_checks(before) == ["signature"]

    write_json(world.root / "issuer.jwks.json", jwks(world.issuer, new_key))
    after = await stub.Verify(verify_request(world.request(mandate=mandate)), timeout=10)

    assert after.verified, after.message


def log_records(process: ServiceProcess) -> list[dict[str, Any]]:
    """The process's JSON log records (GOVMESH_LOG_FORMAT=json)."""
    records = []
    for line in process.log().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def trust_loads(process: ServiceProcess) -> list[dict[str, Any]]:
    return [r for r in log_records(process) if r.get("msg") == "trust configuration loaded"]


async def test_sighup_reloads_and_the_process_keeps_serving(
    services: Start, env: dict[str, str], world: World, stub_for: StubFor
) -> None:
    # The background poll is an hour away, so only SIGHUP (or a request that
    # stats the files) can reload. Every request stats the files and reloads
    # on a change, so the test sends none between the change and the signal,
    # and shows from the log that the reload happened on SIGHUP, before the
    # next request, which then finds the new configuration already in force.
    process = services(
        "verification",
        {**env, "GOVMESH_TRUST_POLL_INTERVAL_S": "3600", "GOVMESH_LOG_FORMAT": "json"},
    )
    stub = stub_for(process)
    mandate = world.mandate(key=world.issuer_es)
    before = await stub.Verify(verify_request(world.request(mandate=mandate)), timeout=10)
    assert before.verified, before.message  # and now in the verified-token cache
    assert [r["why"] for r in trust_loads(process)] == ["start"]

    write_json(world.root / "issuer.jwks.json", jwks(world.issuer, world.issuer_rs))
    removed = load_trust(world.trust_file).version
    await asyncio.sleep(1.0)
    assert [r["why"] for r in trust_loads(process)] == ["start"]  # nothing reloads by itself

    process.process.send_signal(signal.SIGHUP)
    for _ in range(200):
        if any(
            r.get("msg") == "trust configuration checked on SIGHUP" for r in log_records(process)
        ):
            break
        await asyncio.sleep(0.05)
    loads = trust_loads(process)
    assert [(r["why"], r["version"], r["generation"]) for r in loads] == [
        ("start", before.trust_version[:16], 1),
        ("SIGHUP", removed[:16], 2),
    ]

    after = await stub.Verify(verify_request(world.request(mandate=mandate)), timeout=10)

    assert process.process.poll() is None
    assert not after.verified
    assert reason(after) == "INVALID_VERIFICATION"
    assert failed_checks(after) == ["signature"]
    assert "issuer-es" in after.message
    assert after.trust_version == removed
    # The request found SIGHUP's configuration in force: it had nothing to reload.
    assert len(trust_loads(process)) == 2
    assert (await stub.Verify(verify_request(world.request()), timeout=10)).verified


async def test_a_trust_file_broken_after_start_denies_everything_until_fixed(
    services: Start, env: dict[str, str], world: World, stub_for: StubFor
) -> None:
    stub = stub_for(services("verification", env))
    good = world.trust_file.read_text()

    world.trust_file.write_text("[[issuers]\nbroken")
    broken = await stub.Verify(verify_request(world.request()), timeout=10)

    assert not broken.verified
    assert reason(broken) == "INTERNAL_ERROR"
    assert {"signature", "issuer", "runtime"} <= set(failed_checks(broken))
    world.trust_file.write_text(good)
    for _ in range(100):
        answer = await stub.Verify(verify_request(world.request()), timeout=10)
        if answer.verified:
            break
        await asyncio.sleep(0.05)
    assert answer.verified, answer.message


def test_an_unusable_trust_file_stops_start_up(
    services: Start, env: dict[str, str], world: World
) -> None:
    (world.root / "attestor.jwks.json").write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}')

    with pytest.raises(RuntimeError, match="private or symmetric key material") as raised:
        services("verification", env)
    assert "Traceback" not in str(raised.value)
    assert "exited with 2" in str(raised.value)


def test_a_database_without_the_schema_stops_start_up(
    services: Start, env: dict[str, str], databases: DatabaseFactory
) -> None:
    bare = databases.create(migrate=False)

    with pytest.raises(RuntimeError, match="govmesh db upgrade") as raised:
        services("verification", {**env, "GOVMESH_DATABASE_URL": bare})
    assert "exited with 2" in str(raised.value)


def test_the_database_url_is_required(services: Start, world: World) -> None:
    environment = {"GOVMESH_TRUST_FILE": str(world.trust_file), "GOVMESH_DATABASE_URL": ""}
    saved = os.environ.pop("GOVMESH_DATABASE_URL", None)
    try:
        with pytest.raises(RuntimeError, match="GOVMESH_DATABASE_URL"):
            services("verification", {k: v for k, v in environment.items() if v})
    finally:
        if saved is not None:
            os.environ["GOVMESH_DATABASE_URL"] = saved


async def test_the_answer_names_the_issuer_it_verified(
    services: Start, env: dict[str, str], world: World, stub_for: StubFor
) -> None:
    stub = stub_for(services("verification", env))
    request = world.request()

    answer = await stub.Verify(verify_request(request), timeout=10)

    assert answer.request_digest == request.request_digest
    assert answer.claims.issuer == ISSUER
    assert answer.claims.proof_id
    assert len(answer.checks) == 11


async def test_sighup_reloads_a_rewrite_stat_cannot_see(
    world: World,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Two writes inside one timestamp tick can leave inode, size, mtime and
    # ctime as they were; requests then see no change, and SIGHUP is how an
    # operator makes the service read the files again. A frozen stat stands in
    # for such a rewrite, with the poll an hour away: without SIGHUP the
    # removed key keeps verifying, after it the key is refused at once.
    monkeypatch.setattr(trustsource, "file_state", lambda paths: tuple(None for _ in paths))
    settings = load_settings(
        VerificationSettings,
        trust_file=world.trust_file,
        database_url=database_url,
        trust_poll_interval_s=3600,
    )
    service = VerificationService(settings)
    server = grpc.aio.server()
    await service.start(Health(health.aio.HealthServicer(), service.service_names))
    try:
        service.register(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = verification_pb2_grpc.VerificationStub(channel)

            async def verify_es(cached: str) -> list[verification_pb2.VerifyResponse]:
                fresh = world.mandate(key=world.issuer_es)  # never verified before
                requests = [world.request(mandate=m) for m in (cached, fresh)]
                return [await stub.Verify(verify_request(r), timeout=10) for r in requests]

            cached = world.mandate(key=world.issuer_es)
            assert all(a.verified for a in await verify_es(cached))

            write_json(world.root / "issuer.jwks.json", jwks(world.issuer, world.issuer_rs))
            removed = load_trust(world.trust_file).version
            unseen = await verify_es(cached)
            assert all(a.verified for a in unseen), [a.message for a in unseen]

            caplog.set_level(logging.INFO, logger="govmesh.verification")
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(200):
                if "trust configuration checked on SIGHUP" in caplog.messages:
                    break
                await asyncio.sleep(0.01)
            answers = await verify_es(cached)

            for answer in answers:
                assert not answer.verified
                assert reason(answer) == "INVALID_VERIFICATION"
                assert failed_checks(answer) == ["signature"]
                assert "issuer-es" in answer.message
                assert answer.trust_version == removed
            assert (await stub.Verify(verify_request(world.request()), timeout=10)).verified
    finally:
        await server.stop(None)
        await service.close()


async def test_valid_requests_beside_a_flood_of_costly_keys_are_verified_in_time(
    services: Start, env: dict[str, str], world: World, stub_for: StubFor
) -> None:
    # As the engine sends them: several batches in flight at once, each under
    # its own deadline, valid requests among hostile ones. A costly key used
    # to take 5.8 ms of the one event loop: 120 in a batch held it for 0.7 s,
    # and the batches behind it missed their deadline with every valid request.
    process = services("verification", env)
    stub = stub_for(process)
    mandate = world.mandate()
    assert (await stub.Verify(verify_request(world.request(mandate=mandate)), timeout=10)).verified
    batches = []
    for _ in range(4):
        batch = [(False, costly_request(world)) for _ in range(120)]
        for position in range(0, 120, 24):
            batch.insert(position, (True, world.request(mandate=mandate)))
        batches.append(batch)

    answers = await asyncio.gather(
        *(
            stub.VerifyBatch(
                verification_pb2.VerifyBatchRequest(requests=[verify_request(r) for _, r in b]),
                timeout=1.5,
            )
            for b in batches
        )
    )

    for batch, answer in zip(batches, answers, strict=True):
        assert len(answer.responses) == len(batch)
        for (valid, _), response in zip(batch, answer.responses, strict=True):
            if valid:
                assert response.verified, response.message
            else:
                assert reason(response) == "INVALID_VERIFICATION"
                assert "exponent is not 65537" in response.message
    assert sum(r.verified for a in answers for r in a.responses) == 4 * 5
    assert "Traceback" not in process.log()


async def test_numbers_beyond_range_are_invalid_and_log_no_traceback(
    services: Start, env: dict[str, str], world: World, stub_for: StubFor
) -> None:
    process = services("verification", {**env, "GOVMESH_LOG_FORMAT": "json"})
    stub = stub_for(process)
    plain, bound = world.mandate(), world.mandate(env={"cluster": "prod-eu"})
    requests = [
        world.request(mandate=world.mandate(exp=10**400)),
        world.request(mandate=world.mandate(iat=10**400)),
        world.request(mandate=world.mandate(exp=1e300)),
        world.request(mandate=plain, proof=world.signed_proof(plain, iat=10**400)),
        world.request(mandate=bound, attestation=world.attestation(exp=10**400)),
        world.request(mandate=bound, attestation=world.attestation(nbf=-1)),
    ]

    answers = [await stub.Verify(verify_request(r), timeout=10) for r in requests]

    for answer in answers:
        assert reason(answer) == "INVALID_VERIFICATION", answer.message
    assert "Traceback" not in process.log()
    assert [r for r in log_records(process) if r.get("level") in ("error", "critical")] == []
    assert (await stub.Verify(verify_request(world.request()), timeout=10)).verified
