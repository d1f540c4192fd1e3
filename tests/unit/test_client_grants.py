"""The executing side's check of a grant: every way a grant must be refused."""

from __future__ import annotations

import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import OKPKey

from govmesh.artifacts import GRANT_TYP
from govmesh.artifacts.canonical import request_digest
from govmesh.artifacts.keys import generate_ed25519, public_jwks
from govmesh.client import GrantError, load_engine_keys, verify_grant
from govmesh.engine.grants import Ed25519GrantSigner
from tests.unit.engine_fakes import authorize_request, build_engine

ACTION, RESOURCE, CONTEXT = "payments.transfer", "account:acme/treasury", {"amount": 250}


async def _grant() -> tuple[str, OKPKey]:
    h = build_engine()
    response = await h.engine.authorize(authorize_request())
    assert response.grant
    return response.grant, h.key


def _keys(key: OKPKey) -> dict[str, OKPKey]:
    return load_engine_keys(public_jwks([key]))


def _check(grant: str, key: OKPKey, **overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "engine_keys": _keys(key),
        "action": ACTION,
        "resource": RESOURCE,
        "context": CONTEXT,
        "audience": "executor",
        **overrides,
    }
    return verify_grant(grant, **arguments)


async def test_a_grant_from_the_engine_verifies_for_its_own_request() -> None:
    grant, key = await _grant()
    claims = _check(grant, key)
    assert claims["req"] == request_digest(ACTION, RESOURCE, CONTEXT)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"resource": "account:acme/frozen"}, "another action or resource"),
        ({"action": "payments.refund"}, "another action or resource"),
        ({"context": {"amount": 251}}, "another request"),
        ({"audience": "someone-else"}, "audience"),
        ({"issuer": "not-govmesh"}, "issuer"),
        ({"clock": lambda: time.time() + 120}, "expired"),
        ({"clock": lambda: time.time() - 120}, "not valid yet"),
    ],
)
async def test_a_grant_for_anything_else_is_refused(
    overrides: dict[str, Any], message: str
) -> None:
    grant, key = await _grant()
    with pytest.raises(GrantError, match=message):
        _check(grant, key, **overrides)


async def test_a_grant_signed_by_another_key_or_tampered_is_refused() -> None:
    grant, key = await _grant()
    with pytest.raises(GrantError, match="not an engine key"):
        _check(grant, key, engine_keys=_keys(generate_ed25519()))
    impostor = generate_ed25519(kid=key.kid)
    with pytest.raises(GrantError, match="bad signature"):
        _check(grant, key, engine_keys=_keys(impostor))
    header, payload, signature = grant.split(".")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    with pytest.raises(GrantError):
        _check(f"{header}.{payload}.{flipped}", key)


