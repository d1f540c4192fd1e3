"""The client helpers a caller uses to produce valid artifacts."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import ECKey, OKPKey, RSAKey

from govmesh.artifacts import PROOF_TYP
from govmesh.artifacts.canonical import request_digest, sha256_b64url
from govmesh.artifacts.keys import jwk_thumbprint
from govmesh.cli.devsetup import DEV_ISSUER, write_dev_setup
from govmesh.cli.main import main as govmesh
from govmesh.client import Initiator, mandate_hash, thumbprint
from govmesh.client.artifacts import signing_alg
from tests.support.verification import World, decode_payload, make_world

# RFC 7638 section 3.1: the example RSA key and its SHA-256 thumbprint.
RFC7638_KEY: dict[str, Any] = {
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_"
    "BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_"
    "FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4"
    "vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_thumbprints_follow_rfc_7638() -> None:
    assert jwk_thumbprint(RFC7638_KEY) == RFC7638_THUMBPRINT
    key = RSAKey.import_key(RFC7638_KEY)
    assert thumbprint(key) == RFC7638_THUMBPRINT


def test_the_request_digest_is_jcs_sha256_base64url() -> None:
    # JCS orders keys and prints 250.0 as 250: the digest does not depend on how
    # the caller spelled the same JSON.
    spelled_one_way = request_digest("a.b", "r:1", {"y": 1, "amount": 250.0})
    spelled_another = request_digest("a.b", "r:1", {"amount": 250, "y": 1})
    canonical = b'{"action":"a.b","context":{"amount":250,"y":1},"resource":"r:1"}'

    assert spelled_one_way == spelled_another == sha256_b64url(canonical)


def test_an_initiator_refuses_a_key_verification_would_refuse() -> None:
    small_exponent = RSAKey.import_key(rsa.generate_private_key(3, 2048))
    with pytest.raises(ValueError, match="exponent is not 65537"):
        Initiator(small_exponent)


@pytest.mark.parametrize(
    ("key", "alg"),
    [
        (OKPKey.generate_key("Ed25519"), "EdDSA"),
        (ECKey.generate_key("P-256"), "ES256"),
        (RSAKey.generate_key(2048), "RS256"),
    ],
)
async def test_a_proof_from_any_accepted_key_verifies(
    tmp_path: Path, key: OKPKey | ECKey | RSAKey, alg: str
) -> None:
    world = make_world(tmp_path)
    initiator = Initiator(key, clock=world.clock)
    mandate = world.mandate(cnf={"jkt": initiator.thumbprint})
    proof = initiator.proof(mandate, "payments.transfer", "account:acme/treasury", {"amount": 250})
    verifier, _, _ = world.verifier()

    result = await verifier.verify(
        world.request(mandate=mandate, proof=proof, context={"amount": 250})
    )

    assert signing_alg(key) == alg
    assert result.verified, [(o.check.value, o.detail) for o in result.failed]
    claims = decode_payload(proof)
    assert claims["ath"] == mandate_hash(mandate)
    assert claims["req"] == request_digest(
        "payments.transfer", "account:acme/treasury", {"amount": 250}
    )
    assert "d" not in initiator.public_jwk


def test_keys_govmesh_would_refuse_are_refused_up_front() -> None:
    with pytest.raises(ValueError, match="does not accept"):
        Initiator(ECKey.generate_key("P-384"))
    with pytest.raises(ValueError, match="declares alg"):
        Initiator(OKPKey.generate_key("Ed25519", parameters={"alg": "ES256"}))


def test_proofs_are_fresh_every_time(tmp_path: Path) -> None:
    world: World = make_world(tmp_path)
    mandate = world.mandate()
    first, second = (world.agent.proof(mandate, "a", "r") for _ in range(2))

    assert decode_payload(first)["jti"] != decode_payload(second)["jti"]
    assert first.split(".")[0] == second.split(".")[0]  # same header: typ and jwk
    header = decode_payload("x." + first.split(".")[0] + ".x")
    assert header["typ"] == PROOF_TYP
    assert header["jwk"] == world.agent.public_jwk


def test_dev_cli_mandate_carries_scope_env_and_attribution(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = write_dev_setup(tmp_path / "dev")

    code = govmesh(
        [
            "mandate",
            "issue",
            "--dev-dir",
            str(setup.root),
            "--scope",
            "payments.transfer=account:acme/*",
            "--scope",
            "payments.transfer=account:globex/*",
            "--env",
            "region=eu",
            "--env",
            "region=us",
            "--env",
            "cluster=prod",
            "--att",
            "session=s-9",
            "--ttl",
            "60",
        ]
    )

    claims = decode_payload(capsys.readouterr().out.strip())
    assert code == 0
    assert claims["iss"] == DEV_ISSUER
    assert claims["scope"] == [
        {"action": "payments.transfer", "resource": "account:acme/*"},
        {"action": "payments.transfer", "resource": "account:globex/*"},
    ]
    assert claims["env"] == {"region": ["eu", "us"], "cluster": "prod"}
    assert claims["att"] == {"session": "s-9"}
    assert claims["exp"] - claims["iat"] == 60
    assert claims["cnf"]["jkt"] == Initiator(setup.dev_key("agent")).thumbprint


def test_dev_cli_attestation_refuses_a_key_observed_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = write_dev_setup(tmp_path / "dev")
    dev = ["--dev-dir", str(setup.root)]

    assert govmesh(["attest", *dev, "--env", "a=1", "--env", "a=2"]) == 2
    assert "given twice" in capsys.readouterr().err
    assert (
        govmesh(["attest", *dev, "--measurement", "sha256:" + hashlib.sha256(b"x").hexdigest()])
        == 0
    )
    claims = decode_payload(capsys.readouterr().out.strip())
    assert claims["measurements"] == ["sha256:" + hashlib.sha256(b"x").hexdigest()]
