"""The table: one case per deny reason and per refused form, each with its exact answer.

Every case asserts the primary reason and the exact list of failed checks,
and then runs the answer through the engine's own consistency check
(`check_verification` with `claimed_inputs`), so the table also shows that
every answer verification gives is one the engine accepts as it stands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from joserfc.jwk import ECKey

from govmesh.artifacts import ATTESTATION_TYP, MANDATE_TYP, PROOF_TYP
from govmesh.artifacts.canonical import request_digest
from govmesh.artifacts.checks import REQUIRED_CHECKS
from govmesh.artifacts.keys import generate_ed25519
from govmesh.client.artifacts import Initiator
from govmesh.engine.claims import claimed_inputs
from govmesh.engine.consistency import check_verification
from govmesh.v1 import common_pb2, engine_pb2
from govmesh.verification.core import VerificationInput
from govmesh.verification.servicer import to_response
from tests.support.verification import (
    ACTION,
    ATTESTOR,
    CONTEXT,
    DROP,
    ENV,
    GOOD_MEASUREMENT,
    ISSUER,
    ISSUER_SUBJECTS,
    OTHER_MEASUREMENT,
    RESOURCE,
    SINGLE_KEY_ISSUER,
    SINGLE_KEY_SUBJECT,
    SUBJECT,
    World,
    hmac_token,
    make_world,
    raw_token,
)

R = common_pb2.DenyReason
OK = "VERIFIED"
MISSING = R.Name(common_pb2.MISSING_AUTHORIZATION)
INVALID = R.Name(common_pb2.INVALID_VERIFICATION)
EXPIRED = R.Name(common_pb2.EXPIRED_AUTHORIZATION)
REPLAY = R.Name(common_pb2.REPLAY_DETECTED)
ENVIRONMENT = R.Name(common_pb2.ENVIRONMENT_MISMATCH)
RUNTIME = R.Name(common_pb2.RUNTIME_INTEGRITY_FAILURE)
SCOPE = R.Name(common_pb2.POLICY_MISMATCH)
MALFORMED = R.Name(common_pb2.MALFORMED_REQUEST)
UNAVAILABLE = R.Name(common_pb2.PEER_UNAVAILABLE)

BOUND = {"cluster": "prod-eu"}


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[World], VerificationInput]
    reason: str  # OK, or the DenyReason name
    failed: tuple[str, ...] = ()
    uses_before: int = 0  # verify the same request this many times first
    store_down: bool = False


def now(w: World) -> int:
    return int(w.clock())


def with_mandate(**claims: Any) -> Callable[[World], VerificationInput]:
    return lambda w: w.request(mandate=w.mandate(**claims))


def with_proof(**claims: Any) -> Callable[[World], VerificationInput]:
    def build(w: World) -> VerificationInput:
        mandate = w.mandate()
        return w.request(mandate=mandate, proof=w.signed_proof(mandate, **claims))

    return build


def bound(
    binding: dict[str, object] | None = None, **attestation: Any
) -> Callable[[World], VerificationInput]:
    """A mandate bound to `binding` (default BOUND) with an attestation built from `attestation`."""

    def build(w: World) -> VerificationInput:
        mandate = w.mandate(env=BOUND if binding is None else binding)
        return w.request(mandate=mandate, attestation=w.attestation(**attestation))

    return build


def swapped_attestation_as_mandate(w: World) -> VerificationInput:
    attestation = w.attestation()
    return w.request(mandate=attestation)


def mandate_as_proof(w: World) -> VerificationInput:
    return w.request(proof=w.mandate())


def another_request_digest(w: World) -> VerificationInput:
    mandate = w.mandate()
    other = request_digest("payments.refund", RESOURCE, CONTEXT)
    return w.request(mandate=mandate, proof=w.agent.proof_for_digest(mandate, other), digest=other)


def proof_for_other_request(w: World) -> VerificationInput:
    mandate = w.mandate()
    return w.request(mandate=mandate, proof=w.proof(mandate, action="payments.refund"))


def proof_for_other_mandate(w: World) -> VerificationInput:
    return w.request(mandate=w.mandate(), proof=w.proof(w.mandate()))


def es256_initiator(w: World) -> VerificationInput:
    agent = Initiator(ECKey.generate_key("P-256"), clock=w.clock)
    mandate = w.mandate(cnf={"jkt": agent.thumbprint})
    return w.request(mandate=mandate, proof=w.proof(mandate, agent=agent))


def proof_alg_mismatch(w: World) -> VerificationInput:
    mandate = w.mandate()
    ec = ECKey.generate_key("P-256").as_dict(private=False)
    return w.request(mandate=mandate, proof=w.signed_proof(mandate, jwk=ec))


def proof_private_jwk(w: World) -> VerificationInput:
    mandate = w.mandate()
    private = w.agent.key.as_dict(private=True)
    return w.request(mandate=mandate, proof=w.signed_proof(mandate, jwk=private))


def proof_hs256(w: World) -> VerificationInput:
    mandate = w.mandate()
    header = {"alg": "HS256", "typ": PROOF_TYP, "jwk": w.agent.public_jwk}
    secret = w.agent.thumbprint.encode()
    return w.request(mandate=mandate, proof=hmac_token(header, w.proof_claims(mandate), secret))


def proof_alg_none(w: World) -> VerificationInput:
    mandate = w.mandate()
    header = {"alg": "none", "typ": PROOF_TYP, "jwk": w.agent.public_jwk}
    return w.request(mandate=mandate, proof=raw_token(header, w.proof_claims(mandate), b""))


def forged_proof(w: World) -> VerificationInput:
    mandate = w.mandate()
    return w.request(mandate=mandate, proof=w.signed_proof(mandate, key=generate_ed25519()))


def mandate_alg_none(signature: bytes) -> Callable[[World], VerificationInput]:
    def build(w: World) -> VerificationInput:
        header = {"alg": "none", "typ": MANDATE_TYP, "kid": "issuer-ed"}
        return w.request(mandate=raw_token(header, w.mandate_claims(), signature))

    return build


def key_confusion_hs256(w: World) -> VerificationInput:
    # The issuer's RS256 public key, as a PEM, used as an HMAC secret.
    header = {"alg": "HS256", "typ": MANDATE_TYP, "kid": "issuer-rs"}
    return w.request(mandate=hmac_token(header, w.mandate_claims(), w.rs256_public_pem()))


def not_json_context(w: World) -> VerificationInput:
    request = w.request()
    return VerificationInput(
        request_digest=request.request_digest,
        action=request.action,
        resource=request.resource,
        context=None,
        mandate=request.mandate,
        proof=request.proof,
    )


def nan_context(w: World) -> VerificationInput:
    request = w.request()
    return VerificationInput(
        request_digest=request.request_digest,
        action=request.action,
        resource=request.resource,
        context={"amount": float("nan")},
        mandate=request.mandate,
        proof=request.proof,
    )


CASES = [
    # -- accepted forms -------------------------------------------------------------
    Case("EdDSA mandate", lambda w: w.request(), OK),
    Case("ES256 mandate", lambda w: w.request(mandate=w.mandate(key=w.issuer_es)), OK),
    Case("RS256 mandate", lambda w: w.request(mandate=w.mandate(key=w.issuer_rs)), OK),
    Case(
        "kid-less key of a single-key issuer",
        lambda w: w.request(
            mandate=w.mandate(key=w.single, iss=SINGLE_KEY_ISSUER, sub=SINGLE_KEY_SUBJECT)
        ),
        OK,
    ),
    Case("audience list naming govmesh", with_mandate(aud=["other", "govmesh"]), OK),
    Case("attested environment satisfies the binding", bound(), OK),
    Case("list binding: any of", bound({"region": ["us-east-1", "eu-west-1"], "tier": 2}), OK),
    Case("attestation without a binding", bound({}), OK),
    Case("ES256 proof key", es256_initiator, OK),
    Case("exp passed within the skew", lambda w: w.request(mandate=w.mandate(exp=now(w) - 3)), OK),
    Case("nbf ahead within the skew", lambda w: w.request(mandate=w.mandate(nbf=now(w) + 3)), OK),
    Case("proof 59 s old", lambda w: with_proof(iat=now(w) - 59)(w), OK),
    Case("proof iat ahead within the skew", lambda w: with_proof(iat=now(w) + 4)(w), OK),
    Case("attestation iat ahead within the skew", lambda w: bound(iat=now(w) + 4)(w), OK),
    Case("attestation nbf ahead within the skew", lambda w: bound(nbf=now(w) + 4)(w), OK),
    # -- MISSING_AUTHORIZATION ---------------------------------------------------------------
    Case(
        "no mandate",
        lambda w: w.request(mandate="", proof=w.proof("")),
        MISSING,
        ("presence", "signature", "issuer", "window", "pop", "environment", "runtime", "scope"),
    ),
    Case(
        "no proof", lambda w: w.request(proof=""), MISSING, ("presence", "window", "pop", "replay")
    ),
    Case(
        "neither mandate nor proof",
        lambda w: w.request(mandate="", proof=""),
        MISSING,
        (
            "presence",
            "signature",
            "issuer",
            "window",
            "pop",
            "replay",
            "environment",
            "runtime",
            "scope",
        ),
    ),
    # -- INVALID_VERIFICATION: the mandate ---------------------------------------------------
    Case(
        "forged mandate signature",
        lambda w: w.request(mandate=w.mandate(key=w.stranger)),
        INVALID,
        ("signature",),
    ),
    Case(
        "unknown issuer",
        with_mandate(iss="https://evil.test"),
        INVALID,
        ("signature", "issuer"),
    ),
    Case(
        "unknown kid",
        lambda w: w.request(mandate=w.mandate(header={"kid": "nope"})),
        INVALID,
        ("signature",),
    ),
    Case(
        "no kid while the issuer has several keys",
        lambda w: w.request(mandate=w.mandate(header={"kid": None})),
        INVALID,
        ("signature",),
    ),
    Case(
        "kid naming no key of a kid-less issuer",
        lambda w: w.request(
            mandate=w.mandate(
                key=w.single, iss=SINGLE_KEY_ISSUER, sub=SINGLE_KEY_SUBJECT, header={"kid": "k1"}
            )
        ),
        INVALID,
        ("signature",),
    ),
    Case("alg none, empty signature", mandate_alg_none(b""), INVALID, ("signature",)),
    Case("alg none with a signature", mandate_alg_none(b"\x01" * 64), INVALID, ("signature",)),
    Case(
        "key confusion: RS256 public key as HS256 secret",
        key_confusion_hs256,
        INVALID,
        ("signature",),
    ),
    Case(
        "alg/key type mismatch: ES256 under an Ed25519 kid",
        lambda w: w.request(mandate=w.mandate(key=w.issuer_es, header={"kid": "issuer-ed"})),
        INVALID,
        ("signature",),
    ),
    Case(
        "alg/key type mismatch: EdDSA under an RSA kid",
        lambda w: w.request(mandate=w.mandate(header={"kid": "issuer-rs"})),
        INVALID,
        ("signature",),
    ),
    Case(
        "alg/key type mismatch: RS256 under an EC kid",
        lambda w: w.request(mandate=w.mandate(key=w.issuer_rs, header={"kid": "issuer-es"})),
        INVALID,
        ("signature",),
    ),
    Case("wrong typ", lambda w: w.request(mandate=w.mandate(typ="JWT")), INVALID, ("signature",)),
    Case(
        "swapped typ: proof typ on a mandate",
        lambda w: w.request(mandate=w.mandate(typ=PROOF_TYP)),
        INVALID,
        ("signature",),
    ),
    Case(
        "swapped typ: attestation typ on a mandate",
        lambda w: w.request(mandate=w.mandate(typ=ATTESTATION_TYP)),
        INVALID,
        ("signature",),
    ),
    Case(
        "swapped artifacts: a mandate presented as attestation",
        lambda w: w.request(attestation=w.mandate()),
        INVALID,
        ("attestation", "runtime"),
    ),
    Case(
        "swapped artifacts: an attestation presented as mandate",
        swapped_attestation_as_mandate,
        INVALID,
        ("signature", "issuer", "window", "environment", "runtime", "scope"),
    ),
    Case(
        "swapped artifacts: a mandate presented as proof",
        mandate_as_proof,
        INVALID,
        ("pop", "replay"),
    ),
    Case("wrong audience", with_mandate(aud="someone-else"), INVALID, ("issuer",)),
    Case(
        "issuer signing for another issuer's subject",
        lambda w: w.request(mandate=w.mandate(key=w.single, iss=SINGLE_KEY_ISSUER, sub=SUBJECT)),
        INVALID,
        ("issuer",),
    ),
    Case(
        "sub outside every namespace", with_mandate(sub="spiffe://x/agent/1"), INVALID, ("issuer",)
    ),
    Case(
        "sub sharing a namespace's letters but not its segment",
        with_mandate(sub=ISSUER_SUBJECTS.rstrip("/") + "X/1"),
        INVALID,
        ("issuer",),
    ),
    Case(
        "malformed mandate",
        lambda w: w.request(mandate="not-a-token"),
        INVALID,
        ("signature", "issuer", "window", "pop", "environment", "runtime", "scope"),
    ),
    Case("missing iss", with_mandate(iss=DROP), INVALID, ("signature", "issuer")),
    Case("missing aud", with_mandate(aud=DROP), INVALID, ("signature", "issuer")),
    Case("missing iat", with_mandate(iat=DROP), INVALID, ("signature", "window")),
    Case("missing nbf", with_mandate(nbf=DROP), INVALID, ("signature", "window")),
    Case("nbf not a number", with_mandate(nbf="soon"), INVALID, ("signature", "window")),
    Case("missing jti", with_mandate(jti=DROP), INVALID, ("signature",)),
    Case("missing sub", with_mandate(sub=DROP), INVALID, ("signature", "issuer")),
    # Signed by a trusted issuer, inside its subject namespace, yet a subject
    # the decision log cannot record: it would turn an ALLOW into a DENY
    # whose entry lineage refuses.
    Case("sub with a NUL", with_mandate(sub=SUBJECT + "\x00x"), INVALID, ("signature",)),
    Case("sub with an escape", with_mandate(sub=SUBJECT + "\x1b[2J"), INVALID, ("signature",)),
    Case("sub past 2048 bytes", with_mandate(sub=SUBJECT + "é" * 1100), INVALID, ("signature",)),
    Case("mandate jti with a NUL", with_mandate(jti="m\x00"), INVALID, ("signature",)),
    Case("missing exp", with_mandate(exp=DROP), INVALID, ("signature", "window")),
    Case("iat not a number", with_mandate(iat="now"), INVALID, ("signature", "window")),
    Case("missing cnf.jkt", with_mandate(cnf=DROP), INVALID, ("signature", "pop")),
    # Numbers no time claim holds: the same answer whatever the claim, never an internal error.
    Case(
        "exp beyond I-JSON's integers (10^400)",
        with_mandate(exp=10**400),
        INVALID,
        ("signature", "issuer", "window", "pop", "environment", "runtime", "scope"),
    ),
    Case(
        "iat beyond I-JSON's integers (2^53 + 1)",
        with_mandate(iat=2**53 + 1),
        INVALID,
        ("signature", "issuer", "window", "pop", "environment", "runtime", "scope"),
    ),
    Case("exp after year 9999", with_mandate(exp=1e300), INVALID, ("signature", "window")),
    Case("nbf before 1970", with_mandate(nbf=-1), INVALID, ("signature", "window")),
    Case("exp a bool", with_mandate(exp=True), INVALID, ("signature", "window")),
    Case("missing scope", with_mandate(scope=DROP), INVALID, ("signature", "scope")),
    Case(
        "scope entry with a member govmesh does not know",
        with_mandate(scope=[{"action": "*", "resource": "*", "max_amount": 10}]),
        INVALID,
        ("signature", "scope"),
    ),
    Case(
        "missing env binding",
        with_mandate(env=DROP),
        INVALID,
        ("signature", "environment", "runtime"),
    ),
    # -- INVALID_VERIFICATION: the proof -------------------------------------------------
    Case(
        "wrong thumbprint",
        lambda w: w.request(
            proof=Initiator.generate(clock=w.clock).proof(w.mandate(), ACTION, RESOURCE, CONTEXT)
        ),
        INVALID,
        ("pop",),
    ),
    Case("digest of another request", proof_for_other_request, INVALID, ("pop",)),
    Case("mandate hash of another mandate", proof_for_other_mandate, INVALID, ("pop",)),
    Case("forged proof signature", forged_proof, INVALID, ("pop",)),
    Case("proof with the wrong typ", with_proof(typ="JWT"), INVALID, ("pop",)),
    Case("proof jti with a NUL", with_proof(jti="p\x00"), INVALID, ("pop",)),
    Case(
        "swapped typ: mandate typ on a proof",
        lambda w: (lambda m: w.request(mandate=m, proof=w.signed_proof(m, typ=MANDATE_TYP)))(
            w.mandate()
        ),
        INVALID,
        ("pop",),
    ),
    Case("proof signed HS256", proof_hs256, INVALID, ("pop",)),
    Case("proof alg none", proof_alg_none, INVALID, ("pop",)),
    Case("proof alg not its key's", proof_alg_mismatch, INVALID, ("pop",)),
    Case("proof jwk with a private key", proof_private_jwk, INVALID, ("pop", "replay")),
    Case("proof without jti", with_proof(jti=DROP), INVALID, ("pop", "replay")),
    Case("proof without req", with_proof(req=DROP), INVALID, ("pop",)),
    Case("proof iat 10^400", with_proof(iat=10**400), INVALID, ("window", "pop", "replay")),
    Case("proof iat before 1970", with_proof(iat=-1), INVALID, ("window", "pop")),
    Case(
        "request_digest of another request",
        another_request_digest,
        INVALID,
        ("digest",),
    ),
    # -- MALFORMED_REQUEST ------------------------------------------------------------------------
    Case("context not JSON", not_json_context, MALFORMED, ("digest",)),
    Case("context with NaN", nan_context, MALFORMED, ("digest",)),
    # -- EXPIRED_AUTHORIZATION ---------------------------------------------------------------
    Case(
        "mandate expired",
        lambda w: w.request(mandate=w.mandate(exp=now(w) - 10)),
        EXPIRED,
        ("window",),
    ),
    Case(
        "mandate not yet valid",
        lambda w: w.request(mandate=w.mandate(nbf=now(w) + 60)),
        EXPIRED,
        ("window",),
    ),
    Case(
        "mandate issued in the future",
        lambda w: w.request(mandate=w.mandate(iat=now(w) + 60)),
        EXPIRED,
        ("window",),
    ),
    Case("proof too old", lambda w: with_proof(iat=now(w) - 61)(w), EXPIRED, ("window",)),
    Case("skewed proof iat", lambda w: with_proof(iat=now(w) + 6)(w), EXPIRED, ("window",)),
    Case("attestation expired", lambda w: bound(exp=now(w) - 10)(w), EXPIRED, ("window",)),
    Case(
        "attestation issued in the future beyond the skew",
        lambda w: bound(iat=now(w) + 6)(w),
        EXPIRED,
        ("window",),
    ),
    Case(
        "attestation not yet valid beyond the skew",
        lambda w: bound(nbf=now(w) + 6)(w),
        EXPIRED,
        ("window",),
    ),
    # -- REPLAY_DETECTED / store -----------------------------------------------------------------
    Case("replay", lambda w: w.request(), REPLAY, ("replay",), uses_before=1),
    Case(
        "replay store unreachable", lambda w: w.request(), UNAVAILABLE, ("replay",), store_down=True
    ),
    # -- INVALID_VERIFICATION: the attestation ----------------------------------------------------
    Case("untrusted attestor", bound(iss="https://evil.test"), INVALID, ("attestation",)),
    Case(
        "attestation signed with an issuer key",
        lambda w: bound(key=w.issuer, iss=ATTESTOR)(w),
        INVALID,
        ("attestation",),
    ),
    Case(
        "forged attestation",
        lambda w: bound(key=generate_ed25519("attestor-1"))(w),
        INVALID,
        ("attestation",),
    ),
    Case("attestation without iat", bound(iat=DROP), INVALID, ("window", "attestation")),
    Case("attestation nbf not a number", bound(nbf="soon"), INVALID, ("window", "attestation")),
    Case(
        "attestation exp 10^400",
        bound(exp=10**400),
        INVALID,
        ("window", "attestation", "environment", "runtime"),
    ),
    Case("attestation exp 1e300", bound(exp=1e300), INVALID, ("window", "attestation")),
    Case(
        "swapped typ: mandate typ on an attestation",
        bound(typ=MANDATE_TYP),
        INVALID,
        ("attestation",),
    ),
    # -- ENVIRONMENT_MISMATCH -----------------------------------------------------------------
    Case(
        "binding without attestation",
        lambda w: w.request(mandate=w.mandate(env=BOUND)),
        ENVIRONMENT,
        ("environment", "runtime"),
    ),
    Case("env mismatch", bound(env={**ENV, "cluster": "dev"}), ENVIRONMENT, ("environment",)),
    Case("bound key not attested", bound({"zone": "a"}), ENVIRONMENT, ("environment",)),
    Case("list binding: none of", bound({"region": ["us-east-1"]}), ENVIRONMENT, ("environment",)),
    Case("binding is type-strict", bound({"tier": "2"}), ENVIRONMENT, ("environment",)),
    Case(
        "attestation of another subject", bound(sub="spiffe://other"), ENVIRONMENT, ("environment",)
    ),
    Case("attestation of another key", bound(cnf={"jkt": "x" * 43}), ENVIRONMENT, ("environment",)),
    # -- RUNTIME_INTEGRITY_FAILURE -----------------------------------------------------------
    Case(
        "unknown measurement",
        bound(measurements=[GOOD_MEASUREMENT, OTHER_MEASUREMENT]),
        RUNTIME,
        ("runtime",),
    ),
    Case("binding with no measurement", bound(measurements=[]), RUNTIME, ("runtime",)),
    Case("malformed measurement", bound(measurements=["sha256:zz"]), RUNTIME, ("runtime",)),
    Case(
        "unknown measurement without a binding",
        bound({}, measurements=[OTHER_MEASUREMENT]),
        RUNTIME,
        ("runtime",),
    ),
    # -- POLICY_MISMATCH (scope) ---------------------------------------------------------------
    Case("out-of-scope action", lambda w: w.request(action="admin.delete"), SCOPE, ("scope",)),
    Case(
        "out-of-scope resource", lambda w: w.request(resource="account:other/x"), SCOPE, ("scope",)
    ),
    Case("empty scope", with_mandate(scope=[]), SCOPE, ("scope",)),
    # A `*` matches any run of characters; only names in the grammar are matched.
    Case(
        "another spelling of an in-scope resource",
        lambda w: w.request(resource="account:acme/treasury/"),
        MALFORMED,
        ("scope",),
    ),
    Case(
        "an encoded spelling of an in-scope resource",
        lambda w: w.request(resource="account:acme/%74reasury"),
        MALFORMED,
        ("scope",),
    ),
    Case(
        "another spelling of an in-scope action",
        lambda w: w.request(action="payments.Transfer"),
        MALFORMED,
        ("scope",),
    ),
    # -- several at once: every failure listed, the primary by precedence --------------------
    Case(
        "expired and out of scope",
        lambda w: w.request(mandate=w.mandate(exp=now(w) - 10), action="admin.delete"),
        EXPIRED,
        ("window", "scope"),
    ),
    Case(
        "env mismatch and unknown measurement",
        bound(env={"cluster": "dev"}, measurements=[OTHER_MEASUREMENT]),
        ENVIRONMENT,
        ("environment", "runtime"),
    ),
]


def authorize_request(request: VerificationInput) -> engine_pb2.AuthorizeRequest:
    message = engine_pb2.AuthorizeRequest(
        action=request.action,
        resource=request.resource,
        mandate=request.mandate,
        proof=request.proof,
        attestation=request.attestation,
    )
    if request.context is not None:
        json_format.ParseDict(dict(request.context), message.context)
    return message


@pytest.fixture(scope="module")
def world_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("table")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_case(case: Case, world_root: Path) -> None:
    world = make_world(world_root)
    verifier, _, store = world.verifier()
    request = case.build(world)
    for _ in range(case.uses_before):
        assert (await verifier.verify(request)).verified
    store.unavailable = case.store_down

    result = await verifier.verify(request)

    failed = tuple(o.check.value for o in result.failed)
    assert [o.check for o in result.outcomes] == list(REQUIRED_CHECKS)
    if case.reason == OK:
        assert result.verified, [(o.check.value, o.detail) for o in result.failed]
        assert result.claims is not None
    else:
        assert not result.verified
        assert result.claims is None
        assert (R.Name(result.reason), failed) == (case.reason, case.failed), [
            (o.check.value, o.detail) for o in result.failed
        ]
        assert all(o.detail for o in result.failed)
    # The engine takes the answer as it is: consistent, and the same failures.
    answer = to_response(result)
    if request.context is None:
        return  # no AuthorizeRequest carries such a context; the engine never sends one
    failures = check_verification(
        answer, request.request_digest, claimed_inputs(authorize_request(request))
    )
    assert tuple(f.check for f in failures) == failed


async def test_verified_claims_are_exactly_what_the_artifacts_say(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    verifier, _, _ = world.verifier()
    mandate = world.mandate(env=BOUND, att={"session": "s-1", "parent": "d-0"})
    request = world.request(mandate=mandate, attestation=world.attestation())

    result = await verifier.verify(request)

    assert result.claims is not None
    claims = result.claims
    assert claims.subject == SUBJECT
    assert claims.issuer == ISSUER
    assert dict(claims.env) == ENV
    assert dict(claims.attribution) == {"session": "s-1", "parent": "d-0"}
    assert claims.cnf_jkt == world.agent.thumbprint
    assert claims.attestor == ATTESTOR
    assert claims.measurements == (GOOD_MEASUREMENT,)
    answer = to_response(result)
    assert answer.claims.proof_id and answer.claims.mandate_id
    assert answer.claims.mandate_expires_at > int(world.clock())
    assert (
        check_verification(
            answer, request.request_digest, claimed_inputs(authorize_request(request))
        )
        == []
    )


def test_every_deny_reason_verification_gives_has_a_case() -> None:
    covered = {c.reason for c in CASES}
    for reason in (MISSING, INVALID, EXPIRED, REPLAY, ENVIRONMENT, RUNTIME, SCOPE, MALFORMED):
        assert reason in covered