def _signed(key: OKPKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    return jwt.encode(header, claims, key, algorithms=["EdDSA", "HS256"])


async def test_grant_headers_other_than_the_engines_are_refused() -> None:
    key = generate_ed25519()
    now = int(time.time())
    claims = {
        "iss": "govmesh",
        "aud": "executor",
        "iat": now,
        "nbf": now,
        "exp": now + 30,
        "act": {"action": ACTION, "resource": RESOURCE},
        "req": request_digest(ACTION, RESOURCE, CONTEXT),
    }
    wrong_typ = _signed(key, {"alg": "EdDSA", "typ": "govmesh-mandate+jwt", "kid": key.kid}, claims)
    with pytest.raises(GrantError, match="typ"):
        _check(wrong_typ, key)
    extra = _signed(key, {"alg": "EdDSA", "typ": GRANT_TYP, "kid": key.kid, "cty": "x"}, claims)
    with pytest.raises(GrantError, match="typ, alg and kid only"):
        _check(extra, key)
    long_lived = _signed(
        key, {"alg": "EdDSA", "typ": GRANT_TYP, "kid": key.kid}, {**claims, "exp": now + 3600}
    )
    with pytest.raises(GrantError, match="60 s"):
        _check(long_lived, key)
    with pytest.raises(GrantError, match="not a compact JWS"):
        _check("garbage", key)


@pytest.mark.parametrize(
    "spelling", ["account:acme/frozen/", "account:acme/frozen%00", "account:acme/Frozen"]
)
def test_a_grant_never_covers_a_name_another_spelling_could_stand_for(spelling: str) -> None:
    # The engine grants only names in the grammar; a signed grant for any other
    # spelling (an engine that predates it, a stolen key) is refused all the same,
    # so the executor never acts on `frozen/` believing it is not `frozen`.
    key = generate_ed25519()
    now = int(time.time())
    claims = {
        "iss": "govmesh",
        "aud": "executor",
        "iat": now,
        "nbf": now,
        "exp": now + 30,
        "act": {"action": ACTION, "resource": spelling},
        "req": request_digest(ACTION, spelling, CONTEXT),
    }
    grant = _signed(key, {"alg": "EdDSA", "typ": GRANT_TYP, "kid": key.kid}, claims)
    with pytest.raises(GrantError, match="resource"):
        _check(grant, key, resource=spelling)


def test_a_jwks_without_usable_keys_is_refused() -> None:
    with pytest.raises(GrantError, match="no Ed25519"):
        load_engine_keys({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "x"}]})
    private = generate_ed25519().as_dict(private=True)
    with pytest.raises(GrantError):
        load_engine_keys({"keys": [private]})


def test_the_signer_caps_the_lifetime() -> None:
    with pytest.raises(ValueError, match=r"1\.\.60"):
        Ed25519GrantSigner(
            key=generate_ed25519(), issuer="i", audience="a", ttl_s=61, clock=time.time
        )


def _signed_raw(key: OKPKey, header: bytes, payload: bytes) -> str:
    """A grant signed over exactly these bytes, however they are spelled."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from govmesh.artifacts.canonical import b64url

    signing_input = f"{b64url(header)}.{b64url(payload)}"
    private = key.private_key
    assert isinstance(private, Ed25519PrivateKey)
    return f"{signing_input}.{b64url(private.sign(signing_input.encode('ascii')))}"


@pytest.mark.parametrize(
    ("payload_for", "message"),
    [
        # Two `act` members: a lenient reader keeps the last, another the first.
        (lambda act, other: f'{{"act": {other}, "act": {act}, "rest": 0}}', "duplicate"),
        # A number no I-JSON reader holds exactly.
        (lambda act, other: f'{{"act": {act}, "n": 9007199254740993}}', "2\\^53"),
        (lambda act, other: f'{{"act": {act}, "n": 1e400}}', "finite|infinity|range"),
    ],
)
def test_a_signed_grant_the_strict_reader_refuses_is_refused(
    payload_for: Any, message: str
) -> None:
    # The executor reads a grant as every govmesh service reads a token: a
    # grant two readers could read two ways is refused even with a good signature.
    key = generate_ed25519()
    act = f'{{"action": "{ACTION}", "resource": "{RESOURCE}"}}'
    other = f'{{"action": "{ACTION}", "resource": "account:acme/frozen"}}'
    header = f'{{"alg": "EdDSA", "typ": "{GRANT_TYP}", "kid": "{key.kid}"}}'.encode()
    grant = _signed_raw(key, header, payload_for(act, other).encode())
    with pytest.raises(GrantError, match=f"not a compact JWS.*({message})"):
        _check(grant, key)


async def test_a_grant_with_a_non_canonical_segment_is_refused() -> None:
    from govmesh.artifacts.canonical import b64url_decode

    grant, key = await _grant()
    header, payload, signature = grant.split(".")
    # Another spelling of the same signature bytes: the last character's unused bits set.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    respelled = [
        signature[:-1] + c
        for c in alphabet
        if c != signature[-1] and b64url_decode(signature[:-1] + c) == b64url_decode(signature)
    ]
    assert respelled, "an Ed25519 signature's base64url has spare bits in its last character"
    with pytest.raises(GrantError, match="canonical"):
        _check(f"{header}.{payload}.{respelled[0]}", key)
