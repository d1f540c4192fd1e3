"""The engine and verification read a token with one reader, and so agree about it.

Each hostile mandate here is signed by a trusted issuer over exactly the
text it carries, so a reader that accepted its spelling would find the
signature good: what refuses it is the reading alone. Verification must
refuse every one of them, and the engine must not read claims from any of
them: policy is never asked about a token verification would not read.
A well-formed token built the same way is the control: both read it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf import json_format
from joserfc.jws import JWSRegistry

from govmesh.artifacts import ATTESTATION_TYP, MANDATE_TYP
from govmesh.artifacts.canonical import b64url
from govmesh.artifacts.jws import TokenError, parse_compact
from govmesh.engine.claims import claimed_inputs
from govmesh.v1 import common_pb2, engine_pb2, verification_pb2
from govmesh.verification.core import VerificationInput
from govmesh.verification.servicer import VerificationServicer
from tests.support.verification import World, make_world, reason, verify_request
from tests.unit.engine_fakes import FakeVerification, build_engine


@dataclass(frozen=True)
class Reader:
    """A world of trusted parties, and which artifact of it is read: mandate or attestation."""

    w: World
    kind: str


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class Context:
    def time_remaining(self) -> float:
        return 5.0


def _signed(world: Reader, header_text: str, payload_text: str) -> str:
    """An artifact whose segments are spelled exactly so, signed by its trusted party."""
    signing_input = f"{header_text}.{payload_text}"
    key = world.w.attestor if world.kind == "attestation" else world.w.issuer
    raw = JWSRegistry.algorithms["EdDSA"].sign(signing_input.encode("ascii"), key)
    return f"{signing_input}.{b64url(raw)}"


def _header(world: Reader) -> bytes:
    if world.kind == "attestation":
        header = {"alg": "EdDSA", "typ": ATTESTATION_TYP, "kid": world.w.attestor.kid}
    else:
        header = {"alg": "EdDSA", "typ": MANDATE_TYP, "kid": world.w.issuer.kid}
    return json.dumps(header).encode()


def _claims_text(world: Reader, **extra: str) -> str:
    """The artifact's claims as JSON text, with `extra` members spliced in verbatim."""
    claims = (
        world.w.attestation_claims() if world.kind == "attestation" else world.w.mandate_claims()
    )
    text = json.dumps(claims)
    members = "".join(f', "{name}": {value}' for name, value in extra.items())
    return text[:-1] + members + "}"


def _with_trailing_bits(segment: str) -> str:
    """`segment` with unused low bits of its last character set: same bytes, other text."""
    assert len(segment) % 4 in (2, 3)
    unused = 4 if len(segment) % 4 == 2 else 2
    last = _ALPHABET.index(segment[-1])
    return segment[:-1] + _ALPHABET[last | (1 << unused) - 1]


def _with_standard_alphabet(world: Reader) -> str:
    """A payload segment spelled with '+' and '/' instead of '-' and '_'."""
    for n in range(256):
        segment = b64url(_claims_text(world, pad=json.dumps("?" * n)).encode())
        if "-" in segment or "_" in segment:
            return segment.replace("-", "+").replace("_", "/")
    raise AssertionError("no claims text encodes to '-' or '_'")


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def _hostile(world: Reader) -> dict[str, str]:
    header = b64url(_header(world))
    good = _claims_text(world)
    payload = b64url(good.encode())
    # Claims whose duplicate names a lenient reader would read as the last one.
    duplicate = _claims_text(world, sub=json.dumps("spiffe://test/agent/other"))
    odd_payload = b64url((good + " ").encode())  # length 4n+2 or 4n+3 after encoding
    while len(odd_payload) % 4 not in (2, 3):
        good += " "
        odd_payload = b64url(good.encode())
    return {
        "duplicate claim": _signed(world, header, b64url(duplicate.encode())),
        "duplicate header member": _signed(
            world, b64url(_header(world)[:-1] + b', "alg": "EdDSA"}'), payload
        ),
        "padded payload": _signed(world, header, payload + "=" * (-len(payload) % 4 or 4)),
        "'+/' alphabet": _signed(world, header, _with_standard_alphabet(world)),
        "payload trailing bits": _signed(world, header, _with_trailing_bits(odd_payload)),
        "signature trailing bits": _with_trailing_bits(_signed(world, header, payload)),
        "integer beyond 2^53": _signed(
            world, header, b64url(_claims_text(world, n=str(2**53 + 1)).encode())
        ),
        "huge integer": _signed(world, header, b64url(_claims_text(world, n="9" * 5000).encode())),
        "float beyond range": _signed(
            world, header, b64url(_claims_text(world, n="1e400").encode())
        ),
        "NaN": _signed(world, header, b64url(_claims_text(world, n="NaN").encode())),
        "nested 33 deep": _signed(world, header, b64url(_claims_text(world, n=_deep(32)).encode())),
        "nested 5000 deep": _signed(
            world, header, b64url(_claims_text(world, n=_deep(5000)).encode())
        ),
        "not UTF-8": _signed(
            world, header, b64url(_claims_text(world, n='"x"').encode().replace(b"x", b"\xff"))
        ),
        "byte order mark": _signed(world, header, b64url(b"\xef\xbb\xbf" + good.encode())),
        "top-level array": _signed(world, header, b64url(b"[" + good.encode() + b"]")),
        "top-level string": _signed(world, header, b64url(json.dumps(good).encode())),
    }


