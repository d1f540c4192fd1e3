"""The policy authority under faults, as real processes: hostile requests, a lost database,
a store rolled back, an authority that hands out doctored bundles."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from govmesh.cli.devsetup import DevSetup
from govmesh.v1 import common_pb2, policy_pb2, policy_pb2_grpc
from tests.integration.test_policy_service import STRICT, Cli, evaluate, folder, wait_for
from tests.support.processes import ServiceProcess


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
    }


def ask(service: ServiceProcess, context: dict[str, Any], *, principal: str = "agent") -> None:
    """One Evaluate with a context of the caller's choosing."""
    request = policy_pb2.EvaluateRequest(
        request_digest="digest",
        principal=principal,
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
