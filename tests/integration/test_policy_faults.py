"""The policy authority under faults, as real processes: hostile requests, a lost database,
a store rolled back, an authority that hands out doctored bundles."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2

from govmesh.artifacts.keys import generate_ed25519
from govmesh.artifacts.signing import sign_bundle
from govmesh.cli.devsetup import DevSetup
from govmesh.policy.bundle import read_bundle_source
from govmesh.runtime.db import libpq_database_url
from govmesh.v1 import common_pb2, policy_pb2, policy_pb2_grpc
from tests.integration.policy_faults import PostgresProxy
from tests.integration.test_policy_service import STRICT, Cli, evaluate, folder, wait_for
from tests.support.database import fetch, run_sync
from tests.support.processes import ServiceProcess

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def script(url: str, statements: str) -> None:
    """Run SQL statements on `url` as the superuser the tests connect as."""
    conn = await asyncpg.connect(libpq_database_url(url))
    try:
        await conn.execute(statements)
    finally:
        await conn.close()


def health(service: ServiceProcess) -> int:
    try:
        return service.health()
    except grpc.RpcError:
        return -1


@pytest.fixture
def cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, dev_setup: DevSetup
) -> Cli:
    return Cli(capsys, monkeypatch, dev_setup)


@pytest.fixture
def policy_env(dev_setup: DevSetup, database_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "GOVMESH_DATABASE_URL": database_url,
        "GOVMESH_TRUST_FILE": str(dev_setup.trust_file),
        "GOVMESH_KEYS_DIR": str(dev_setup.keys_dir),
        "GOVMESH_POLICY_PATH": str(dev_setup.policies),
        "GOVMESH_POLICY_STATE_FILE": str(tmp_path / "state" / "policy-epoch.json"),
    }


def ask(service: ServiceProcess, context: dict[str, Any], *, principal: str = "agent") -> None:
    """One Evaluate with a context of the caller's choosing."""
    request = policy_pb2.EvaluateRequest(
        request_digest="digest",
        principal=principal,
        issuer="https://issuer.govmesh.dev",
        action="payments.transfer",
        resource="account:acme/treasury",
    )
    json_format.ParseDict(context, request.context)
    with grpc.insecure_channel(service.address) as channel:
        policy_pb2_grpc.PolicyAuthorityStub(channel).Evaluate(request, timeout=10)


# --- M2: one request must not stop the shadow report ------------------------------------


def test_a_request_with_nul_characters_never_stops_the_shadow_report(
    services: Callable[..., ServiceProcess],
    policy_env: dict[str, str],
    cli: Cli,
    tmp_path: Path,
) -> None:
    replica = services("policy", {**policy_env, "GOVMESH_SHADOW_FLUSH_INTERVAL_S": "0.1"})
    code, out = cli(replica, "push", "--shadow", str(folder(tmp_path, "strict", STRICT)))
    assert code == 0, out

    def report() -> dict[str, Any]:
        code, out = cli(replica, "diff", "--json")
        assert code in (0, 1), out
        document: dict[str, Any] = json.loads(out)
        return document

    # Anyone who reaches the authority (or the engine, with a forged mandate) chooses these.
    disagreeing = {"request": {"amount": 500}, "env": {}, "attribution": {}}
    ask(replica, {**disagreeing, "note": "a\x00b", "k\x00": "v"})
    ask(replica, disagreeing, principal="agent\x00")
    for _ in range(3):
        ask(replica, disagreeing)

    wait_for(lambda: report()["disagreed"] == 5, "every disagreement to be recorded")
    shown = report()
    assert (shown["evaluated"], shown["dropped"]) == (5, 0)
    contexts = [item["context"] for item in shown["disagreements"]]
    assert {**disagreeing, "note": "a\x00b", "k\x00": "v"} in contexts
    assert "cannot record shadow" not in replica.log()
    # Still recording afterwards.
    ask(replica, disagreeing)
    wait_for(lambda: report()["disagreed"] == 6, "the next disagreement")
    assert evaluate(replica, 500).decision == common_pb2.ALLOW


# --- M4: a store rolled back is not served, even after a restart ------------------------


def test_a_restarted_replica_refuses_a_store_rolled_back_behind_it(
    services: Callable[..., ServiceProcess],
    policy_env: dict[str, str],
    cli: Cli,
    database_url: str,
    tmp_path: Path,
) -> None:
    replica = services("policy", policy_env)
    freeze = folder(tmp_path, "freeze", STRICT)
    code, out = cli(replica, "push", str(freeze))
    assert code == 0 and "epoch 2" in out, out
    assert evaluate(replica, 500).decision == common_pb2.DENY
    assert replica.terminate() == 0
    # Whoever owns the tables deletes the freeze while the replica is down.
    run_sync(
        script(
            database_url,
            "BEGIN; ALTER TABLE policy_epochs DISABLE TRIGGER USER; "
            "DELETE FROM policy_epochs WHERE epoch = 2; "
            "ALTER TABLE policy_epochs ENABLE TRIGGER USER; COMMIT",
        )
    )

    restarted = services("policy", policy_env, wait_serving=False)

    wait_for(lambda: "went back from epoch 2 to 1" in restarted.log(), "the refusal")
    assert health(restarted) == NOT_SERVING
    with pytest.raises(grpc.RpcError) as refused:
        evaluate(restarted, 500)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "went back from epoch 2 to 1" in str(refused.value.details())
    # An admin activating the freeze again, at a new epoch, is served at once.
    code, out = cli(restarted, "activate", read_bundle_source(freeze).version)
    assert code == 0 and "epoch 2" in out, out
    assert health(restarted) == SERVING
    answer = evaluate(restarted, 500)
    assert (answer.bundle.epoch, answer.decision) == (2, common_pb2.DENY)


