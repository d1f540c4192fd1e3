"""A peer's answer stays within the bound the engine batches by, whatever the request says.

Each test builds the worst request the engine lets through (every artifact
and the context at the engine's limits, crafted so that their quotes are as
long as possible) and checks the real answer against its bound.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from govmesh.artifacts.answers import (
    MAX_DETAIL_BYTES,
    evaluate_answer_bound,
    verify_answer_bound,
)
from govmesh.artifacts.canonical import request_digest
from govmesh.engine.requests import MAX_ARTIFACT_CHARS, MAX_CONTEXT_BYTES, validate
from govmesh.policy.authority import Answer, Snapshot
from govmesh.policy.bundle import BundleSource, PolicyFile, compile_bundle
from govmesh.policy.core import PolicyDecision, PolicyRequest, evaluate
from govmesh.policy.servicer import PolicyServicer
from govmesh.v1 import common_pb2, engine_pb2, policy_pb2, verification_pb2
from govmesh.verification.servicer import VerificationServicer
from tests.support.verification import (
    ACTION,
    RESOURCE,
    World,
    b64,
    make_world,
)

#: A character JSON writes as one byte and repr as four ('\x7f').
WIDE = "\x7f"


def hostile_context() -> dict[str, Any]:
    """A context at the engine's limit whose keys every evaluation error quotes, four-fold."""
    return {"__" + WIDE * (MAX_CONTEXT_BYTES - 64): 0.5}


def _raw_json(value: dict[str, Any]) -> str:
    # WIDE written as itself, one byte, not as a six-character escape.
    return b64(json.dumps(value, ensure_ascii=False).encode())


def hostile_token(header: dict[str, Any], payload: dict[str, Any]) -> str:
    """An unsigned token of about MAX_ARTIFACT_CHARS, each string claim padded with WIDE."""
    strings = [k for k, v in payload.items() if isinstance(v, str)]
    strings += [k for k, v in header.items() if isinstance(v, str)]
    pad, best = 1, ""
    while True:
        trial_header = {k: (v + WIDE * pad if k in strings else v) for k, v in header.items()}
        trial_payload = {k: (v + WIDE * pad if k in strings else v) for k, v in payload.items()}
        token = ".".join(
            [*(_raw_json(part) for part in (trial_header, trial_payload)), b64(bytes(64))]
        )
        if len(token) > MAX_ARTIFACT_CHARS:
            return best
        best, pad = token, pad + 64


def hostile_verify_request() -> verification_pb2.VerifyRequest:
    context = hostile_context()
    mandate = hostile_token(
        {"alg": "EdDSA", "typ": "x", "kid": "k"},
        {"iss": "i", "sub": "s", "aud": "a", "jti": "j", "scope": "x", "env": "e"},
    )
    proof = hostile_token(
        {"alg": "HS256", "typ": "x", "jwk": "k"}, {"jti": "j", "req": "r", "ath": "a"}
    )
    attestation = hostile_token(
        {"alg": "EdDSA", "typ": "x", "kid": "k"}, {"iss": "i", "sub": "s", "env": "e"}
    )
    request = engine_pb2.AuthorizeRequest(
        action="a" * 256,
        resource="r:" + "r" * 1022,
        mandate=mandate,
        proof=proof,
        attestation=attestation,
    )
    json_format.ParseDict(context, request.context)
    validate(request)  # within every limit of the engine
    assert request.context.ByteSize() > MAX_CONTEXT_BYTES * 0.85
    message = verification_pb2.VerifyRequest(
        request_digest=request_digest(request.action, request.resource, context),
        action=request.action,
        resource=request.resource,
        mandate=mandate,
        proof=proof,
        attestation=attestation,
    )
    message.context.CopyFrom(request.context)
    return message


class Context:
    def time_remaining(self) -> float | None:
        return 5.0


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path / "trust")


async def test_a_hostile_requests_verification_answer_stays_within_its_bound(
    world: World,
) -> None:
    verifier, _, _ = world.verifier()
    servicer = VerificationServicer(verifier=verifier)
    request = hostile_verify_request()

    answer = await servicer.Verify(request, Context())  # type: ignore[arg-type]

    assert not answer.verified
    # The real checks' answer, clipped; not the fixed deny kept for overflows.
    assert answer.reason == common_pb2.INVALID_VERIFICATION, answer.message
    issuer = next(c for c in answer.checks if c.name == "issuer")
    assert "is not trusted" in issuer.detail
    assert all(len(c.detail.encode()) <= MAX_DETAIL_BYTES for c in answer.checks)
    assert answer.ByteSize() <= verify_answer_bound(request)


