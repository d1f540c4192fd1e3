"""Producing artifacts: proofs of possession, and mandates and attestations for development."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from joserfc import jwt
from joserfc.jwk import OKPKey

from govmesh.artifacts import ATTESTATION_TYP, AUDIENCE, MANDATE_TYP, PROOF_TYP
from govmesh.artifacts.canonical import request_digest, sha256_b64url
from govmesh.artifacts.keys import jwk_thumbprint, public_jwk


def mandate_hash(mandate: str) -> str:
    """The proof's `ath`: base64url SHA-256 of the mandate's compact form."""
    return sha256_b64url(mandate.encode("ascii"))


def _sign(key: OKPKey, typ: str, claims: Mapping[str, Any], **header: Any) -> str:
    return jwt.encode(
        {"alg": "EdDSA", "typ": typ, **header}, dict(claims), key, algorithms=["EdDSA"]
    )


class Initiator:
    """The key a mandate is bound to; signs one fresh proof per request."""

    def __init__(self, key: OKPKey, *, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self._clock = clock

    @property
    def thumbprint(self) -> str:
        """RFC 7638 thumbprint: what a mandate's cnf.jkt must name."""
        return jwk_thumbprint(self._key.as_dict(private=False))

    def proof(
        self, mandate: str, action: str, resource: str, context: Mapping[str, Any] | None = None
    ) -> str:
        """A proof of possession for exactly this request and mandate."""
        claims = {
            "jti": str(uuid.uuid4()),
            "iat": int(self._clock()),
            "req": request_digest(action, resource, context or {}),
            "ath": mandate_hash(mandate),
        }
        jwk = public_jwk(self._key.as_dict(private=False))
        jwk.pop("kid", None)
        return _sign(self._key, PROOF_TYP, claims, jwk=jwk)


def issue_mandate(
    key: OKPKey,
    *,
    issuer: str,
    subject: str,
    holder_thumbprint: str,
    scope: Sequence[Mapping[str, str]],
    env: Mapping[str, Any] | None = None,
    attribution: Mapping[str, Any] | None = None,
    ttl_s: int = 600,
    clock: Callable[[], float] = time.time,
) -> str:
    """A mandate signed by an issuer key (what an IdP or org authority issues)."""
    now = int(clock())
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + ttl_s,
        "jti": str(uuid.uuid4()),
        "scope": [dict(entry) for entry in scope],
        "env": dict(env or {}),
        "cnf": {"jkt": holder_thumbprint},
    }
    if attribution:
        claims["att"] = dict(attribution)
    return _sign(key, MANDATE_TYP, claims, kid=key.kid)


def issue_attestation(
    key: OKPKey,
    *,
    issuer: str,
    subject: str,
    holder_thumbprint: str,
    env: Mapping[str, Any],
    measurements: Sequence[str],
    ttl_s: int = 300,
    clock: Callable[[], float] = time.time,
) -> str:
    """An attestation signed by an attestor key (what a runtime attestor issues)."""
    now = int(clock())
    claims = {
        "iss": issuer,
        "sub": subject,
        "iat": now,
        "exp": now + ttl_s,
        "cnf": {"jkt": holder_thumbprint},
        "env": dict(env),
        "measurements": list(measurements),
    }
    return _sign(key, ATTESTATION_TYP, claims, kid=key.kid)