HOSTILE = [
    "duplicate claim",
    "duplicate header member",
    "padded payload",
    "'+/' alphabet",
    "payload trailing bits",
    "signature trailing bits",
    "integer beyond 2^53",
    "huge integer",
    "float beyond range",
    "NaN",
    "nested 33 deep",
    "nested 5000 deep",
    "not UTF-8",
    "byte order mark",
    "top-level array",
    "top-level string",
]


def _authorize_request(request: VerificationInput) -> engine_pb2.AuthorizeRequest:
    message = engine_pb2.AuthorizeRequest(
        action=request.action,
        resource=request.resource,
        mandate=request.mandate,
        proof=request.proof,
        attestation=request.attestation,
    )
    json_format.ParseDict(dict(request.context or {}), message.context)
    return message


def _request(world: Reader, token: str) -> VerificationInput:
    if world.kind == "attestation":
        return world.w.request(attestation=token)
    return world.w.request(mandate=token)


async def _both_readers(
    world: Reader, token: str
) -> tuple[verification_pb2.VerifyResponse, engine_pb2.AuthorizeResponse, int]:
    """Verification's answer, the engine's decision given it, and how often policy was asked."""
    request = _request(world, token)
    verifier, _, _ = world.w.verifier()
    servicer = VerificationServicer(verifier=verifier)
    answer = await servicer.Verify(verify_request(request), Context())  # type: ignore[arg-type]
    h = build_engine(verification=FakeVerification(answer=lambda _: answer))
    decision = await h.engine.authorize(_authorize_request(request))
    return answer, decision, len(h.policy.calls)


@pytest.fixture(params=["mandate", "attestation"])
def world(tmp_path: Path, request: pytest.FixtureRequest) -> Reader:
    return Reader(make_world(tmp_path / "trust"), request.param)


async def test_both_read_a_well_formed_token(world: Reader) -> None:
    header = b64url(_header(world))
    token = _signed(world, header, b64url(_claims_text(world).encode()))

    answer, decision, asked = await _both_readers(world, token)

    assert answer.verified, answer.message
    assert claimed_inputs(_authorize_request(_request(world, token))) is not None
    assert asked == 1
    assert decision.decision == common_pb2.ALLOW, decision.message


@pytest.mark.parametrize("case", HOSTILE)
async def test_neither_reads_a_hostile_token(world: Reader, case: str) -> None:
    token = _hostile(world)[case]

    with pytest.raises(TokenError):
        parse_compact(token)
    answer, decision, asked = await _both_readers(world, token)

    assert not answer.verified
    assert reason(answer) == "INVALID_VERIFICATION"
    assert f"{world.kind} malformed" in answer.message, answer.message
    assert claimed_inputs(_authorize_request(_request(world, token))) is None
    assert asked == 0
    assert decision.decision == common_pb2.DENY
    assert common_pb2.DenyReason.Name(decision.reason) == "INVALID_VERIFICATION"