async def test_a_maximal_valid_request_verifies_within_its_bound(world: World) -> None:
    verifier, _, _ = world.verifier()
    servicer = VerificationServicer(verifier=verifier)

    # Claims that grow the most as a protobuf Struct: lists of one-digit numbers.
    def padded(build: Any, claim: str) -> str:
        size, best = 1, ""
        while True:
            token = build(**{claim: {"n": [0] * size}})
            if len(token) > MAX_ARTIFACT_CHARS:
                return best
            best, size = token, size + 64

    mandate = padded(world.mandate, "att")
    attestation = padded(world.attestation, "env")
    wire = world.request(mandate=mandate, attestation=attestation)
    request = verification_pb2.VerifyRequest(
        request_digest=wire.request_digest,
        action=wire.action,
        resource=wire.resource,
        mandate=wire.mandate,
        proof=wire.proof,
        attestation=wire.attestation,
    )
    json_format.ParseDict(dict(wire.context or {}), request.context)

    answer = await servicer.Verify(request, Context())  # type: ignore[arg-type]

    assert answer.verified, answer.message
    assert answer.ByteSize() > 4 * (len(mandate) + len(attestation)) * 0.75
    assert answer.ByteSize() <= verify_answer_bound(request)


@dataclass
class WorstAuthority:
    """Stands in for the authority with the largest answer a bundle could give."""

    snapshot: Snapshot
    decision: PolicyDecision

    def evaluate(self, request: PolicyRequest, **kwargs: Any) -> Answer:
        return Answer(self.snapshot, self.decision, self.decision)


def _policy_request(context: dict[str, Any]) -> policy_pb2.EvaluateRequest:
    request = policy_pb2.EvaluateRequest(
        request_digest=request_digest(ACTION, RESOURCE, context),
        principal="spiffe://test/" + "p" * 2000,
        issuer="https://idp.test/" + "i" * 2000,
        action=ACTION,
        resource=RESOURCE,
    )
    json_format.ParseDict({"request": context, "env": {}, "attribution": {}}, request.context)
    return request


def _snapshot(*, shadow: bool) -> Snapshot:
    bundle = compile_bundle(
        BundleSource(
            policies=(PolicyFile("p.cedar", '@id("t")\npermit (principal, action, resource);'),)
        )
    )
    return Snapshot(epoch=2**62, active=bundle, shadow=bundle if shadow else None)


async def test_a_hostile_contexts_policy_answer_stays_within_its_bound() -> None:
    context = hostile_context()
    snapshot = _snapshot(shadow=True)
    decision = evaluate(
        snapshot.active,
        PolicyRequest(
            "spiffe://test/a", ACTION, RESOURCE, {"request": context}, "https://idp.test"
        ),
    )
    assert decision.errors  # the reserved keys are refused, and quoted
    servicer = PolicyServicer(
        authority=WorstAuthority(snapshot, decision),  # type: ignore[arg-type]
        store=None,  # type: ignore[arg-type]
    )
    request = _policy_request(context)

    answer = await servicer.Evaluate(request, None)  # type: ignore[arg-type]

    assert answer.decision == common_pb2.DENY
    assert "is reserved" in answer.errors[0]
    assert answer.ByteSize() <= evaluate_answer_bound(request)


async def test_any_number_of_errors_and_determining_policies_stays_within_the_bound() -> None:
    decision = PolicyDecision(
        False,
        determining=tuple(f"forbid-{n}-" + "x" * 300 for n in range(5000)),
        errors=tuple(f"error {n}: " + WIDE * 20_000 for n in range(200)),
    )
    servicer = PolicyServicer(
        authority=WorstAuthority(_snapshot(shadow=True), decision),  # type: ignore[arg-type]
        store=None,  # type: ignore[arg-type]
    )
    request = _policy_request({"amount": 1})

    answer = await servicer.Evaluate(request, None)  # type: ignore[arg-type]

    # Clipped, not replaced: the first of each list is still named.
    assert answer.determining_policies[0].startswith("forbid-0-")
    assert answer.determining_policies[-1].endswith("more")
    assert answer.errors[0].startswith("error 0")
    assert answer.shadow.errors[0].startswith("error 0")
    assert answer.ByteSize() <= evaluate_answer_bound(request)
