"""Verification inside the whole mesh: the engine takes its answers, and the dev CLI works."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from govmesh.artifacts.canonical import request_digest
from govmesh.artifacts.keys import generate_ed25519, jwk_thumbprint
from govmesh.cli.devsetup import DEV_ATTESTOR, DEV_ENV, DEV_ISSUER, DEV_MEASUREMENT, DEV_SUBJECT
from govmesh.cli.main import main as govmesh
from govmesh.client import EngineClient, issue_attestation, issue_mandate
from govmesh.client.artifacts import mandate_hash
from tests.integration.conftest import Mesh
from tests.support.database import fetch
from tests.support.verification import costly_jwk, costly_proof, decode_payload

BINDING = {"cluster": "dev", "region": ["local", "eu"]}


def attestation(mesh: Mesh, **overrides: Any) -> str:
    arguments: dict[str, Any] = {
        "issuer": DEV_ATTESTOR,
        "subject": DEV_SUBJECT,
        "holder_thumbprint": mesh.agent.thumbprint,
        "env": DEV_ENV,
        "measurements": [DEV_MEASUREMENT],
        **overrides,
    }
    return issue_attestation(mesh.setup.dev_key("attestor"), **arguments)


async def test_bound_mandate_with_attestation_is_allowed_and_recorded(
    start_mesh: Callable[..., Mesh],
) -> None:
    mesh = start_mesh()
    mandate = mesh.mandate(env=BINDING, attribution={"session": "s-42"})
    async with await EngineClient.connect(mesh.engine.address, timeout=10) as engine:
        result = await engine.authorize(
            **mesh.request(mandate=mandate), attestation=attestation(mesh)
        )

    assert result.allowed, result
    rows = await fetch(
        mesh.database_url,
        "SELECT entry FROM lineage_entries WHERE decision_id = $1::uuid",
        result.decision_id,
    )
    entry = json.loads(rows[0]["entry"])
    assert entry["subject"] == DEV_SUBJECT
    assert entry["mandate_id"] == decode_payload(mandate)["jti"]


async def test_each_verification_deny_reaches_the_caller_with_its_checks(
    start_mesh: Callable[..., Mesh],
) -> None:
    mesh = start_mesh()
    bound = mesh.mandate(env=BINDING)
    async with await EngineClient.connect(mesh.engine.address, timeout=10) as engine:
        replayed = mesh.request()
        first = await engine.authorize(**replayed)
        second = await engine.authorize(**replayed)
        unattested = await engine.authorize(**mesh.request(mandate=bound))
        elsewhere = await engine.authorize(
            **mesh.request(mandate=bound), attestation=attestation(mesh, env={"cluster": "prod"})
        )
        unknown_runtime = await engine.authorize(
            **mesh.request(mandate=bound),
            attestation=attestation(mesh, measurements=["sha256:" + "0" * 64]),
        )
        out_of_scope = await engine.authorize(**mesh.request(resource="account:other/vault"))

    assert first.allowed
    assert (second.reason, second.failed_checks) == ("REPLAY_DETECTED", ("replay",))
    assert unattested.reason == "ENVIRONMENT_MISMATCH"
    assert set(unattested.failed_checks) == {"environment", "runtime"}
    assert (elsewhere.reason, elsewhere.failed_checks) == ("ENVIRONMENT_MISMATCH", ("environment",))
    assert unknown_runtime.reason == "RUNTIME_INTEGRITY_FAILURE"
    assert unknown_runtime.failed_checks == ("runtime",)
    assert out_of_scope.reason == "POLICY_MISMATCH"
    assert "scope" in out_of_scope.failed_checks


def test_dev_cli_issues_attests_and_authorizes(
    start_mesh: Callable[..., Mesh],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    mesh = start_mesh()
    dev = ["--dev-dir", str(mesh.setup.root)]
    assert (
        govmesh(
            [
                "mandate",
                "issue",
                *dev,
                "--scope",
                "payments.*=account:acme/*",
                "--env",
                "cluster=dev",
                "--env",
                "region=local",
                "--env",
                "region=eu",
                "--att",
                "session=cli",
            ]
        )
        == 0
    )
    mandate_file = tmp_path / "mandate.jwt"
    mandate_file.write_text(capsys.readouterr().out)
    assert govmesh(["attest", *dev]) == 0
    attestation_file = tmp_path / "attestation.jwt"
    attestation_file.write_text(capsys.readouterr().out)

    request = [
        "authorize",
        *dev,
        "--target",
        mesh.engine.address,
        "--timeout",
        "10",
        "--action",
        "payments.transfer",
        "--resource",
        "account:acme/treasury",
        "--context",
        '{"amount": 250}',
        "--mandate",
        str(mandate_file),
    ]
    allowed = govmesh([*request, "--attestation", str(attestation_file)])
    allowed_answer = json.loads(capsys.readouterr().out)
    denied = govmesh(request)  # the same mandate without its attestation
    denied_answer = json.loads(capsys.readouterr().out)

    assert (allowed, allowed_answer["decision"]) == (0, "ALLOW"), allowed_answer
    assert (denied, denied_answer["reason"]) == (1, "ENVIRONMENT_MISMATCH")


async def test_valid_requests_beside_a_flood_of_costly_keys_are_allowed(
    start_mesh: Callable[..., Mesh],
) -> None:
    # Hostile requests whose proof key has a 3,070-bit exponent reach the
    # engine together with valid ones and share their verification batches.
    # A costly key used to hold verification's event loop for 5.8 ms: the
    # batches behind a few hundred of them missed their deadline and the valid
    # requests in them were denied PEER_TIMEOUT.
    mesh = start_mesh({"GOVMESH_VERIFICATION_TIMEOUT_MS": "1000"})
    issuer = mesh.setup.dev_key("issuer")
    forger = generate_ed25519(str(issuer.kid))  # the issuer's kid, not its key
    request = mesh.request()
    calls = []
    for position in range(420):
        if position % 21 == 0:
            calls.append((True, mesh.request()))
            continue
        jwk = costly_jwk()
        mandate = issue_mandate(
            forger,
            issuer=DEV_ISSUER,
            subject=DEV_SUBJECT,
            holder_thumbprint=jwk_thumbprint(jwk),
            scope=[{"action": "payments.transfer", "resource": "account:acme/*"}],
        )
        claims = {
            "jti": f"hostile-{position}",
            "iat": int(time.time()),
            "req": request_digest(request["action"], request["resource"], request["context"]),
            "ath": mandate_hash(mandate),
        }
        calls.append((False, {**request, "mandate": mandate, "proof": costly_proof(jwk, claims)}))

    async with await EngineClient.connect(mesh.engine.address, timeout=10) as engine:
        results = await asyncio.gather(*(engine.authorize(**call) for _, call in calls))

    valid = [r for (ok, _), r in zip(calls, results, strict=True) if ok]
    hostile = [r for (ok, _), r in zip(calls, results, strict=True) if not ok]
    assert len(valid) == 20
    assert all(r.allowed for r in valid), [(r.reason, r.message) for r in valid if not r.allowed]
    assert {(r.reason, "pop" in r.failed_checks) for r in hostile} == {
        ("INVALID_VERIFICATION", True)
    }
    assert "Traceback" not in mesh.verification.log()


def test_dev_attestor_attesting_production_is_denied_from_the_cli(
    start_mesh: Callable[..., Mesh],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The README's quick start: keys init lets the dev attestor attest cluster=dev only.
    mesh = start_mesh()
    dev = ["--dev-dir", str(mesh.setup.root)]
    files = {}
    for name, command in {
        "mandate": ["mandate", "issue", *dev, "--env", "cluster=prod"],
        "attestation": ["attest", *dev, "--env", "cluster=prod"],
    }.items():
        assert govmesh(command) == 0
        files[name] = tmp_path / f"{name}.jwt"
        files[name].write_text(capsys.readouterr().out)

    code = govmesh(
        [
            "authorize",
            *dev,
            "--target",
            mesh.engine.address,
            "--timeout",
            "10",
            "--action",
            "payments.transfer",
            "--resource",
            "account:acme/treasury",
            "--context",
            '{"amount": 250}',
            "--mandate",
            str(files["mandate"]),
            "--attestation",
            str(files["attestation"]),
        ]
    )
    answer = json.loads(capsys.readouterr().out)

    assert (code, answer["reason"]) == (1, "ENVIRONMENT_MISMATCH"), answer
    assert answer["failed_checks"] == ["environment"]
