"""The log's signing key and the verifier keys that check it and its witnesses.

The log signs with GOVMESH_KEYS_DIR/lineage.jwk.json (written by `govmesh keys
init`). Its C2SP verifier key, `<origin>+<key id>+<key>`, is what auditors,
witnesses and `check-proof` trust; `govmesh keys init` writes it next to the
public JWKS files as lineage.vkey.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from joserfc.jwk import OKPKey

from govmesh.artifacts.keys import load_private_jwk
from govmesh.lineage.notes import COSIGNATURE_V1, ED25519, NoteError, NoteSigner, VerifierKey
from govmesh.runtime.errors import ConfigurationError

#: The checkpoint origin (and log key name) unless GOVMESH_LINEAGE_ORIGIN says otherwise.
DEFAULT_ORIGIN = "govmesh.local/lineage"
#: File name of the log's private key in GOVMESH_KEYS_DIR.
KEY_FILE = "lineage.jwk.json"
#: File name of the log's verifier key beside the trust file.
VKEY_FILE = "lineage.vkey"


def signer_from_jwk(key: OKPKey, name: str) -> NoteSigner:
    """A note signer named `name` over an Ed25519 JWK."""
    private = key.private_key
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if not isinstance(private, Ed25519PrivateKey):
        raise ConfigurationError("the lineage key is not an Ed25519 private key")
    return NoteSigner(name=name, private_key=private)


def load_log_signer(keys_dir: Path, origin: str) -> NoteSigner:
    """The log's checkpoint signer from GOVMESH_KEYS_DIR."""
    try:
        return signer_from_jwk(load_private_jwk(keys_dir / KEY_FILE), origin)
    except NoteError as exc:
        raise ConfigurationError(f"lineage origin {origin!r} cannot name a key: {exc}") from None


def log_vkey(key: OKPKey, origin: str = DEFAULT_ORIGIN) -> str:
    """The C2SP verifier key of the log key `key` under `origin`."""
    return signer_from_jwk(key, origin).verifier.encode()


def parse_vkeys(spec: str, *, sig_type: int | None = None) -> list[VerifierKey]:
    """Verifier keys from text: vkeys, or paths of files holding vkeys, separated by
    commas, whitespace or newlines; `#` starts a comment in a file."""
    keys: list[VerifierKey] = []
    for item in _items(spec):
        if "+" in item and not os.path.exists(item):
            keys.append(_parse_one(item, sig_type))
            continue
        path = Path(item).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read verifier key file {path}: {exc.strerror}"
            ) from None
        lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        found = [_parse_one(line, sig_type) for line in lines if line]
        if not found:
            raise ConfigurationError(f"{path} holds no verifier key")
        keys.extend(found)
    return keys


def _items(spec: str) -> Iterable[str]:
    return [part for part in spec.replace(",", " ").split() if part]


def _parse_one(text: str, sig_type: int | None) -> VerifierKey:
    try:
        key = VerifierKey.parse(text)
    except NoteError as exc:
        raise ConfigurationError(f"not a verifier key: {text!r}: {exc}") from None
    if sig_type is not None and key.sig_type != sig_type:
        kind = {ED25519: "a log (Ed25519) key", COSIGNATURE_V1: "a witness (cosignature) key"}
        raise ConfigurationError(f"{key.name}: expected {kind.get(sig_type, 'another key type')}")
    return key
