"""The shared pieces: canonical digests, thumbprints, settings, the client's fail-closed view."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from govmesh.artifacts.canonical import canonical_json, request_digest, sha256_b64url
from govmesh.artifacts.checks import REASON_PRECEDENCE, primary_reason
from govmesh.artifacts.keys import generate_ed25519, jwk_thumbprint, load_private_jwk
from govmesh.cli.devsetup import write_dev_setup
from govmesh.client import AuthorizationResult
from govmesh.engine.config import EngineSettings
from govmesh.runtime.errors import ConfigurationError
from govmesh.runtime.settings import SettingsError, load_settings
from govmesh.v1 import common_pb2, engine_pb2

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_matches_the_protos() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_the_drift_check_notices_a_changed_proto(tmp_path: Path) -> None:
    # A copy of the protos and the generator; one proto changes; the check must fail.
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "protos", copy / "protos")
    shutil.copytree(ROOT / "scripts", copy / "scripts")
    proto = copy / "protos" / "govmesh" / "v1" / "engine.proto"
    proto.write_text(
        proto.read_text().replace(
            "string message = 7;", "string message = 7;\n  string extra = 99;"
        )
    )
    result = subprocess.run(
        [sys.executable, str(copy / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "engine_pb2" in result.stderr


def test_the_public_contract_keeps_its_field_numbers() -> None:
    request = engine_pb2.AuthorizeRequest.DESCRIPTOR.fields_by_name
    assert {name: f.number for name, f in request.items()} == {
        "action": 1,
        "resource": 2,
        "context": 3,
        "mandate": 4,
        "proof": 5,
        "attestation": 6,
    }
    response = engine_pb2.AuthorizeResponse.DESCRIPTOR.fields_by_name
    assert {
        n: response[n].number
        for n in (
            "decision",
            "reason",
            "decision_id",
            "failed_checks",
            "grant",
            "lineage",
            "message",
        )
    } == {
        "decision": 1,
        "reason": 2,
        "decision_id": 3,
        "failed_checks": 4,
        "grant": 5,
        "lineage": 6,
        "message": 7,
    }
    assert dict(common_pb2.DenyReason.items()) == {
        "DENY_REASON_UNSPECIFIED": 0,
        "MISSING_AUTHORIZATION": 1,
        "INVALID_VERIFICATION": 2,
        "EXPIRED_AUTHORIZATION": 3,
        "POLICY_MISMATCH": 4,
        "REPLAY_DETECTED": 5,
        "ENVIRONMENT_MISMATCH": 6,
        "RUNTIME_INTEGRITY_FAILURE": 7,
        "PEER_TIMEOUT": 8,
        "PEER_UNAVAILABLE": 9,
        "INCONSISTENT_ANSWERS": 10,
        "LINEAGE_UNAVAILABLE": 11,
        "MALFORMED_REQUEST": 12,
        "INTERNAL_ERROR": 13,
    }


# --- RFC 8785 and the request digest ----------------------------------------------------


def test_canonical_json_follows_rfc_8785() -> None:
    # RFC 8785 section 3.2.3 sorts by UTF-16 code units and writes numbers as ECMAScript does.
    assert canonical_json(
        {"b": 1.0, "a": [1e21, 0.000001, -0.0], "\u20ac": "x", "\U0001f600": 1}
    ) == ('{"a":[1e+21,0.000001,0],"b":1,"\u20ac":"x","\U0001f600":1}'.encode())


def test_the_request_digest_is_sha256_of_the_canonical_request() -> None:
    digest = request_digest("payments.transfer", "account:acme/treasury", {"amount": 250.0})
    expected = sha256_b64url(
        b'{"action":"payments.transfer","context":{"amount":250},'
        b'"resource":"account:acme/treasury"}'
    )
    assert digest == expected
    assert "=" not in digest
    assert digest != request_digest("payments.transfer", "account:acme/treasury", {"amount": 251})


def test_rfc_7638_thumbprint_example() -> None:
    # RFC 7638 section 3.1.
    jwk = {
        "kty": "RSA",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1"
            "L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4"
            "QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbO"
            "pbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csF"
            "Cur-kEgU8awapJzKnqDKgw"
        ),
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_a_thumbprint_ignores_optional_members_and_refuses_unknown_key_types() -> None:
    key = generate_ed25519().as_dict(private=False)
    bare = {k: key[k] for k in ("kty", "crv", "x")}
    assert jwk_thumbprint(key) == jwk_thumbprint(bare)
    with pytest.raises(ValueError, match="unsupported"):
        jwk_thumbprint({"kty": "oct", "k": "c2VjcmV0"})


def documented_precedence() -> tuple[str, list[str]]:
    """The README's precedence paragraph: the symbol it names, and its reasons in order."""
    paragraphs = (ROOT / "README.md").read_text().split("\n\n")
    paragraph = next(p for p in paragraphs if "A deny names exactly one primary reason" in p)
    symbol = re.search(r"`(govmesh\.[\w.]+)`", paragraph)
    assert symbol is not None, paragraph
    # The list is the run of reasons after the colon, up to the full stop that ends it.
    listed = re.search(r":\s*((?:`[A-Z_]+`,\s*)+`[A-Z_]+`)\.", paragraph)
    assert listed is not None, paragraph
    return symbol.group(1), re.findall(r"`([A-Z_]+)`", listed.group(1))


