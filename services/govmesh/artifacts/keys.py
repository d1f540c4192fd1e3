"""Keys on disk: private JWK files, public JWKS documents, RFC 7638 thumbprints."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from joserfc.jwk import OKPKey, import_key

from govmesh.artifacts.canonical import b64url, b64url_decode, canonical_json, sha256_b64url
from govmesh.runtime.errors import ConfigurationError

#: Members of a JWK that carry private key material.
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class KeyFileError(ConfigurationError):
    """A key file that is missing, unreadable or not a usable key."""


def generate_ed25519(kid: str | None = None) -> OKPKey:
    """A fresh Ed25519 signing key, tagged alg EdDSA; kid defaults to its thumbprint."""
    key = OKPKey.generate_key("Ed25519", parameters={"alg": "EdDSA", "use": "sig"})
    params = key.as_dict(private=True)
    params["kid"] = kid or jwk_thumbprint(params)
    return OKPKey.import_key(params)


def write_private_jwk(path: Path, key: OKPKey) -> None:
    """Write a private JWK readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(key.as_dict(private=True), handle, indent=2)
        handle.write("\n")


def load_private_jwk(path: Path) -> OKPKey:
    """Load an Ed25519 private JWK written by `write_private_jwk`."""
    try:
        params = json.loads(path.read_text())
    except OSError as exc:
        raise KeyFileError(f"cannot read key {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise KeyFileError(f"key {path} is not JSON") from exc
    if not isinstance(params, dict) or params.get("kty") != "OKP" or params.get("crv") != "Ed25519":
        raise KeyFileError(f"key {path} is not an Ed25519 JWK")
    if "d" not in params:
        raise KeyFileError(f"key {path} holds no private key")
    try:
        key = import_key(params, "OKP")
    except Exception as exc:  # joserfc raises several types for bad material
        raise KeyFileError(f"key {path} is not a valid Ed25519 key: {exc}") from exc
    assert isinstance(key, OKPKey)
    return key


def public_jwk(params: Mapping[str, Any]) -> dict[str, Any]:
    """The public members of a JWK."""
    return {k: v for k, v in params.items() if k not in PRIVATE_MEMBERS}


def public_jwks(keys: Iterable[OKPKey]) -> dict[str, Any]:
    """A JWKS document of the public halves of `keys`."""
    return {"keys": [public_jwk(key.as_dict(private=False)) for key in keys]}


#: RFC 7638 section 3.2: the required members that a thumbprint covers, per key type.
_THUMBPRINT_MEMBERS = {
    "OKP": ("crv", "kty", "x"),
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
}


def jwk_thumbprint(params: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of a JWK, base64url.

    Only the required members of the key type are hashed, in lexicographic
    order, so optional members (kid, alg, use) never change the thumbprint.
    Raises ValueError for a key type govmesh does not accept or a missing member.
    """
    members = _THUMBPRINT_MEMBERS.get(str(params.get("kty")))
    if members is None:
        raise ValueError(f"unsupported key type {params.get('kty')!r}")
    required = {}
    for name in members:
        value = params.get(name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"JWK member {name!r} missing")
        required[name] = value
    # RFC 7638 asks for no whitespace and sorted keys: exactly JCS for string members.

    return sha256_b64url(canonical_json(required))


def raw_public_key(key: OKPKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key."""
    return b64url_decode(str(key.as_dict(private=False)["x"]))


__all__ = [
    "KeyFileError",
    "b64url",
    "generate_ed25519",
    "jwk_thumbprint",
    "load_private_jwk",
    "public_jwk",
    "public_jwks",
    "raw_public_key",
    "write_private_jwk",
]
