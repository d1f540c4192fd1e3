"""Interoperability with a second, independent JOSE library (PyJWT).

Artifacts made with PyJWT from plain `cryptography` keys verify in govmesh,
and govmesh's artifacts verify in PyJWT against the published JWKS. The
forms PyJWT can be talked into producing that govmesh refuses are refused.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, cast

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from govmesh.artifacts import ATTESTATION_TYP, AUDIENCE, MANDATE_TYP, PROOF_TYP
from govmesh.artifacts.canonical import request_digest
from govmesh.client.artifacts import mandate_hash
from govmesh.verification.core import VerificationInput
from tests.support.verification import (
    ACTION,
    ATTESTOR,
    CONTEXT,
    ENV,
    GOOD_MEASUREMENT,
    ISSUER,
    RESOURCE,
    SUBJECT,
    World,
    make_world,
)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path / "trust")


def mandate_claims(jkt: str, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "sub": SUBJECT,
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": str(uuid.uuid4()),
        "scope": [{"action": "payments.*", "resource": "account:acme/*"}],
        "env": {"cluster": "prod-eu"},
        "cnf": {"jkt": jkt},
        **extra,
    }


def pyjwt_proof(private: Any, public_jwk: dict[str, Any], alg: str, mandate: str) -> str:
    claims = {
        "jti": str(uuid.uuid4()),
        "iat": int(time.time()),
        "req": request_digest(ACTION, RESOURCE, CONTEXT),
        "ath": mandate_hash(mandate),
    }
    return jwt.encode(claims, private, algorithm=alg, headers={"typ": PROOF_TYP, "jwk": public_jwk})


def thumbprint_by_hand(jwk: dict[str, Any]) -> str:
    # RFC 7638 computed without govmesh's helper: required members, sorted, no spaces.
    import base64
    import hashlib

    members = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}[jwk["kty"]]
    text = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(text.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("issuer_key", "alg"), [("issuer", "EdDSA"), ("issuer_es", "ES256"), ("issuer_rs", "RS256")]
)
async def test_a_request_made_entirely_with_pyjwt_verifies(
    world: World, issuer_key: str, alg: str
) -> None:
    signer = getattr(world, issuer_key)
    # The initiator's key is a plain `cryptography` P-256 key, its JWK built by PyJWT.
    agent = generate_private_key(SECP256R1())
    agent_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(agent.public_key()))
    jkt = thumbprint_by_hand(agent_jwk)
    mandate = jwt.encode(
        mandate_claims(jkt),
        signer.get_op_key("sign"),
        algorithm=alg,
        headers={"typ": MANDATE_TYP, "kid": signer.kid},
    )
    now = int(time.time())
    attestation = jwt.encode(
        {
            "iss": ATTESTOR,
            "sub": SUBJECT,
            "iat": now,
            "exp": now + 300,
            "cnf": {"jkt": jkt},
            "env": ENV,
            "measurements": [GOOD_MEASUREMENT],
        },
        cast(Any, world.attestor.get_op_key("sign")),
        algorithm="EdDSA",
        headers={"typ": ATTESTATION_TYP, "kid": world.attestor.kid},
    )
    request = VerificationInput(
        request_digest=request_digest(ACTION, RESOURCE, CONTEXT),
        action=ACTION,
        resource=RESOURCE,
        context=CONTEXT,
        mandate=mandate,
        proof=pyjwt_proof(agent, agent_jwk, "ES256", mandate),
        attestation=attestation,
    )
    verifier, _, _ = world.verifier()

    result = await verifier.verify(request)

    assert result.verified, [(o.check.value, o.detail) for o in result.failed]
    assert result.claims is not None and result.claims.cnf_jkt == jkt


def test_govmesh_artifacts_verify_in_pyjwt_against_the_published_jwks(world: World) -> None:
    published = json.loads((world.root / "issuer.jwks.json").read_text())
    for signer, alg in (
        (world.issuer, "EdDSA"),
        (world.issuer_es, "ES256"),
        (world.issuer_rs, "RS256"),
    ):
        mandate = world.mandate(key=signer)
        header = jwt.get_unverified_header(mandate)
        jwk = next(k for k in published["keys"] if k["kid"] == header["kid"])

        claims = jwt.decode(
            mandate,
            jwt.PyJWK({**jwk, "alg": alg}).key,
            algorithms=[alg],
            audience=AUDIENCE,
            issuer=ISSUER,
        )

        assert header["typ"] == MANDATE_TYP
        assert claims["cnf"]["jkt"] == world.agent.thumbprint

    proof = world.proof(world.mandate())
    proof_header = jwt.get_unverified_header(proof)
    proof_claims = jwt.decode(
        proof, jwt.PyJWK({**proof_header["jwk"], "alg": "EdDSA"}).key, algorithms=["EdDSA"]
    )
    assert thumbprint_by_hand(proof_header["jwk"]) == world.agent.thumbprint
    assert proof_claims["req"] == request_digest(ACTION, RESOURCE, CONTEXT)


async def test_pyjwt_unsecured_and_hmac_tokens_are_refused(world: World) -> None:
    verifier, _, _ = world.verifier()
    claims = mandate_claims(world.agent.thumbprint, env={})
    no_key: Any = None
    unsecured = jwt.encode(claims, no_key, algorithm="none", headers={"typ": MANDATE_TYP})
    public_x = str(world.issuer.as_dict(private=False)["x"])
    hmac = jwt.encode(
        claims,
        public_x,  # the issuer's public key, as an HMAC secret
        algorithm="HS256",
        headers={"typ": MANDATE_TYP, "kid": "issuer-ed"},
    )

    for mandate in (unsecured, hmac):
        result = await verifier.verify(world.request(mandate=mandate))
        assert [o.check.value for o in result.failed] == ["signature"]