def resolve(dotted: str) -> object:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_primary_reason_follows_the_documented_order_and_refuses_nothing() -> None:
    symbol, documented = documented_precedence()
    # The README lists every reason, in exactly the order the code applies.
    assert resolve(symbol) is REASON_PRECEDENCE
    assert [common_pb2.DenyReason.Name(r) for r in REASON_PRECEDENCE] == documented
    assert set(documented) == set(common_pb2.DenyReason.keys()) - {"DENY_REASON_UNSPECIFIED"}
    assert len(set(documented)) == len(documented)
    # For every pair, the one listed first wins, whichever order they come in.
    order = [common_pb2.DenyReason.Value(name) for name in documented]
    for i, first in enumerate(order):
        for later in order[i + 1 :]:
            assert primary_reason([first, later]) == first
            assert primary_reason([later, first]) == first
            assert primary_reason([later, first, later]) == first
    # Unknown and unspecified reasons rank as INTERNAL_ERROR, never above a real one.
    for reason in order:
        assert primary_reason([999, reason]) == reason
        assert primary_reason([common_pb2.DENY_REASON_UNSPECIFIED, reason]) == reason
    assert primary_reason([999]) == common_pb2.INTERNAL_ERROR
    assert primary_reason([common_pb2.DENY_REASON_UNSPECIFIED]) == common_pb2.INTERNAL_ERROR
    with pytest.raises(ValueError, match="no reasons"):
        primary_reason([])


def test_the_proto_points_to_the_precedence_the_code_applies() -> None:
    proto = (ROOT / "protos" / "govmesh" / "v1" / "common.proto").read_text()
    named = re.findall(r"see (govmesh\.[\w.]*\w)", proto)
    assert named, "common.proto names no precedence"
    for dotted in named:
        assert resolve(dotted) is REASON_PRECEDENCE, dotted


# --- settings and keys -------------------------------------------------------------------


def test_invalid_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOVMESH_KEYS_DIR", "/tmp")
    monkeypatch.setenv("GOVMESH_DECISION_BUDGET_MS", "soon")
    with pytest.raises(SettingsError, match="GOVMESH_DECISION_BUDGET_MS"):
        load_settings(EngineSettings)


def test_a_budget_shorter_than_every_peer_deadline_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GOVMESH_KEYS_DIR", "/tmp")
    with pytest.raises(SettingsError, match="budget"):
        load_settings(
            EngineSettings, decision_budget_ms=5, policy_timeout_ms=10, verification_timeout_ms=10
        )


def test_a_listen_address_without_a_port_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOVMESH_KEYS_DIR", "/tmp")
    with pytest.raises(SettingsError, match="GOVMESH_LISTEN"):
        load_settings(EngineSettings, listen="localhost")


