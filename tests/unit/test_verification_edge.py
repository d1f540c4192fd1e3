"""The gRPC edge, the settings, and the fail-closed guarantees around the checks."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from govmesh.artifacts import MANDATE_TYP
from govmesh.artifacts.checks import REQUIRED_CHECKS, Check
from govmesh.engine.claims import claimed_inputs
from govmesh.engine.consistency import check_verification
from govmesh.runtime.settings import SettingsError, load_settings
from govmesh.v1 import common_pb2, engine_pb2, verification_pb2
from govmesh.verification.config import VerificationSettings
from govmesh.verification.core import (
    CheckOutcome,
    ReplayStoreTimeout,
    VerificationConfig,
    VerificationResult,
    Verifier,
)
from govmesh.verification.servicer import VerificationServicer, to_input, to_response
from tests.support.verification import (
    MemoryReplayStore,
    World,
    failed_checks,
    make_world,
    reason,
    sign_escaped,
    verify_request,
)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path / "trust")


class Context:
    """The one thing the servicer asks of its gRPC context."""

    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


async def answer(
    servicer: VerificationServicer,
    request: verification_pb2.VerifyRequest,
    remaining: float | None = 5.0,
) -> verification_pb2.VerifyResponse:
    return await servicer.Verify(request, Context(remaining))  # type: ignore[arg-type]


def engine_view(message: verification_pb2.VerifyRequest) -> engine_pb2.AuthorizeRequest:
    request = engine_pb2.AuthorizeRequest(
        action=message.action,
        resource=message.resource,
        mandate=message.mandate,
        proof=message.proof,
        attestation=message.attestation,
    )
    request.context.CopyFrom(message.context)
    return request


async def test_the_wire_answer_is_one_the_engine_accepts(world: World) -> None:
    verifier, _, _ = world.verifier()
    servicer = VerificationServicer(verifier=verifier)
    request = verify_request(
        world.request(mandate=world.mandate(env={"tier": 2}), attestation=world.attestation())
    )

    response = await answer(servicer, request)

    assert response.verified, response.message
    assert response.trust_version
    assert [c.name for c in response.checks] == [c.value for c in REQUIRED_CHECKS]
    assert json_format.MessageToDict(response.claims.env)["tier"] == 2
    assert (
        check_verification(response, request.request_digest, claimed_inputs(engine_view(request)))
        == []
    )


async def test_claims_protobuf_cannot_carry_are_not_vouched_for(world: World) -> None:
    verifier, _, _ = world.verifier()
    servicer = VerificationServicer(verifier=verifier)
    # JSON escapes a lone surrogate, which no protobuf string can hold.
    claims = world.mandate_claims(att={"s": "\ud800"})
    mandate = sign_escaped(world.issuer, {"typ": MANDATE_TYP, "kid": world.issuer.kid}, claims)
    request = verify_request(world.request(mandate=mandate))

    response = await answer(servicer, request)

    assert not response.verified
    assert reason(response) == "INTERNAL_ERROR"
    assert failed_checks(response) == [c.value for c in REQUIRED_CHECKS]
    assert check_verification(response, request.request_digest, None)


class SlowStore(MemoryReplayStore):
    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[float] = []

    async def remember(self, key: bytes, expires_at: float, *, timeout: float) -> bool:
        self.timeouts.append(timeout)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.sleep(10)
        except TimeoutError:
            raise ReplayStoreTimeout("slow") from None
        return True


async def test_the_callers_deadline_bounds_the_replay_store(world: World) -> None:
    store = SlowStore()
    verifier, _, _ = world.verifier(replay=store)
    servicer = VerificationServicer(verifier=verifier)

    response = await answer(servicer, verify_request(world.request()), remaining=0.05)

    assert store.timeouts and store.timeouts[0] <= 0.05
    assert failed_checks(response) == ["replay"]
    assert reason(response) == "PEER_TIMEOUT"


async def test_a_context_that_is_not_json_is_malformed(world: World) -> None:
    request = verify_request(world.request())
    request.context.fields["bad"].number_value = float("inf")
    verifier, _, _ = world.verifier()

    response = await answer(VerificationServicer(verifier=verifier), request)

    assert to_input(request).context is None
    assert (reason(response), failed_checks(response)) == ("MALFORMED_REQUEST", ["digest"])


class BrokenTrust:
    def current(self) -> Any:
        raise RuntimeError("disk on fire")


async def test_an_exception_inside_verification_is_a_deny_not_a_crash(world: World) -> None:
    verifier = Verifier(
        trust=BrokenTrust(),
        replay=MemoryReplayStore(),
        clock=world.clock,
        config=VerificationConfig(),
    )
    request = world.request()

    result = await verifier.verify(request)

    assert not result.verified
    assert result.reason == common_pb2.INTERNAL_ERROR
    response = to_response(result)
    assert response.request_digest == request.request_digest
    assert check_verification(response, request.request_digest, None)


def test_a_result_must_report_every_check_once_in_order() -> None:
    passed = [CheckOutcome(c, True) for c in REQUIRED_CHECKS]
    with pytest.raises(ValueError, match="every required check"):
        VerificationResult(request_digest="d", outcomes=tuple(passed[:-1]))
    with pytest.raises(ValueError, match="every required check"):
        VerificationResult(request_digest="d", outcomes=(passed[0], *passed))
    failed_without_reason = CheckOutcome(Check.SCOPE, False)
    with pytest.raises(ValueError, match="verdict without its reason"):
        VerificationResult(request_digest="d", outcomes=(*passed[:-1], failed_without_reason))


async def test_a_forged_proof_never_burns_the_nonce(world: World) -> None:
    from govmesh.artifacts.keys import generate_ed25519

    verifier, _, store = world.verifier()
    mandate = world.mandate()
    forged = world.signed_proof(mandate, key=generate_ed25519(), jti="nonce-1")
    genuine = world.signed_proof(mandate, jti="nonce-1")

    first = await verifier.verify(world.request(mandate=mandate, proof=forged))
    second = await verifier.verify(world.request(mandate=mandate, proof=genuine))
    third = await verifier.verify(world.request(mandate=mandate, proof=genuine))

    assert [o.check.value for o in first.failed] == ["pop"]
    assert second.verified
    assert [o.check.value for o in third.failed] == ["replay"]
    assert len(store.keys) == 1


async def test_a_genuine_proof_under_a_forged_mandate_never_burns_the_nonce(world: World) -> None:
    verifier, _, store = world.verifier()
    forged = world.mandate(key=world.stranger)

    result = await verifier.verify(world.request(mandate=forged))

    assert [o.check.value for o in result.failed] == ["signature"]
    assert store.keys == {}
    assert store.lookups == 1


async def test_nonces_are_namespaced_by_the_proof_key(world: World) -> None:
    from govmesh.client.artifacts import Initiator

    verifier, _, _ = world.verifier()
    other = Initiator.generate(clock=world.clock)
    mine = world.mandate()
    theirs = world.mandate(cnf={"jkt": other.thumbprint})

    a = await verifier.verify(world.request(mandate=mine, proof=world.signed_proof(mine, jti="j")))
    b = await verifier.verify(
        world.request(mandate=theirs, proof=world.proof(theirs, agent=other, jti="j"))
    )

    assert a.verified and b.verified


def test_settings_come_from_govmesh_variables(
    monkeypatch: pytest.MonkeyPatch, world: World
) -> None:
    monkeypatch.setenv("GOVMESH_TRUST_FILE", str(world.trust_file))
    monkeypatch.setenv("GOVMESH_DATABASE_URL", "postgresql://db/govmesh")
    monkeypatch.setenv("GOVMESH_CLOCK_SKEW_S", "2")
    monkeypatch.setenv("GOVMESH_PROOF_WINDOW_S", "30")
    monkeypatch.setenv("GOVMESH_TOKEN_CACHE_SIZE", "5")

    settings = load_settings(VerificationSettings)

    assert (settings.clock_skew_s, settings.proof_window_s) == (2.0, 30.0)
    assert settings.token_cache_size == 5
    assert settings.trust_file == world.trust_file


def test_invalid_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch, world: World) -> None:
    monkeypatch.setenv("GOVMESH_TRUST_FILE", str(world.trust_file))
    monkeypatch.setenv("GOVMESH_DATABASE_URL", "postgresql://db/govmesh")
    monkeypatch.setenv("GOVMESH_PROOF_WINDOW_S", "-1")

    with pytest.raises(SettingsError, match="GOVMESH_PROOF_WINDOW_S"):
        load_settings(VerificationSettings)


async def test_a_proof_jti_that_is_not_utf8_is_invalid_not_an_internal_error(
    world: World,
) -> None:
    import json

    from govmesh.artifacts.canonical import b64url

    verifier, _, store = world.verifier()
    mandate = world.mandate()
    # Signed by hand: JSON can carry the escape "\ud800", which is no UTF-8.
    claims = world.proof_claims(mandate, jti="\ud800")
    header = {"alg": "EdDSA", "typ": "govmesh-pop+jwt", "jwk": world.agent.public_jwk}
    signing_input = ".".join(
        b64url(json.dumps(part, ensure_ascii=True).encode()) for part in (header, claims)
    )
    signature = world.agent.key.private_key.sign(signing_input.encode())  # type: ignore[union-attr,call-arg]
    proof = f"{signing_input}.{b64url(signature)}"

    result = await verifier.verify(world.request(mandate=mandate, proof=proof))

    assert not result.verified
    # The proof's claims refuse a jti the log could not record, and the replay
    # check cannot key it: both fail, neither as an internal error.
    assert [o.check.value for o in result.failed] == ["pop", "replay"]
    assert result.reason == common_pb2.INVALID_VERIFICATION
    assert store.keys == {}
