"""Policy-admin signatures: on bundles, and on every change of the active state.

Two compact JWS forms, both EdDSA (Ed25519) with the admin key's kid:

- a bundle signature, typ `govmesh-policy-bundle+jwt`, claims
  {"ver": <bundle version>, "iat": ...}: this admin vouches for that content;
- an activation statement, typ `govmesh-policy-activation+jwt`, claims
  {"epoch": N, "active": <version>, "shadow": <version>?, "iat": ...}: this
  admin makes that bundle active (and that one shadow) at epoch N. Naming the
  epoch makes a statement good for one state change only: epochs are never
  reused, so a captured statement cannot be replayed to roll policies back.

Which admin keys the authority trusts comes from the trust file:

    [policy]
    admin_jwks = "policy-admin.jwks.json"     # or a list of JWKS files

An artifact format, not policy's own: the policy authority signs and checks
these statements, and the engine checks the activation statements in the
policy store itself (its epoch floor), without importing the policy service.
"""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from govmesh.artifacts.canonical import canonical_json
from govmesh.artifacts.jws import TokenError, parse_compact
from govmesh.artifacts.keys import PRIVATE_MEMBERS, jwk_thumbprint
from govmesh.runtime.errors import ConfigurationError, PermissionRefused

BUNDLE_TYP = "govmesh-policy-bundle+jwt"
ACTIVATION_TYP = "govmesh-policy-activation+jwt"
ALG = "EdDSA"

#: How old, or how far in the future, an activation statement may be when it arrives.
ACTIVATION_MAX_AGE_S = 300
ACTIVATION_MAX_FUTURE_S = 60


class SignatureRejected(PermissionRefused, ValueError):
    """A signature that does not come from a trusted policy admin, or does not fit."""


class AdminTrustError(ConfigurationError):
    """A trust file whose [policy] section cannot be used."""


def key_id(key: OKPKey) -> str:
    """The kid a signature by `key` carries: its own, else its RFC 7638 thumbprint."""
    params = key.as_dict(private=False)
    return str(params.get("kid") or jwk_thumbprint(params))


class AdminKeys:
    """The policy-admin public keys the authority trusts, by kid."""

    def __init__(self, keys: Mapping[str, OKPKey]) -> None:
        if not keys:
            raise AdminTrustError("no policy-admin keys are trusted: [policy] admin_jwks is empty")
        self._keys = dict(keys)

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    @classmethod
    def from_jwks(cls, documents: list[tuple[str, object]]) -> AdminKeys:
        """Keys from JWKS documents (each with where it came from, for messages)."""
        keys: dict[str, OKPKey] = {}
        for where, document in documents:
            members = document.get("keys") if isinstance(document, dict) else None
            if not isinstance(members, list) or not members:
                raise AdminTrustError(f"{where} has no keys")
            for params in members:
                if not isinstance(params, dict) or PRIVATE_MEMBERS & set(params):
                    raise AdminTrustError(f"{where} holds something other than public keys")
                if params.get("kty") != "OKP" or params.get("crv") != "Ed25519":
                    raise AdminTrustError(f"{where}: policy-admin keys must be Ed25519")
                if params.get("alg", ALG) != ALG:
                    raise AdminTrustError(f"{where}: a key is pinned to alg {params['alg']!r}")
                try:
                    key = OKPKey.import_key(params)
                except (JoseError, ValueError, TypeError) as exc:
                    raise AdminTrustError(f"{where}: unusable key: {exc}") from exc
                keys[key_id(key)] = key
        return cls(keys)

    def verify(self, token: str, typ: str) -> tuple[dict[str, Any], str]:
        """The claims of `token` and the kid that signed it.

        1. A compact JWS, read by the one strict reader (govmesh.artifacts.jws:
           canonical base64url, JSON objects without duplicate members);
           alg EdDSA; typ as expected; no crit.
        2. kid names a trusted admin key.
        3. The Ed25519 signature verifies under that key.
        """
        # 1. Token and header.
        try:
            parsed = parse_compact(token)
        except TokenError as exc:
            raise SignatureRejected(f"signature is not a compact JWS: {exc}") from None
        header = parsed.header
        if header.get("alg") != ALG:
            raise SignatureRejected(f"signature alg {header.get('alg')!r} is not {ALG}")
        if header.get("typ") != typ:
            raise SignatureRejected(f"signature typ {header.get('typ')!r} is not {typ}")
        if "crit" in header:
            raise SignatureRejected("signature carries critical header parameters")
        # 2. Key.
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise SignatureRejected(f"signed by a key that is not a trusted policy admin: {kid!r}")
        # 3. Signature.
        public = key.public_key
        try:
            if not isinstance(public, Ed25519PublicKey):
                raise InvalidSignature
            public.verify(parsed.signature, parsed.signing_input)
        except InvalidSignature:
            raise SignatureRejected(f"bad signature by policy admin {kid}") from None
        assert isinstance(kid, str)
        return dict(parsed.payload), kid