def test_key_files_that_are_not_private_ed25519_keys_are_refused(tmp_path: Path) -> None:
    public = tmp_path / "public.json"
    public.write_text('{"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}')
    with pytest.raises(ConfigurationError, match="no private key"):
        load_private_jwk(public)
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_private_jwk(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(ConfigurationError, match="not JSON"):
        load_private_jwk(tmp_path / "junk.json")


def test_keys_init_writes_a_complete_setup_and_never_overwrites_it(tmp_path: Path) -> None:
    setup = write_dev_setup(tmp_path / "trust")
    for name in ("engine", "lineage", "policy-admin"):
        key = load_private_jwk(setup.keys_dir / f"{name}.jwk.json")
        assert key.as_dict(private=True)["d"]
        assert (setup.keys_dir / f"{name}.jwk.json").stat().st_mode & 0o077 == 0
    assert "issuer.jwks.json" in setup.trust_file.read_text()
    assert (setup.policies / "sample.cedar").is_file()
    with pytest.raises(ConfigurationError, match="not overwriting"):
        write_dev_setup(tmp_path / "trust")


# --- the client never reads a failure as an ALLOW ------------------------------------------


class _RpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="boom")


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, "PEER_TIMEOUT"),
        (grpc.StatusCode.UNAVAILABLE, "PEER_UNAVAILABLE"),
        (grpc.StatusCode.INTERNAL, "PEER_UNAVAILABLE"),
        (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "MALFORMED_REQUEST"),
    ],
)
def test_no_answer_is_a_deny(code: grpc.StatusCode, reason: str) -> None:
    result = AuthorizationResult.no_answer(_RpcError(code))
    assert result.decision == "DENY"
    assert result.reason == reason
    assert not result.allowed


def test_an_allow_is_allowed_only_with_grant_receipt_and_this_requests_digest() -> None:
    def allowed(**fields: Any) -> bool:
        response = engine_pb2.AuthorizeResponse(
            decision=common_pb2.ALLOW, decision_id="d", grant="g", request_digest="mine"
        )
        response.lineage.tree_size = 1
        for name, value in fields.items():
            if name == "lineage":
                response.ClearField("lineage")
            else:
                setattr(response, name, value)
        return AuthorizationResult.from_response(response, expected_digest="mine").allowed

    assert allowed()
    assert not allowed(grant="")
    assert not allowed(lineage=None)
    assert not allowed(request_digest="another request's")
    assert not allowed(reason=common_pb2.MALFORMED_REQUEST)
    bare = engine_pb2.AuthorizeResponse(decision=common_pb2.ALLOW, decision_id="d", grant="g")
    bare.lineage.tree_size = 1
    assert not AuthorizationResult.from_response(bare).allowed  # no digest to compare with


def test_an_unknown_decision_or_reason_reads_as_deny() -> None:
    odd = engine_pb2.AuthorizeResponse(decision=7, reason=99, grant="g")  # type: ignore[arg-type]
    result = AuthorizationResult.from_response(odd)
    assert result.decision == "DENY"
    assert result.reason == "INTERNAL_ERROR"
    assert result.grant == ""
    assert not result.allowed
    silent = AuthorizationResult.from_response(
        engine_pb2.AuthorizeResponse(decision=common_pb2.DENY)
    )
    assert silent.reason == "INTERNAL_ERROR"


async def test_a_closed_client_answers_deny_instead_of_raising() -> None:
    from govmesh.client import EngineClient

    client = await EngineClient.connect("127.0.0.1:1", timeout=1)
    await client.close()
    result = await client.authorize(
        action="a", resource="r", mandate="m", proof="p", context={"n": 1}
    )
    assert result.decision == "DENY"
    assert not result.answered
    assert not result.allowed


async def test_a_stopping_server_stays_not_serving_whatever_the_service_reports() -> None:
    from grpc_health.v1 import health, health_pb2

    from govmesh.runtime.server import Health

    servicer = health.aio.HealthServicer()
    status = Health(servicer, ["govmesh.v1.Test"])
    await status.set_serving(True)
    status.stopping = True
    await status.set_serving(False)
    await status.set_serving(True)  # a service recovering during the grace period

    assert not status.serving
    answer = await servicer.Check(health_pb2.HealthCheckRequest(service=""), None)
    assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
