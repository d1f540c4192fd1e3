"""Execution grants: short-lived EdDSA JWTs that the executing side verifies."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from joserfc import jwt
from joserfc.jwk import OKPKey

from govmesh.artifacts import GRANT_TYP

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
        self._key = key
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
        header = {"alg": "EdDSA", "typ": GRANT_TYP, "kid": self._key.kid}
        return jwt.encode(header, body, self._key, algorithms=["EdDSA"])