def load_admin_keys(trust_file: Path) -> AdminKeys:
    """The admin keys named by the `[policy] admin_jwks` of a trust file."""
    try:
        doc = tomllib.loads(trust_file.read_text())
    except OSError as exc:
        raise AdminTrustError(f"cannot read trust file {trust_file}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise AdminTrustError(f"trust file {trust_file} is not valid TOML: {exc}") from exc
    section = doc.get("policy")
    names = section.get("admin_jwks") if isinstance(section, dict) else None
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise AdminTrustError(
            f"{trust_file} names no policy-admin keys: add\n"
            '  [policy]\n  admin_jwks = "policy-admin.jwks.json"'
        )
    documents: list[tuple[str, object]] = []
    for name in names:
        path = (trust_file.resolve().parent / name).resolve()
        try:
            documents.append((str(path), json.loads(path.read_text())))
        except OSError as exc:
            raise AdminTrustError(f"cannot read policy-admin JWKS {path}: {exc.strerror}") from exc
        except ValueError as exc:
            raise AdminTrustError(f"policy-admin JWKS {path} is not JSON") from exc
    return AdminKeys.from_jwks(documents)


def _sign(key: OKPKey, typ: str, claims: Mapping[str, Any]) -> str:
    header = {"alg": ALG, "typ": typ, "kid": key_id(key)}
    return jws.serialize_compact(header, canonical_json(dict(claims)), key, algorithms=[ALG])


def sign_bundle(version: str, key: OKPKey, *, clock: Callable[[], float] = time.time) -> str:
    """An admin's signature over a bundle version."""
    return _sign(key, BUNDLE_TYP, {"ver": version, "iat": int(clock())})


def verify_bundle_signature(token: str, version: str, keys: AdminKeys) -> str:
    """The kid of the admin who signed exactly `version`; raises SignatureRejected."""
    claims, kid = keys.verify(token, BUNDLE_TYP)
    if claims.get("ver") != version:
        raise SignatureRejected(
            "the signature is for another bundle: the content does not hash to the signed version"
        )
    return kid


@dataclass(frozen=True)
class Activation:
    """One change of the active state: at `epoch`, `active` is enforced, `shadow` observed."""

    epoch: int
    active: str
    shadow: str | None = None


@dataclass(frozen=True)
class SignedActivation:
    """An activation statement, verified, with who signed it and when."""

    activation: Activation
    token: str
    kid: str
    issued_at: int


def sign_activation(
    activation: Activation, key: OKPKey, *, clock: Callable[[], float] = time.time
) -> str:
    """An admin's statement making `activation` the state at its epoch."""
    claims: dict[str, Any] = {
        "epoch": activation.epoch,
        "active": activation.active,
        "iat": int(clock()),
    }
    if activation.shadow is not None:
        claims["shadow"] = activation.shadow
    return _sign(key, ACTIVATION_TYP, claims)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def verify_activation(token: str, keys: AdminKeys) -> SignedActivation:
    """The activation a statement makes; raises SignatureRejected.

    Freshness is the caller's to check (`issued_at`): a statement read back
    from the store is old by design.
    """
    claims, kid = keys.verify(token, ACTIVATION_TYP)
    epoch, active, shadow, iat = (
        claims.get("epoch"),
        claims.get("active"),
        claims.get("shadow"),
        claims.get("iat"),
    )
    if not _positive_int(epoch) or not isinstance(active, str) or not _positive_int(iat):
        raise SignatureRejected("activation statement needs a positive epoch, active and iat")
    if shadow is not None and not isinstance(shadow, str):
        raise SignatureRejected("activation statement has a malformed shadow")
    if shadow == active:
        raise SignatureRejected("a bundle cannot be active and shadow at once")
    assert isinstance(epoch, int) and isinstance(iat, int)
    return SignedActivation(Activation(epoch, active, shadow), token, kid, iat)
