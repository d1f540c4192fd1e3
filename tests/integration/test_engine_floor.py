"""The engine's policy epoch floor against real processes and a real Postgres.

A policy replica that missed an activation (here: an epoch written to the
store without a NOTIFY, with the replica's periodic check an hour away) keeps
answering under the epoch before. Engines, new or running, learn the newest
activation from the store through the policy service and refuse that answer.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from govmesh.artifacts.keys import load_private_jwk
from govmesh.artifacts.signing import Activation, sign_activation
from govmesh.cli.devsetup import DEV_ISSUER, DEV_SUBJECT, SAMPLE_POLICY, DevSetup
from govmesh.cli.main import main as govmesh
from govmesh.client import EngineClient, Initiator, issue_mandate
from govmesh.policy.bundle import read_bundle_source
from tests.integration.conftest import Mesh
from tests.support.database import fetch
from tests.support.processes import ServiceProcess

#: Only a NOTIFY could tell the replica of a new epoch during a test.
NOTIFY_ONLY = {"GOVMESH_REFRESH_INTERVAL_S": "3600"}
STRICT = SAMPLE_POLICY.replace("<= 1000", "<= 100")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def activate_without_notify(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> str:
    """Stage a stricter bundle, then write epoch 2 activating it straight to the store."""
    strict = tmp_path / "strict"
    strict.mkdir()
    (strict / "policies.cedar").write_text(STRICT)
    monkeypatch.setenv("GOVMESH_POLICY_TARGET", mesh.policy.address)
    monkeypatch.setenv("GOVMESH_KEYS_DIR", str(mesh.setup.keys_dir))
    monkeypatch.setenv("GOVMESH_TRUST_FILE", str(mesh.setup.trust_file))
    assert await asyncio.to_thread(govmesh, ["policy", "push", "--stage", str(strict)]) == 0
    version = read_bundle_source(strict).version
    admin = load_private_jwk(mesh.setup.keys_dir / "policy-admin.jwk.json")
    await fetch(
        mesh.database_url,
        "INSERT INTO policy_epochs (epoch, active_version, statement, signer_kid, note) "
        "VALUES (2, $1, $2, $3, '')",
        version,
        sign_activation(Activation(2, version), admin),
        admin.as_dict()["kid"],
    )
    return version


async def authorize(mesh: Mesh, engine: ServiceProcess) -> tuple[str, str, list[str], str]:
    async with await EngineClient.connect(engine.address, timeout=10) as client:
        result = await client.authorize(**mesh.request(context={"amount": 250}))
    return result.decision, result.reason, list(result.failed_checks), result.message


async def test_a_new_engine_refuses_a_replica_that_missed_the_newest_activation(
    start_mesh: Callable[..., Mesh],
    services: Callable[..., ServiceProcess],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    mesh = start_mesh(policy_env=NOTIFY_ONLY)
    # Under epoch 1 a transfer of 250 is allowed.
    assert (await authorize(mesh, mesh.engine))[0] == "ALLOW"

    await activate_without_notify(mesh, monkeypatch, tmp_path)
    fresh = services(
        "engine",
        {
            key: value
            for key, value in mesh.engine.env.items()
            if key.startswith("GOVMESH_") and key not in ("GOVMESH_PORT_FILE", "GOVMESH_LISTEN")
        },
    )

    decision, reason, failed, message = await authorize(mesh, fresh)

    # The replica still answers under epoch 1, which would allow.
    assert "under epoch 1, older than 2" in message, message
    assert (decision, reason) == ("DENY", "INCONSISTENT_ANSWERS")
    assert "policy" in failed


async def test_a_running_engine_learns_the_newest_activation_without_an_answer_of_it(
    start_mesh: Callable[..., Mesh], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    mesh = start_mesh(policy_env=NOTIFY_ONLY, engine_env={"GOVMESH_POLICY_FLOOR_INTERVAL_S": "0.2"})
    assert (await authorize(mesh, mesh.engine))[0] == "ALLOW"

    await activate_without_notify(mesh, monkeypatch, tmp_path)

    deadline = time.monotonic() + 20
    while (answer := await authorize(mesh, mesh.engine))[0] == "ALLOW":
        assert time.monotonic() < deadline, "the engine kept allowing under epoch 1"
        await asyncio.sleep(0.1)
    assert answer[:2] == ("DENY", "INCONSISTENT_ANSWERS"), answer


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_engine_is_not_ready_and_denies_until_it_knows_the_newest_epoch(
    services: Callable[..., ServiceProcess],
    dev_setup: DevSetup,
    database_url: str,
    tmp_path: Path,
) -> None:
    policy_address = f"127.0.0.1:{_free_port()}"  # nothing listens there yet
    engine = services(
        "engine",
        {
            "GOVMESH_KEYS_DIR": str(dev_setup.keys_dir),
            "GOVMESH_TRUST_FILE": str(dev_setup.trust_file),
            "GOVMESH_SPOOL_DIR": str(tmp_path / "spool"),
            "GOVMESH_VERIFICATION_TARGET": "127.0.0.1:1",
            "GOVMESH_POLICY_TARGET": policy_address,
            "GOVMESH_LINEAGE_TARGET": "127.0.0.1:1",
            "GOVMESH_POLICY_FLOOR_INTERVAL_S": "0.2",
        },
        wait_serving=False,
    )
    wait_for(lambda: _health(engine, "govmesh.liveness") == SERVING, "the engine to be live")
    assert _health(engine, "") == NOT_SERVING

    async with await EngineClient.connect(engine.address, timeout=10) as client:
        mandate = issue_mandate(
            dev_setup.dev_key("issuer"),
            issuer=DEV_ISSUER,
            subject=DEV_SUBJECT,
            holder_thumbprint=Initiator(dev_setup.dev_key("agent")).thumbprint,
            scope=[{"action": "payments.transfer", "resource": "account:acme/*"}],
        )
        context = {"amount": 250}
        result = await client.authorize(
            action="payments.transfer",
            resource="account:acme/treasury",
            context=context,
            mandate=mandate,
            proof=Initiator(dev_setup.dev_key("agent")).proof(
                mandate, "payments.transfer", "account:acme/treasury", context
            ),
        )
    # Verification is unreachable too, so the caller's artifacts never
    # verified: the answer names only that, never what policy would have said.
    assert (result.decision, result.reason) == ("DENY", "PEER_UNAVAILABLE")
    assert result.failed_checks == ("verification",)

    services(
        "policy",
        {
            "GOVMESH_LISTEN": policy_address,
            "GOVMESH_DATABASE_URL": database_url,
            "GOVMESH_TRUST_FILE": str(dev_setup.trust_file),
            "GOVMESH_KEYS_DIR": str(dev_setup.keys_dir),
            "GOVMESH_POLICY_PATH": str(dev_setup.policies),
            "GOVMESH_POLICY_STATE_FILE": str(tmp_path / "policy-epoch.json"),
        },
    )
    wait_for(lambda: _health(engine, "") == SERVING, "the engine to learn the epoch")


def _health(service: ServiceProcess, name: str) -> int:
    try:
        return service.health(name)
    except grpc.RpcError:
        return -1


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
