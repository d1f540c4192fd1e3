"""Verifying an execution grant: what the executing side does before it runs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from joserfc.jwk import OKPKey

from govmesh.artifacts import GRANT_TYP
from govmesh.artifacts.canonical import request_digest
from govmesh.artifacts.jws import TokenError, parse_compact
from govmesh.artifacts.names import InvalidName, check_action, check_resource
from govmesh.runtime.errors import PermissionRefused

#: DESIGN.md section 4: a grant lives at most 60 seconds.
MAX_GRANT_LIFETIME_S = 60


class GrantError(PermissionRefused, ValueError):
    """A grant that must not be acted on; the message says why."""


def load_engine_keys(jwks: Mapping[str, Any] | Path | str) -> dict[str, OKPKey]:
    """The engine's grant keys by kid, from a JWKS document or a file holding one."""
    document = jwks if isinstance(jwks, Mapping) else json.loads(Path(jwks).read_text())
    keys: dict[str, OKPKey] = {}
    for params in document.get("keys", []):
        if params.get("kty") != "OKP" or params.get("crv") != "Ed25519" or "d" in params:
            continue  # grants are EdDSA only; private material does not belong here
        if not isinstance(params.get("kid"), str):
            continue
        keys[params["kid"]] = OKPKey.import_key(dict(params))
    if not keys:
        raise GrantError("no Ed25519 public keys with a kid in the engine's JWKS")
    return keys


def verify_grant(
    grant: str,
    *,
    engine_keys: Mapping[str, OKPKey],
    action: str,
    resource: str,
    context: Mapping[str, Any] | None = None,
    audience: str = "govmesh-executor",
    issuer: str = "govmesh",
    leeway_s: float = 5.0,
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """Check a grant for exactly this execution; returns its claims or raises GrantError.

    1. The token, read by the one strict reader every govmesh service uses
       (govmesh.artifacts.jws: canonical base64url, no duplicate members,
       I-JSON numbers), then its header: typ govmesh-grant+jwt, alg EdDSA, a
       kid the engine's JWKS names.
    2. The Ed25519 signature, with that key.
    3. iss and aud.
    4. The window: nbf and exp within the leeway, and a lifetime of at most 60 s.
    5. The binding: this action and resource are names in govmesh's grammar
       (govmesh.artifacts.names: the engine grants nothing else), `act` is
       exactly them, `req` is the digest of them and this context.
    """
    # 1. Token and header.
    try:
        token = parse_compact(grant)
    except TokenError as exc:
        raise GrantError(f"not a compact JWS: {exc}") from None
    header = token.header
    if header.get("typ") != GRANT_TYP:
        raise GrantError(f"typ {header.get('typ')!r} is not {GRANT_TYP}")
    if header.get("alg") != "EdDSA" or set(header) - {"typ", "alg", "kid"}:
        raise GrantError("a grant is signed EdDSA with typ, alg and kid only")
    key = engine_keys.get(str(header.get("kid")))
    if key is None:
        raise GrantError(f"kid {header.get('kid')!r} is not an engine key")
    # 2. Signature.
    public = key.public_key
    if not isinstance(public, Ed25519PublicKey):
        raise GrantError(f"kid {header.get('kid')!r} is not an Ed25519 key")
    try:
        public.verify(token.signature, token.signing_input)
    except InvalidSignature:
        raise GrantError("bad signature") from None
    claims = dict(token.payload)
    # 3. Issuer and audience.
    if claims.get("iss") != issuer:
        raise GrantError(f"issuer {claims.get('iss')!r}")
    if claims.get("aud") != audience:
        raise GrantError(f"audience {claims.get('aud')!r}")
    # 4. Window.
    now = clock()
    nbf, exp, iat = claims.get("nbf"), claims.get("exp"), claims.get("iat")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (nbf, exp, iat)):
        raise GrantError("iat, nbf and exp must be integers")
    assert isinstance(nbf, int) and isinstance(exp, int) and isinstance(iat, int)
    if exp - iat > MAX_GRANT_LIFETIME_S:
        raise GrantError("a grant may live at most 60 s")
    if now > exp + leeway_s:
        raise GrantError("the grant expired")
    if now < nbf - leeway_s:
        raise GrantError("the grant is not valid yet")
    # 5. Binding. An executor that asks about a name outside the grammar is
    # about to act on a spelling another name could stand for.
    try:
        check_action(action)
        check_resource(resource)
    except InvalidName as exc:
        raise GrantError(str(exc)) from None
    if claims.get("act") != {"action": action, "resource": resource}:
        raise GrantError("the grant is for another action or resource")
    if claims.get("req") != request_digest(action, resource, context or {}):
        raise GrantError("the grant is for another request")
    return claims