# --- M3: a replica cut off from its store stops answering, and comes back ---------------


def test_a_replica_that_loses_its_database_stops_answering_then_recovers(
    services: Callable[..., ServiceProcess],
    policy_env: dict[str, str],
    cli: Cli,
    database_url: str,
    tmp_path: Path,
) -> None:
    fast = {"GOVMESH_REFRESH_INTERVAL_S": "1"}  # so staleness is bounded at 3 s
    proxy = PostgresProxy(database_url)
    try:
        cut_off = services("policy", {**policy_env, **fast, "GOVMESH_DATABASE_URL": proxy.url})
        other = services(
            "policy",
            {
                **policy_env,
                **fast,
                "GOVMESH_POLICY_STATE_FILE": str(tmp_path / "other" / "epoch.json"),
            },
        )
        assert (evaluate(cut_off, 500).bundle.epoch, evaluate(cut_off, 500).decision) == (
            1,
            common_pb2.ALLOW,
        )
        # The healthy replica is asked without pause the whole time: it must never flap.
        answered: list[int] = []
        failures: list[str] = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                try:
                    answered.append(evaluate(other, 500).bundle.epoch)
                except grpc.RpcError as exc:
                    failures.append(str(exc))

        worker = threading.Thread(target=hammer)
        worker.start()
        try:
            proxy.cut()
            # An emergency freeze, activated while the first replica cannot hear of it.
            code, out = cli(other, "push", str(folder(tmp_path, "freeze", STRICT)))
            assert code == 0 and "epoch 2" in out, out

            wait_for(lambda: health(cut_off) == NOT_SERVING, "the cut-off replica to stop")
            with pytest.raises(grpc.RpcError) as refused:
                evaluate(cut_off, 500)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "has not confirmed epoch 1" in str(refused.value.details())

            proxy.restore()
            wait_for(lambda: health(cut_off) == SERVING, "the replica to recover on its own")
            time.sleep(1)
        finally:
            stop.set()
            worker.join(30)
        answer = evaluate(cut_off, 500)
        assert (answer.bundle.epoch, answer.decision) == (2, common_pb2.DENY)
        assert not failures, failures[:3]
        assert answered and answered[-1] == 2
        assert health(other) == SERVING
    finally:
        proxy.close()


# --- L4: local evaluation only of bundles that are what was asked for, and signed --------


def test_test_and_diff_refuse_a_fetched_bundle_that_is_not_the_version_or_not_signed(
    services: Callable[..., ServiceProcess],
    policy_env: dict[str, str],
    cli: Cli,
    database_url: str,
    tmp_path: Path,
) -> None:
    replica = services("policy", policy_env)
    strict = folder(tmp_path, "strict", STRICT)
    version = read_bundle_source(strict).version
    code, out = cli(replica, "push", "--stage", str(strict))  # compiled and kept by the replica
    assert code == 0, out
    requests = tmp_path / "requests.json"
    requests.write_text(
        json.dumps(
            {
                "principal": "spiffe://govmesh.dev/agent/demo",
                "issuer": "https://issuer.govmesh.dev",
                "action": "payments.transfer",
                "resource": "account:acme/treasury",
                "context": {"request": {"amount": 500}},
            }
        )
    )
    code, out = cli(replica, "test", str(requests), "--bundle", version[:12], "--json")
    assert code == 0 and json.loads(out)["results"][0]["decision"] == "DENY", out

    # The stored content is swapped for a bundle that permits everything.
    allow_all = folder(tmp_path, "allow-all", "permit (principal, action, resource);")
    doctored = read_bundle_source(allow_all).canonical()
    run_sync(fetch(database_url, "ALTER TABLE policy_bundles DISABLE TRIGGER USER"))
    run_sync(
        fetch(
            database_url,
            "UPDATE policy_bundles SET content = $1 WHERE version = $2",
            doctored,
            version,
        )
    )
    for arguments in (
        ("test", str(requests), "--bundle", version[:12]),
        ("test", str(requests), "--bundle", version),
        ("diff", "--requests", str(requests), "--base", str(strict), "--against", version),
    ):
        code, out = cli(replica, *arguments)
        assert code == 1, out
        assert "does not hash to" in out and version in out, out
        assert "ALLOW" not in out and "DENY" not in out, out

    # The right content, but the signature is a stranger's.
    stranger = generate_ed25519()
    run_sync(
        fetch(
            database_url,
            "UPDATE policy_bundles SET content = $1, signature = $2 WHERE version = $3",
            read_bundle_source(strict).canonical(),
            sign_bundle(version, stranger),
            version,
        )
    )
    code, out = cli(replica, "test", str(requests), "--bundle", version)
    assert code == 1, out
    assert "not a trusted policy admin" in out and "DENY" not in out, out
