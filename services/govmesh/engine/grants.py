"""Execution grants: short-lived EdDSA JWTs that the executing side verifies.

A grant is signed for every ALLOW, so it is built directly: the header's
encoding once, the claims as RFC 8785 JSON, one Ed25519 signature from
cryptography. It is an ordinary compact JWS; executors read it with any
strict JWS reader (`govmesh.client.verify_grant`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc.jwk import OKPKey

from govmesh.artifacts import GRANT_TYP
from govmesh.artifacts.canonical import CanonicalizationError, b64url, canonical_json

MAX_GRANT_TTL_S = 60


class Ed25519GrantSigner:
    """Signs grants with the engine's key; adds iss, aud and the validity window."""

    def __init__(
        self,
        *,
        key: OKPKey,
        issuer: str,
        audience: str,
        ttl_s: int,
        clock: Callable[[], float],
    ) -> None:
        if not 0 < ttl_s <= MAX_GRANT_TTL_S:
            raise ValueError(f"grant ttl must be 1..{MAX_GRANT_TTL_S} s")
        private = key.private_key
        if not isinstance(private, Ed25519PrivateKey):
            raise ValueError("grants are signed with an Ed25519 private key")
        self._private = private
        header = {"alg": "EdDSA", "typ": GRANT_TYP, "kid": key.kid}
        self._header = b64url(canonical_json(header))
        self._issuer = issuer
        self._audience = audience
        self._ttl = ttl_s
        self._clock = clock

    def sign(self, claims: Mapping[str, Any]) -> str:
        """A compact JWS over `claims` plus iss, aud, iat, nbf and exp."""
        now = int(self._clock())
        body = {
            "iss": self._issuer,
            "aud": self._audience,
            "iat": now,
            "nbf": now,
            "exp": now + self._ttl,
            **claims,
        }
        try:
            payload = canonical_json(body)
        except CanonicalizationError:
            # Escaped JSON signs whatever the claims hold; verifiers need no canonical form.
            payload = json.dumps(body, separators=(",", ":")).encode("ascii")
        signing_input = f"{self._header}.{b64url(payload)}"
        signature = self._private.sign(signing_input.encode("ascii"))
        return f"{signing_input}.{b64url(signature)}"
