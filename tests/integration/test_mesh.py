"""The decision path end to end, over real processes and a real Postgres."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from govmesh.artifacts.canonical import request_digest
from govmesh.cli.devsetup import DevSetup
from govmesh.client import EngineClient, load_engine_keys, verify_grant
from govmesh.v1 import common_pb2, engine_pb2, engine_pb2_grpc
from tests.integration.conftest import Mesh
from tests.support.commands import GOVMESH
from tests.support.database import fetch
from tests.support.processes import ServiceProcess


async def test_allow_end_to_end_is_committed_to_lineage(start_mesh: Callable[..., Mesh]) -> None:
    mesh = start_mesh()
    async with await EngineClient.connect(mesh.engine.address, timeout=10) as engine:
        result = await engine.authorize(**mesh.request())

    assert result.decision == "ALLOW", result
    assert result.allowed
    assert result.lineage is not None
    # The executing side checks the grant with the engine's published key.
    claims = verify_grant(
        result.grant,
        engine_keys=load_engine_keys(mesh.setup.root / "engine.jwks.json"),
        action="payments.transfer",
        resource="account:acme/treasury",
        context={"amount": 250},
    )
    assert claims["jti"] == result.decision_id
    assert claims["lin"]["index"] == result.lineage.index
    rows = await fetch(
        mesh.database_url,
        "SELECT idx, entry, leaf_hash FROM lineage_entries WHERE decision_id = $1::uuid",
        result.decision_id,
    )
    assert len(rows) == 1
    entry = json.loads(rows[0]["entry"])
    assert entry["decision"] == "ALLOW"
    assert entry["request_digest"] == result.request_digest
    assert rows[0]["idx"] == result.lineage.index
    assert bytes(rows[0]["leaf_hash"]) == result.lineage.leaf_hash


async def test_policy_deny_is_recorded_with_its_reason(start_mesh: Callable[..., Mesh]) -> None:
    mesh = start_mesh()
    async with await EngineClient.connect(mesh.engine.address, timeout=10) as engine:
        result = await engine.authorize(**mesh.request(context={"amount": 5000}))

    assert result.decision == "DENY"
    assert result.reason == "POLICY_MISMATCH"
    assert result.failed_checks == ("policy",)
    rows = await fetch(
        mesh.database_url,
        "SELECT entry FROM lineage_entries WHERE decision_id = $1::uuid",
        result.decision_id,
    )
    assert json.loads(rows[0]["entry"])["reason"] == "POLICY_MISMATCH"


# --- peers that are down or hang ---------------------------------------------------------


async def test_a_killed_verification_service_denies_peer_unavailable(
    start_mesh: Callable[..., Mesh],
) -> None:
    mesh = start_mesh()
    mesh.verification.kill()
    async with await EngineClient.connect(mesh.engine.address, timeout=10) as engine:
        result = await engine.authorize(**mesh.request())

    assert result.decision == "DENY"
    assert result.reason == "PEER_UNAVAILABLE"
    assert "verification" in result.failed_checks
    assert not result.allowed


async def test_a_killed_policy_authority_denies_peer_unavailable(
    start_mesh: Callable[..., Mesh],
) -> None:
    mesh = start_mesh()
    mesh.policy.kill()
    async with await EngineClient.connect(mesh.engine.address, timeout=10) as engine:
        result = await engine.authorize(**mesh.request())

    assert result.reason == "PEER_UNAVAILABLE"
    assert "policy" in result.failed_checks


TIGHT = {
    "GOVMESH_VERIFICATION_TIMEOUT_MS": "300",
    "GOVMESH_POLICY_TIMEOUT_MS": "300",
    "GOVMESH_LINEAGE_TIMEOUT_MS": "1000",
    "GOVMESH_DECISION_BUDGET_MS": "1500",
    # Not stretched for a caller that can wait: the budget is the bound here.
    "GOVMESH_DECISION_BUDGET_MAX_MS": "1500",
}


@pytest.mark.parametrize(
    ("peer", "warm"),
    [("verification", True), ("policy", True), ("verification", False), ("policy", False)],
)
async def test_a_hanging_peer_denies_peer_timeout_within_the_budget(
    start_mesh: Callable[..., Mesh], peer: str, warm: bool
) -> None:
    mesh = start_mesh(engine_env=TIGHT)
    async with await EngineClient.connect(mesh.engine.address, timeout=10) as engine:
        if warm:  # the peer hangs mid-life, on an established connection
            assert (await engine.authorize(**mesh.request())).decision == "ALLOW"
        getattr(mesh, peer).pause()  # the process keeps its socket and never answers
        request = mesh.request()
        started = time.monotonic()
        result = await engine.authorize(**request)
        elapsed = time.monotonic() - started

    assert result.decision == "DENY"
    assert result.reason == "PEER_TIMEOUT", result.message
    assert peer in result.failed_checks
    # Answered within the budget, not whenever the peer wakes up; the margin covers
    # the client's side of the call on a busy machine.
    assert elapsed < float(TIGHT["GOVMESH_DECISION_BUDGET_MS"]) / 1000 + 0.25
    rows = await fetch(
        mesh.database_url,
        "SELECT entry FROM lineage_entries WHERE decision_id = $1::uuid",
        result.decision_id,
    )
    assert json.loads(rows[0]["entry"])["reason"] == "PEER_TIMEOUT"


STRETCHY = {
    "GOVMESH_VERIFICATION_TIMEOUT_MS": "100",
    "GOVMESH_POLICY_TIMEOUT_MS": "100",
    "GOVMESH_LINEAGE_TIMEOUT_MS": "150",
    "GOVMESH_DECISION_BUDGET_MS": "300",
    "GOVMESH_DECISION_BUDGET_MAX_MS": "6000",
}


@pytest.mark.parametrize("peer", ["verification", "policy", "lineage"])
async def test_a_peer_stalled_past_its_deadline_allows_a_caller_that_can_wait(
    start_mesh: Callable[..., Mesh], peer: str
) -> None:
    # A stall of the machine: the peer process does not run for 0.6 s, six
    # times its configured deadline. A caller that gives the engine 10 s gets
    # its ALLOW once the peer runs again; one that gives it 0.6 s is denied
    # in time, with the reason, before its own deadline.
    mesh = start_mesh(engine_env=STRETCHY)
    stalled = getattr(mesh, peer)
    async with await EngineClient.connect(mesh.engine.address, timeout=10) as engine:
        assert (await engine.authorize(**mesh.request())).decision == "ALLOW"  # warm

        stalled.pause()
        asyncio.get_running_loop().call_later(0.6, stalled.resume)
        patient = await engine.authorize(**mesh.request(), timeout=10)

        stalled.pause()
        asyncio.get_running_loop().call_later(0.6, stalled.resume)
        hurried = await engine.authorize(**mesh.request(), timeout=0.6)
        await asyncio.sleep(0.7)

    assert patient.decision == "ALLOW", patient.message
    assert patient.grant
    assert hurried.decision == "DENY"
    assert hurried.answered, "the engine's DENY came after the caller's deadline"
    expected = "LINEAGE_UNAVAILABLE" if peer == "lineage" else "PEER_TIMEOUT"
    assert hurried.reason == expected, hurried.message


@pytest.mark.parametrize("peer", ["verification", "policy", "lineage"])
async def test_a_peer_back_from_a_stall_is_used_again_long_before_its_breaker_cools_down(
    start_mesh: Callable[..., Mesh], peer: str
) -> None:
    mesh = start_mesh(
        engine_env={
            "GOVMESH_VERIFICATION_TIMEOUT_MS": "200",
            "GOVMESH_POLICY_TIMEOUT_MS": "200",
            "GOVMESH_LINEAGE_TIMEOUT_MS": "300",
            "GOVMESH_DECISION_BUDGET_MS": "600",
            "GOVMESH_DECISION_BUDGET_MAX_MS": "600",
            "GOVMESH_BREAKER_FAILURES": "2",
            # A cool-down far longer than this test: only the health checks end it.
            "GOVMESH_BREAKER_COOL_DOWN_MS": "120000",
        }
    )
    stalled = getattr(mesh, peer)
    async with await EngineClient.connect(mesh.engine.address, timeout=10) as engine:
        assert (await engine.authorize(**mesh.request())).decision == "ALLOW"  # warm

        stalled.pause()
        try:
            for _ in range(6):
                denied = await engine.authorize(**mesh.request())
                assert denied.decision == "DENY"
                if "circuit open" in denied.message:
                    break
            assert "circuit open" in denied.message, denied.message
        finally:
            stalled.resume()

        deadline = time.monotonic() + 15
        result = await engine.authorize(**mesh.request())
        while result.decision != "ALLOW" and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            result = await engine.authorize(**mesh.request())

    assert result.decision == "ALLOW", result.message
    assert f"{peer} answers its health check" in mesh.engine.log()


async def test_no_lineage_no_allow_and_the_deny_is_appended_when_lineage_returns(
    start_mesh: Callable[..., Mesh], services: Callable[..., ServiceProcess]
) -> None:
    mesh = start_mesh(engine_env={"GOVMESH_SPOOL_RETRY_S": "0.2"})
    address = mesh.lineage.address
    mesh.lineage.kill()
    async with await EngineClient.connect(mesh.engine.address, timeout=10) as engine:
        result = await engine.authorize(**mesh.request())

    assert result.decision == "DENY"
    assert result.reason == "LINEAGE_UNAVAILABLE"
    assert result.grant == ""
    assert result.lineage is None

    # Lineage comes back on the same address; the spooled deny is appended.
    services("lineage", {**mesh.lineage.env, "GOVMESH_LISTEN": address})
    deadline = time.monotonic() + 20
    rows: list[Any] = []
    while time.monotonic() < deadline and not rows:
        rows = await fetch(
            mesh.database_url,
            "SELECT entry FROM lineage_entries WHERE decision_id = $1::uuid",
            result.decision_id,
        )
        await asyncio.sleep(0.2)
    assert rows, "the spooled deny never reached lineage"
    entry = json.loads(rows[0]["entry"])
    assert entry["decision"] == "DENY"
    assert entry["reason"] == "LINEAGE_UNAVAILABLE"


# --- bad input ---------------------------------------------------------------------------


async def test_a_semantically_malformed_request_is_an_answered_deny(
    start_mesh: Callable[..., Mesh],
) -> None:
    mesh = start_mesh()
    async with await EngineClient.connect(mesh.engine.address, timeout=10) as engine:
        result = await engine.authorize(
            action="", resource="\x00", mandate="garbage", proof="garbage"
        )

    assert result.answered
    assert result.decision == "DENY"
    assert result.reason == "MALFORMED_REQUEST"


#: Spellings of the sample policy's forbidden `account:acme/frozen` that an executor
#: which decodes, normalises, globs or folds case reads as that account.
OTHER_SPELLINGS_OF_FROZEN = [
    "account:acme/frozen/",
    "account:acme//frozen",
    "account:acme/./frozen",
    "account:acme/treasury/../frozen",
    "account:acme/frozen%00",
    "account:acme/%66rozen",
    "account:acme/%2566rozen",
    "account:acme%2ffrozen",
    "account:acme/frozen?",
    "account:acme/frozen#x",
    "account:acme/froze*",
    "account:acme/Frozen",
    "account:acme/\uff46rozen",
    "account:acme/frozen.",
    "account:acme/frozen;x",
    "account:acme\\frozen",
    "account:acme/frozen\t",
]


async def test_no_other_spelling_of_a_forbidden_resource_is_allowed(
    start_mesh: Callable[..., Mesh],
) -> None:
    mesh = start_mesh()
    # A mandate for any resource: only policy stands between the agent and the account.
    mandate = mesh.mandate(scope=[{"action": "payments.transfer", "resource": "*"}])
    async with await EngineClient.connect(mesh.engine.address, timeout=10) as engine:
        treasury = await engine.authorize(**mesh.request(mandate=mandate))
        frozen = await engine.authorize(
            **mesh.request(resource="account:acme/frozen", mandate=mandate)
        )
        spellings = {
            spelling: await engine.authorize(**mesh.request(resource=spelling, mandate=mandate))
            for spelling in OTHER_SPELLINGS_OF_FROZEN
        }

    assert treasury.decision == "ALLOW", treasury
    assert (frozen.decision, frozen.reason) == ("DENY", "POLICY_MISMATCH")
    assert {s: (r.answered, r.decision, r.reason) for s, r in spellings.items()} == {
        s: (True, "DENY", "MALFORMED_REQUEST") for s in OTHER_SPELLINGS_OF_FROZEN
    }
    rows = await fetch(
        mesh.database_url,
        "SELECT entry FROM lineage_entries WHERE decision_id::text = ANY($1::text[])",
        [r.decision_id for r in spellings.values()],
    )
    assert sorted(json.loads(row["entry"])["reason"] for row in rows) == [
        "MALFORMED_REQUEST"
    ] * len(OTHER_SPELLINGS_OF_FROZEN)


async def test_bytes_that_are_not_a_request_get_an_answered_deny(
    start_mesh: Callable[..., Mesh],
) -> None:
    mesh = start_mesh()
    async with grpc.aio.insecure_channel(mesh.engine.address) as channel:
        raw: grpc.aio.UnaryUnaryMultiCallable[bytes, engine_pb2.AuthorizeResponse]
        raw = channel.unary_unary(
            "/govmesh.v1.AuthorizationEngine/Authorize",
            request_serializer=None,
            response_deserializer=engine_pb2.AuthorizeResponse.FromString,
        )
        response = await raw(b"\xff\xff\xff\xff garbage", timeout=10)

    assert response.decision == common_pb2.DENY
    assert response.reason == common_pb2.MALFORMED_REQUEST
    assert "not a valid AuthorizeRequest" in response.message
    rows = await fetch(
        mesh.database_url,
        "SELECT entry FROM lineage_entries WHERE decision_id = $1::uuid",
        response.decision_id,
    )
    assert json.loads(rows[0]["entry"])["reason"] == "MALFORMED_REQUEST"

    async with await EngineClient.connect(mesh.engine.address, timeout=10) as engine:
        result = await engine.authorize(**mesh.request())
    assert result.decision == "ALLOW"


# --- lifecycle ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["engine", "verification", "policy", "lineage"])
def test_each_service_stops_gracefully_on_sigterm(
    start_mesh: Callable[..., Mesh], name: str
) -> None:
    mesh = start_mesh()
    service: ServiceProcess = getattr(mesh, name)

    assert service.terminate() == 0
    log = service.log()
    assert "stopping" in log
    assert "stopped" in log
    assert "Traceback" not in log


async def test_an_in_flight_decision_is_answered_during_a_graceful_stop(
    start_mesh: Callable[..., Mesh],
) -> None:
    mesh = start_mesh(engine_env=TIGHT)
    mesh.verification.pause()
    async with await EngineClient.connect(mesh.engine.address, timeout=10) as engine:
        pending = asyncio.ensure_future(engine.authorize(**mesh.request()))
        await asyncio.sleep(0.1)
        mesh.engine.process.send_signal(signal.SIGTERM)
        result = await pending

    assert result.answered
    assert result.reason == "PEER_TIMEOUT"
    assert await asyncio.to_thread(mesh.engine.process.wait, 20) == 0


def test_unusable_settings_stop_the_start_with_a_message_not_a_traceback(
    services: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    env = {**os.environ, "GOVMESH_DECISION_BUDGET_MS": "soon", "GOVMESH_KEYS_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "govmesh.engine"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "GOVMESH_DECISION_BUDGET_MS" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_trust_file_stops_the_start_with_a_message(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "GOVMESH_TRUST_FILE": str(tmp_path / "nope.toml"),
        "GOVMESH_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none",
    }
    result = subprocess.run(
        [GOVMESH, "serve", "verification"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "nope.toml" in result.stderr
    assert "Traceback" not in result.stderr


SERVICE_NAMES = {
    "engine": "govmesh.v1.AuthorizationEngine",
    "verification": "govmesh.v1.Verification",
    "policy": "govmesh.v1.PolicyAuthority",
    "lineage": "govmesh.v1.Lineage",
}


@pytest.fixture
def start_alone(
    services: Callable[..., ServiceProcess],
    database_url: str,
    dev_setup: DevSetup,
    tmp_path: Path,
) -> Callable[..., ServiceProcess]:
    """Start one service by itself, as a pod does.

    The engine's peers are not there but for one policy replica: an engine
    reports SERVING only once it knows the newest activated policy epoch.
    """
    # Nothing listens on port 1: the engine must start without its peers.
    nowhere = "127.0.0.1:1"
    settings = {
        "engine": {
            "GOVMESH_KEYS_DIR": str(dev_setup.keys_dir),
            "GOVMESH_SPOOL_DIR": str(tmp_path / "spool"),
            "GOVMESH_VERIFICATION_TARGET": nowhere,
            "GOVMESH_POLICY_TARGET": nowhere,
            "GOVMESH_LINEAGE_TARGET": nowhere,
        },
        "verification": {
            "GOVMESH_DATABASE_URL": database_url,
            "GOVMESH_TRUST_FILE": str(dev_setup.trust_file),
        },
        "policy": {
            "GOVMESH_DATABASE_URL": database_url,
            "GOVMESH_TRUST_FILE": str(dev_setup.trust_file),
            "GOVMESH_KEYS_DIR": str(dev_setup.keys_dir),
            "GOVMESH_POLICY_PATH": str(dev_setup.policies),
            "GOVMESH_POLICY_STATE_FILE": str(tmp_path / "policy-epoch.json"),
        },
        "lineage": {
            "GOVMESH_DATABASE_URL": database_url,
            "GOVMESH_KEYS_DIR": str(dev_setup.keys_dir),
        },
    }

    def start(name: str, **kwargs: Any) -> ServiceProcess:
        if name == "engine":
            policy = services("policy", settings["policy"])
            engine = {**settings[name], "GOVMESH_POLICY_TARGET": policy.address}
            return services(name, engine, **kwargs)
        return services(name, settings[name], **kwargs)

    return start


@pytest.mark.parametrize("name", list(SERVICE_NAMES))
def test_govmesh_serve_runs_a_service(
    start_alone: Callable[..., ServiceProcess], name: str
) -> None:
    service = start_alone(name, command=[GOVMESH, "serve", name])

    assert service.health() == 1  # SERVING
    assert service.health(SERVICE_NAMES[name]) == 1  # and it is the service asked for
    assert service.terminate() == 0
    assert "Traceback" not in service.log()


def test_every_service_answers_health_and_reflection(start_mesh: Callable[..., Mesh]) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    mesh = start_mesh()
    for name, service_name in SERVICE_NAMES.items():
        process: ServiceProcess = getattr(mesh, name)
        assert process.health() == 1
        assert process.health(service_name) == 1
        assert process.health("govmesh.liveness") == 1
        with grpc.insecure_channel(process.address) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            [answer] = list(
                stub.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
                )
            )
        listed = {s.name for s in answer.list_services_response.service}
        assert {service_name, "grpc.health.v1.Health"} <= listed


@pytest.mark.parametrize("name", list(SERVICE_NAMES))
def test_sigterm_reports_not_serving_before_the_server_stops(
    start_alone: Callable[..., ServiceProcess], name: str
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    service = start_alone(name)
    seen: list[int] = []
    with grpc.insecure_channel(service.address) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=30
        )
        seen.append(next(stream).status)
        service.process.send_signal(signal.SIGTERM)
        try:
            for update in stream:
                seen.append(update.status)
        except grpc.RpcError:
            pass  # the server went away after announcing it
    assert seen[0] == health_pb2.HealthCheckResponse.SERVING
    assert health_pb2.HealthCheckResponse.NOT_SERVING in seen[1:]
    assert service.process.wait(20) == 0


def test_service_logs_are_one_json_object_per_line(
    services: Callable[..., ServiceProcess], database_url: str, dev_setup: DevSetup
) -> None:
    lineage = services(
        "lineage",
        {
            "GOVMESH_DATABASE_URL": database_url,
            "GOVMESH_KEYS_DIR": str(dev_setup.keys_dir),
            "GOVMESH_LOG_FORMAT": "json",
        },
    )
    assert lineage.terminate() == 0
    records = [json.loads(line) for line in lineage.log().splitlines() if line.strip()]
    serving = next(r for r in records if r["msg"] == "serving")
    assert serving["service"] == "lineage"
    assert serving["address"] == lineage.address
    assert {r["level"] for r in records} <= {"debug", "info", "warning", "error"}


def test_the_sync_client_gets_the_same_answers(start_mesh: Callable[..., Mesh]) -> None:
    from govmesh.client import SyncEngineClient

    mesh = start_mesh()
    with SyncEngineClient.connect(mesh.engine.address, timeout=10) as engine:
        allowed = engine.authorize(**mesh.request())
        denied = engine.authorize(**mesh.request(resource="account:acme/frozen"))
    assert allowed.allowed
    assert denied.reason == "POLICY_MISMATCH"
    assert "frozen-accounts" in denied.message
    with SyncEngineClient.connect("127.0.0.1:1", timeout=1) as nowhere:
        unanswered = nowhere.authorize(**mesh.request())
    assert not unanswered.answered
    assert unanswered.decision == "DENY"
    assert unanswered.reason in {"PEER_UNAVAILABLE", "PEER_TIMEOUT"}


async def test_a_caller_that_hangs_up_cannot_keep_its_deny_out_of_the_log(
    start_mesh: Callable[..., Mesh],
) -> None:
    mesh = start_mesh(engine_env=TIGHT)
    mesh.verification.pause()
    request = mesh.authorize_request(resource="account:acme/frozen")  # policy forbids
    async with grpc.aio.insecure_channel(mesh.engine.address) as channel:
        stub = engine_pb2_grpc.AuthorizationEngineStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await stub.Authorize(request, timeout=0.1)
    assert gone.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    digest = request_digest(request.action, request.resource, {"amount": 250})
    rows: list[Any] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not rows:
        await asyncio.sleep(0.2)
        rows = await fetch(
            mesh.database_url,
            "SELECT entry FROM lineage_entries WHERE convert_from(entry, 'UTF8')::jsonb"
            " ->> 'request_digest' = $1",
            digest,
        )
    assert rows, "the decision of a caller that hung up was not recorded"
    entry = json.loads(rows[0]["entry"])
    assert entry["decision"] == "DENY"
    assert entry["reason"] == "POLICY_MISMATCH"
