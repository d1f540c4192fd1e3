"""Signature verification with pinned algorithms, over tokens read by `govmesh.artifacts.jws`.

Tokens are parsed by the one strict reader, `govmesh.artifacts.jws.parse_compact`,
which the engine uses too. Here the header is held to govmesh's rules and
signatures are checked by joserfc's algorithm for the one algorithm the key is
pinned to; the header's `alg` must name that algorithm.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from joserfc.jws import JWSRegistry

from govmesh.artifacts.answers import quoted
from govmesh.artifacts.jws import CompactJWS, TokenError
from govmesh.artifacts.trust import VerifyingKey, usable_key

#: Header members whose meaning govmesh does not implement: refused, never ignored.
REFUSED_HEADERS = frozenset({"crit", "b64", "zip", "enc"})


def check_header(jws: CompactJWS, typ: str) -> str:
    """Check `typ` and refuse unsafe algorithms and headers; return the header alg."""
    header = jws.header
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise TokenError("header has no alg")
    if alg.lower() == "none":
        raise TokenError("alg none is refused")
    if alg.upper().startswith("HS"):
        raise TokenError(f"HMAC alg {quoted(alg)} is refused")
    refused = REFUSED_HEADERS & set(header)
    if refused:
        raise TokenError(f"header {quoted(sorted(refused)[0])} is not supported")
    if header.get("typ") != typ:
        raise TokenError(f"typ {quoted(header.get('typ'))}, expected {typ!r}")
    return alg


def verify_signature(jws: CompactJWS, *, alg: str, pinned: str, key: VerifyingKey) -> None:
    """Verify with `key`, which verifies only its `pinned` algorithm; TokenError otherwise."""
    if alg != pinned:
        raise TokenError(f"alg {quoted(alg)} does not match the key's {pinned}")
    algorithm = JWSRegistry.algorithms.get(pinned)
    if algorithm is None:
        raise TokenError(f"alg {pinned} unavailable")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            valid = algorithm.verify(jws.signing_input, jws.signature, key)
    except (ValueError, TypeError) as exc:
        raise TokenError(f"signature does not verify: {exc}") from None
    if not valid:
        raise TokenError("signature does not verify")


def header_key(jws: CompactJWS) -> tuple[str, VerifyingKey, Mapping[str, Any]]:
    """The public key a proof carries in its `jwk` header: (pinned alg, key, jwk)."""
    jwk = jws.header.get("jwk")
    if not isinstance(jwk, dict):
        raise TokenError("header has no jwk")
    if {"d", "p", "q", "dp", "dq", "qi", "oth", "k"} & set(jwk):
        raise TokenError("jwk carries private or symmetric key material")
    kty = jwk.get("kty")
    params = dict(jwk)
    # A proof key need not declare its alg: the header alg is the declaration,
    # held against the key type (EC and RSA keys are usable only with one alg).
    if kty in ("EC", "RSA") and "alg" not in params:
        params["alg"] = {"EC": "ES256", "RSA": "RS256"}[kty]
    try:
        pinned, key = usable_key(params)
    except ValueError as exc:
        raise TokenError(f"jwk: {exc}") from None
    return pinned, key, jwk
