"""Producing artifacts: proofs of possession, and mandates and attestations for development.

A caller holds one key (`Initiator`) that its mandates are bound to (their
cnf.jkt is the key's RFC 7638 thumbprint) and signs one fresh proof per
request with it:

    agent = Initiator.generate()
    mandate = ...                      # from an issuer, naming agent.thumbprint
    proof = agent.proof(mandate, "payments.transfer", "account:acme/treasury", {"amount": 250})

`issue_mandate` and `issue_attestation` sign what an issuer and an attestor
would, for development and tests. Keys may be Ed25519 (EdDSA), EC P-256
(ES256) or RSA (RS256, e = 65537, 2048 to 4096 bits); the algorithm follows
from the key.
"""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey

from govmesh.artifacts import ATTESTATION_TYP, AUDIENCE, MANDATE_TYP, PROOF_TYP
from govmesh.artifacts.canonical import request_digest, sha256_b64url
from govmesh.artifacts.keys import generate_ed25519, jwk_thumbprint, public_jwk
from govmesh.artifacts.trust import check_key_cost

SigningKey = OKPKey | ECKey | RSAKey


def signing_alg(key: SigningKey) -> str:
    """The one JWS algorithm govmesh accepts for `key`."""
    params = key.as_dict(private=False)
    if isinstance(key, OKPKey) and params.get("crv") == "Ed25519":
        alg = "EdDSA"
    elif isinstance(key, ECKey) and params.get("crv") == "P-256":
        alg = "ES256"
    elif isinstance(key, RSAKey):
        check_key_cost(params)  # verification refuses the others: their cost is unbounded
        alg = "RS256"
    else:
        raise ValueError(f"govmesh does not accept {params.get('kty')} {params.get('crv')} keys")
    declared = params.get("alg")
    if declared is not None and declared != alg:
        raise ValueError(f"key declares alg {declared}, govmesh uses {alg} for it")
    return alg


def mandate_hash(mandate: str) -> str:
    """The proof's `ath`: base64url SHA-256 of the mandate's compact form."""
    return sha256_b64url(mandate.encode("ascii"))


def thumbprint(key: SigningKey) -> str:
    """RFC 7638 thumbprint of `key`'s public half: what a mandate's cnf.jkt names."""
    return jwk_thumbprint(key.as_dict(private=False))


def sign(key: SigningKey, typ: str, claims: Mapping[str, Any], **header: Any) -> str:
    """A compact JWS of `claims` with header typ, the key's alg, and `header` members."""
    alg = signing_alg(key)
    fields = {"alg": alg, "typ": typ, **{k: v for k, v in header.items() if v is not None}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jwt.encode(fields, dict(claims), key, algorithms=[alg])


class Initiator:
    """The key a mandate is bound to; signs one fresh proof per request."""

    def __init__(self, key: SigningKey, *, clock: Callable[[], float] = time.time) -> None:
        signing_alg(key)  # refuse a key govmesh would not accept, now rather than later
        self._key = key
        self._clock = clock

    @classmethod
    def generate(cls, *, clock: Callable[[], float] = time.time) -> Initiator:
        """An initiator with a fresh Ed25519 key."""
        return cls(generate_ed25519(), clock=clock)

    @property
    def key(self) -> SigningKey:
        """The private key."""
        return self._key

    @property
    def public_jwk(self) -> dict[str, Any]:
        """The public JWK a proof carries in its header."""
        jwk = public_jwk(self._key.as_dict(private=False))
        jwk.pop("kid", None)
        return jwk

    @property
    def thumbprint(self) -> str:
        """RFC 7638 thumbprint: what a mandate's cnf.jkt must name."""
        return thumbprint(self._key)

    def proof(
        self,
        mandate: str,
        action: str,
        resource: str,
        context: Mapping[str, Any] | None = None,
        *,
        jti: str | None = None,
    ) -> str:
        """A proof of possession for exactly this request and mandate."""
        return self.proof_for_digest(
            mandate, request_digest(action, resource, context or {}), jti=jti
        )

    def proof_for_digest(self, mandate: str, digest: str, *, jti: str | None = None) -> str:
        """A proof for a request whose digest is already known."""
        claims = {
            "jti": jti or str(uuid.uuid4()),
            "iat": int(self._clock()),
            "req": digest,
            "ath": mandate_hash(mandate),
        }
        return sign(self._key, PROOF_TYP, claims, jwk=self.public_jwk)


def issue_mandate(
    key: SigningKey,
    *,
    issuer: str,
    subject: str,
    holder_thumbprint: str,
    scope: Sequence[Mapping[str, str]],
    env: Mapping[str, Any] | None = None,
    attribution: Mapping[str, Any] | None = None,
    ttl_s: int = 600,
    audience: str = AUDIENCE,
    jti: str | None = None,
    clock: Callable[[], float] = time.time,
) -> str:
    """A mandate signed by an issuer key (what an IdP or org authority issues).

    `scope` entries are {"action": pattern, "resource": pattern} with `*` as
    glob; `env` binds the attested environment (a list value means any of).
    """
    now = int(clock())
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": now + ttl_s,
        "jti": jti or str(uuid.uuid4()),
        "scope": [dict(entry) for entry in scope],
        "env": dict(env or {}),
        "cnf": {"jkt": holder_thumbprint},
    }
    if attribution:
        claims["att"] = dict(attribution)
    return sign(key, MANDATE_TYP, claims, kid=key.kid)


def issue_attestation(
    key: SigningKey,
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
    return sign(key, ATTESTATION_TYP, claims, kid=key.kid)
