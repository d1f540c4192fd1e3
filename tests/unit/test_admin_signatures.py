"""Policy-admin statements are read by the one strict JWS reader, whatever their signature."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from govmesh.artifacts.canonical import b64url
from govmesh.artifacts.keys import generate_ed25519
from govmesh.artifacts.signing import (
    ACTIVATION_TYP,
    Activation,
    AdminKeys,
    SignatureRejected,
    key_id,
    sign_activation,
    verify_activation,
)


def _signed_raw(key: object, header: str, payload: str) -> str:
    signing_input = f"{b64url(header.encode())}.{b64url(payload.encode())}"
    private = key.private_key  # type: ignore[attr-defined]
    assert isinstance(private, Ed25519PrivateKey)
    return f"{signing_input}.{b64url(private.sign(signing_input.encode('ascii')))}"


def test_a_well_formed_activation_verifies() -> None:
    key = generate_ed25519()
    keys = AdminKeys({key_id(key): key})
    statement = verify_activation(sign_activation(Activation(7, "a" * 64), key), keys)
    assert statement.activation.epoch == 7


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        # Two epochs: one reader would roll back to 1, another move on to 9.
        ('{"epoch": 9, "epoch": 1, "active": "%s", "iat": %d}', "duplicate"),
        ('{"epoch": 9007199254740993, "active": "%s", "iat": %d}', "2\\^53"),
    ],
)
def test_a_signed_activation_two_readers_could_read_two_ways_is_refused(
    payload: str, message: str
) -> None:
    import time

    key = generate_ed25519()
    keys = AdminKeys({key_id(key): key})
    header = f'{{"alg": "EdDSA", "typ": "{ACTIVATION_TYP}", "kid": "{key_id(key)}"}}'
    token = _signed_raw(key, header, payload % ("a" * 64, int(time.time())))
    with pytest.raises(SignatureRejected, match=f"not a compact JWS.*{message}"):
        verify_activation(token, keys)


def test_an_activation_signed_by_an_untrusted_key_is_refused() -> None:
    trusted, other = generate_ed25519(), generate_ed25519()
    keys = AdminKeys({key_id(trusted): trusted})
    token = sign_activation(Activation(7, "a" * 64), other)
    with pytest.raises(SignatureRejected, match="not a trusted policy admin"):
        verify_activation(token, keys)
