"""The policy authority as real processes: health, convergence, restarts, the CLI."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2

from govmesh.artifacts.keys import generate_ed25519, load_private_jwk, write_private_jwk
from govmesh.artifacts.signing import Activation, sign_activation
from govmesh.cli.devsetup import SAMPLE_POLICY, DevSetup
from govmesh.cli.main import main as govmesh
from govmesh.policy.bundle import read_bundle_source
from govmesh.v1 import common_pb2, policy_pb2, policy_pb2_grpc
from tests.support.database import fetch, run_sync
from tests.support.processes import ServiceProcess

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
STRICT = SAMPLE_POLICY.replace("<= 1000", "<= 100")
#: Long enough that only a NOTIFY can tell a replica of a new epoch during a test.
NOTIFY_ONLY = {"GOVMESH_REFRESH_INTERVAL_S": "3600"}


def evaluate(
    service: ServiceProcess, amount: int = 500, *, digest: str = "digest"
) -> policy_pb2.EvaluateResponse:
    request = policy_pb2.EvaluateRequest(
        request_digest=digest,
        principal="spiffe://govmesh.dev/agent/demo",
        issuer="https://issuer.govmesh.dev",
        action="payments.transfer",
        resource="account:acme/treasury",
        decision_id=f"decision-{digest}",
    )
    json_format.ParseDict(
        {"request": {"amount": amount}, "env": {}, "attribution": {}}, request.context
    )
    with grpc.insecure_channel(service.address) as channel:
        answer: policy_pb2.EvaluateResponse = policy_pb2_grpc.PolicyAuthorityStub(channel).Evaluate(
            request, timeout=10
        )
        return answer


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def folder(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "policies.cedar").write_text(text)
    return path


class Cli:
    """`govmesh policy ...` run in this process against a real authority."""

    def __init__(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, setup: DevSetup
    ) -> None:
        self._capsys = capsys
        self._monkeypatch = monkeypatch
        monkeypatch.setenv("GOVMESH_KEYS_DIR", str(setup.keys_dir))
        monkeypatch.setenv("GOVMESH_TRUST_FILE", str(setup.trust_file))

    def __call__(self, target: ServiceProcess, *args: str) -> tuple[int, str]:
        self._monkeypatch.setenv("GOVMESH_POLICY_TARGET", target.address)
        self._capsys.readouterr()
        code = govmesh(["policy", *args])
        captured = self._capsys.readouterr()
        return code, captured.out + captured.err


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
        "GOVMESH_POLICY_STATE_FILE": str(tmp_path / "state" / "policy-epoch.json"),
    }


def test_no_bundle_means_not_serving_and_no_answer_then_a_push_serves(
    services: Callable[..., ServiceProcess], policy_env: dict[str, str], cli: Cli, tmp_path: Path
) -> None:
    replica = services("policy", policy_env, wait_serving=False)
    wait_for(lambda: _health(replica) == NOT_SERVING, "NOT_SERVING")
    assert _health(replica, "govmesh.liveness") == SERVING  # alive, not ready: no restart

    with pytest.raises(grpc.RpcError) as refused:
        evaluate(replica, 1)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no valid policy bundle" in str(refused.value.details())

    code, out = cli(replica, "push", str(folder(tmp_path, "v1", SAMPLE_POLICY)))

    assert code == 0, out
    assert "epoch 1" in out
    assert _health(replica) == SERVING
    assert _health(replica, "govmesh.v1.PolicyAuthority") == SERVING
    answer = evaluate(replica, 250)
    assert answer.decision == common_pb2.ALLOW
    assert answer.bundle.epoch == 1


def _health(service: ServiceProcess, name: str = "") -> int:
    try:
        return service.health(name)
    except grpc.RpcError:
        return -1


def test_two_replicas_converge_on_a_new_activation_and_swap_atomically(
    services: Callable[..., ServiceProcess],
    policy_env: dict[str, str],
    dev_setup: DevSetup,
    cli: Cli,
    tmp_path: Path,
) -> None:
    start = {**policy_env, **NOTIFY_ONLY, "GOVMESH_POLICY_PATH": str(dev_setup.policies)}
    first = services("policy", start)
    second = services("policy", start)
    old = evaluate(second)
    assert (old.bundle.epoch, old.decision) == (1, common_pb2.ALLOW)
    assert evaluate(first).bundle == old.bundle

    # Ask the second replica without pause while the first takes the new activation.
    seen: list[tuple[int, str, int]] = []
    stop = threading.Event()

    def hammer() -> None:
        n = 0
        while not stop.is_set():
            answer = evaluate(second, digest=f"d{n}")
            assert answer.request_digest == f"d{n}"
            seen.append((answer.bundle.epoch, answer.bundle.version, answer.decision))
            n += 1

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        time.sleep(0.3)
        code, out = cli(first, "push", str(folder(tmp_path, "strict", STRICT)))
        assert code == 0, out
        wait_for(lambda: bool(seen) and seen[-1][0] == 2, "the second replica to follow")
        time.sleep(0.2)
    finally:
        stop.set()
        worker.join(30)

    new_version = read_bundle_source(tmp_path / "strict").version
    # Every answer is wholly of one state: the old bundle allows 500, the new one does not.
    allowed = {(1, old.bundle.version, common_pb2.ALLOW), (2, new_version, common_pb2.DENY)}
    assert set(seen) == allowed, set(seen) - allowed
    epochs = [epoch for epoch, _, _ in seen]
    assert epochs == sorted(epochs)  # never back to the old state once swapped
    assert second.process.poll() is None  # no restart
    assert evaluate(first).bundle == evaluate(second).bundle


def test_the_periodic_check_finds_an_epoch_nobody_announced(
    services: Callable[..., ServiceProcess],
    policy_env: dict[str, str],
    dev_setup: DevSetup,
    cli: Cli,
    database_url: str,
    tmp_path: Path,
) -> None:
    replica = services(
        "policy",
        {
            **policy_env,
            "GOVMESH_POLICY_PATH": str(dev_setup.policies),
            "GOVMESH_REFRESH_INTERVAL_S": "0.3",
        },
    )
    strict = folder(tmp_path, "strict", STRICT)
    code, out = cli(replica, "push", "--stage", str(strict))
    assert code == 0 and "staged" in out, out
    version = read_bundle_source(strict).version
    admin = load_private_jwk(dev_setup.keys_dir / "policy-admin.jwk.json")
    # Written straight to the store: no NOTIFY is sent.
    run_sync(
        fetch(
            database_url,
            "INSERT INTO policy_epochs (epoch, active_version, statement, signer_kid) "
            "VALUES (2, $1, $2, $3)",
            version,
            sign_activation(Activation(2, version), admin),
            admin.as_dict()["kid"],
        )
    )

    wait_for(lambda: evaluate(replica).bundle.epoch == 2, "the periodic check")

    answer = evaluate(replica)
    assert (answer.bundle.version, answer.decision) == (version, common_pb2.DENY)


def test_epochs_keep_rising_across_restarts(
    services: Callable[..., ServiceProcess],
    policy_env: dict[str, str],
    dev_setup: DevSetup,
    cli: Cli,
    tmp_path: Path,
) -> None:
    start = {**policy_env, "GOVMESH_POLICY_PATH": str(dev_setup.policies)}
    replica = services("policy", start)
    sample = evaluate(replica).bundle
    assert sample.epoch == 1
    code, out = cli(replica, "push", str(folder(tmp_path, "strict", STRICT)))
    assert code == 0, out
    assert evaluate(replica).bundle.epoch == 2
    assert replica.terminate() == 0

    # Started again with the start folder: it becomes active at a new epoch, not its old one.
    restarted = services("policy", start)
    again = evaluate(restarted).bundle
    assert (again.version, again.epoch) == (sample.version, 3)
    assert restarted.terminate() == 0

    # Nothing changed since: the same epoch is served, no new one is taken.
    third = services("policy", start)
    assert evaluate(third).bundle == again


def test_refused_pushes_keep_the_active_bundle(
    services: Callable[..., ServiceProcess],
    policy_env: dict[str, str],
    dev_setup: DevSetup,
    cli: Cli,
    tmp_path: Path,
) -> None:
    replica = services("policy", {**policy_env, "GOVMESH_POLICY_PATH": str(dev_setup.policies)})
    before = evaluate(replica).bundle
    stranger = tmp_path / "stranger.jwk.json"
    write_private_jwk(stranger, generate_ed25519())
    schema_invalid = folder(
        tmp_path,
        "typed",
        '@id("typo") permit (principal, action == Action::"payments.transfer", resource) '
        "when { context.request.amont < 10 };",
    )
    (schema_invalid / "app.cedarschema").write_text(
        "entity Issuer; entity Agent in [Issuer]; entity Resource;\n"
        'action "payments.transfer" appliesTo { principal: [Agent], resource: [Resource], '
        "context: { request: { amount: Long }, env: {}, attribution: {} } };\n"
    )

    attempts = [
        (("--key", str(stranger), str(folder(tmp_path, "strict", STRICT))), "not a trusted"),
        ((str(folder(tmp_path, "broken", "permit (principal, action")),), "does not parse"),
        ((str(folder(tmp_path, "empty", "// no policy here")),), "no policy"),
        ((str(schema_invalid),), "schema validation"),
    ]
    for arguments, named in attempts:
        code, out = cli(replica, "push", *arguments)
        assert code == 1, out
        assert "refused" in out and named in out, out
        answer = evaluate(replica)
        assert answer.bundle == before
        assert answer.decision == common_pb2.ALLOW

    code, out = cli(replica, "list", "--json")
    listing = json.loads(out)
    assert [b["version"] for b in listing["bundles"]] == [before.version]
    assert [e["epoch"] for e in listing["history"]] == [1]


def test_shadow_disagreements_are_reported_by_diff(
    services: Callable[..., ServiceProcess],
    policy_env: dict[str, str],
    dev_setup: DevSetup,
    cli: Cli,
    tmp_path: Path,
) -> None:
    replica = services(
        "policy",
        {
            **policy_env,
            "GOVMESH_POLICY_PATH": str(dev_setup.policies),
            "GOVMESH_SHADOW_FLUSH_INTERVAL_S": "0.1",
        },
    )
    active = evaluate(replica).bundle
    code, out = cli(replica, "push", "--shadow", str(folder(tmp_path, "strict", STRICT)))
    assert code == 0 and "shadow from epoch 2" in out, out

    agreeing = evaluate(replica, 50, digest="small")
    disagreeing = evaluate(replica, 500, digest="medium")

    assert agreeing.shadow.decision == common_pb2.ALLOW
    assert disagreeing.decision == common_pb2.ALLOW  # the active bundle is enforced
    assert disagreeing.bundle.version == active.version
    assert disagreeing.shadow.decision == common_pb2.DENY
    assert disagreeing.shadow.bundle.epoch == disagreeing.bundle.epoch == 2

    def reported() -> dict[str, Any]:
        code, out = cli(replica, "diff", "--json")
        document: dict[str, Any] = json.loads(out)
        return document if code == 1 and document["evaluated"] >= 2 else {}

    wait_for(lambda: bool(reported()), "the disagreement to be recorded")
    report = reported()
    assert report["active_version"] == active.version
    assert (report["evaluated"], report["disagreed"]) == (2, 1)
    [item] = report["disagreements"]
    assert item["request_digest"] == "medium"
    assert item["decision_id"] == "decision-medium"
    assert item["active"]["decision"] == "ALLOW"
    assert item["shadow"]["decision"] == "DENY"
    assert item["context"]["request"] == {"amount": 500}
    assert item["issuer"] == "https://issuer.govmesh.dev"
    code, out = cli(replica, "diff")
    assert "1 of 2 requests disagree" in out


def test_list_show_test_and_rollback_through_the_cli(
    services: Callable[..., ServiceProcess],
    policy_env: dict[str, str],
    dev_setup: DevSetup,
    cli: Cli,
    tmp_path: Path,
) -> None:
    replica = services("policy", {**policy_env, "GOVMESH_POLICY_PATH": str(dev_setup.policies)})
    sample = evaluate(replica).bundle.version
    code, out = cli(replica, "push", str(folder(tmp_path, "strict", STRICT)))
    assert code == 0, out
    requests = tmp_path / "requests.json"
    requests.write_text(
        json.dumps(
            [
                {
                    "name": "medium",
                    "principal": "spiffe://govmesh.dev/agent/demo",
                    "issuer": "https://issuer.govmesh.dev",
                    "action": "payments.transfer",
                    "resource": "account:acme/treasury",
                    "context": {"request": {"amount": 500}},
                    "expect": "ALLOW",
                },
                {
                    "name": "frozen",
                    "principal": "spiffe://govmesh.dev/agent/demo",
                    "issuer": "https://issuer.govmesh.dev",
                    "action": "payments.transfer",
                    "resource": "account:acme/frozen",
                    "context": {"request": {"amount": 5}},
                    "expect": "DENY",
                },
            ]
        )
    )

    # Under the active (strict) bundle 500 is refused: the expectation fails.
    code, out = cli(replica, "test", str(requests))
    assert code == 1 and "UNEXPECTED" in out, out
    assert "determined by frozen-accounts" in out
    # Rolled back by a prefix of the sample's version.
    code, out = cli(replica, "activate", sample[:10])
    assert code == 0 and "epoch 3" in out, out
    assert evaluate(replica).bundle.version == sample
    code, out = cli(replica, "test", str(requests), "--json")
    assert code == 0, out
    results = json.loads(out)["results"]
    assert [(r["decision"], r["determining"]) for r in results] == [
        ("ALLOW", ["transfers-up-to-1000"]),
        ("DENY", ["frozen-accounts"]),
    ]
    # Activating the active bundle again is refused: no empty epoch.
    code, out = cli(replica, "activate", sample)
    assert code == 1 and "already active" in out

    code, out = cli(replica, "show", sample[:8], "--json")
    shown = json.loads(out)
    assert shown["status"] == "active"
    assert shown["policy_ids"] == ["transfers-up-to-1000", "frozen-accounts"]
    assert [e["epoch"] for e in shown["epochs"]] == [3, 1]
    code, out = cli(replica, "list")
    assert code == 0 and sample[:12] in out


def test_policies_given_at_start_that_do_not_compile_stop_the_process(
    services: Callable[..., ServiceProcess], policy_env: dict[str, str], tmp_path: Path
) -> None:
    broken = folder(tmp_path, "broken", "permit (principal, action, resource")

    with pytest.raises(RuntimeError) as failed:
        services("policy", {**policy_env, "GOVMESH_POLICY_PATH": str(broken)})

    assert "exited with 2" in str(failed.value)
    assert "does not parse" in str(failed.value)
    assert "Traceback" not in str(failed.value)


def test_a_replica_that_cannot_verify_the_newest_epoch_stops_answering(
    services: Callable[..., ServiceProcess],
    policy_env: dict[str, str],
    dev_setup: DevSetup,
    database_url: str,
) -> None:
    replica = services("policy", {**policy_env, "GOVMESH_POLICY_PATH": str(dev_setup.policies)})
    version = evaluate(replica).bundle.version
    intruder = generate_ed25519()
    # An epoch written straight into the store, signed by a key no admin holds.
    run_sync(
        fetch(
            database_url,
            "INSERT INTO policy_epochs (epoch, active_version, statement, signer_kid) "
            "VALUES (2, $1, $2, 'intruder')",
            version,
            sign_activation(Activation(2, version), intruder),
        )
    )
    run_sync(fetch(database_url, "SELECT pg_notify('govmesh_policy', '2')"))

    wait_for(lambda: _health(replica) == NOT_SERVING, "NOT_SERVING")

    with pytest.raises(grpc.RpcError) as refused:
        evaluate(replica)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "epoch 2" in str(refused.value.details())
    assert "not a trusted policy admin" in str(refused.value.details())
