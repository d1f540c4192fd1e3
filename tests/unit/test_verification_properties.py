"""Properties: no malformed token is ever accepted; the glob and binding rules hold."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from govmesh.artifacts import ATTESTATION_TYP, MANDATE_TYP, PROOF_TYP
from govmesh.artifacts.jws import TokenError, parse_compact
from govmesh.verification.core import (
    VerificationInput,
    binding_satisfied,
    glob_match,
)
from tests.support.verification import DROP, World, make_world, raw_token

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
ARTIFACTS = ("mandate", "proof", "attestation")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("properties"))


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def fresh_request(world: World) -> VerificationInput:
    mandate = world.mandate(env={"cluster": "prod-eu"})
    return world.request(mandate=mandate, attestation=world.attestation())


def replace(request: VerificationInput, name: str, token: str) -> VerificationInput:
    fields = {k: getattr(request, k) for k in VerificationInput.__dataclass_fields__}
    fields[name] = token
    return VerificationInput(**fields)


def verified(world: World, loop: asyncio.AbstractEventLoop, request: VerificationInput) -> bool:
    verifier, _, _ = world.verifier()
    return loop.run_until_complete(verifier.verify(request)).verified


def test_the_unmutated_requests_do_verify(world: World, loop: asyncio.AbstractEventLoop) -> None:
    # The baseline the properties below mutate: without it they would prove nothing.
    assert verified(world, loop, fresh_request(world))


# -- structural mutations of a valid token ----------------------------------------------------

mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(min_value=0), st.sampled_from(B64 + ".=+/ \x00é")),
    st.tuples(st.just("delete"), st.integers(min_value=0), st.just("")),
    st.tuples(st.just("insert"), st.integers(min_value=0), st.sampled_from(B64 + ".=")),
    st.tuples(st.just("truncate"), st.integers(min_value=0), st.just("")),
    st.tuples(st.just("segment"), st.integers(min_value=0, max_value=2), st.binary(max_size=80)),
    st.tuples(st.just("swap"), st.integers(min_value=0, max_value=2), st.just("")),
    st.tuples(st.just("append"), st.just(0), st.sampled_from([".", ".x", "=", "\n", ".."])),
    # The last character of a segment also carries unused bits: a different
    # spelling of the same bytes must not pass for the same token.
    st.tuples(st.just("tail"), st.integers(min_value=0, max_value=2), st.sampled_from(B64)),
)


def mutate(token: str, mutation: tuple[str, int, Any]) -> str:
    kind, position = mutation[0], mutation[1]
    value: str = mutation[2] if isinstance(mutation[2], str) else ""
    data: bytes = mutation[2] if isinstance(mutation[2], bytes) else b""
    if kind == "segment":
        parts = token.split(".")
        parts[position] = base64.urlsafe_b64encode(data).rstrip(b"=").decode()
        return ".".join(parts)
    if kind == "swap":
        parts = token.split(".")
        other = (position + 1) % 3
        parts[position], parts[other] = parts[other], parts[position]
        return ".".join(parts)
    if kind == "append":
        return token + value
    if kind == "tail":
        parts = token.split(".")
        parts[position] = parts[position][:-1] + value
        return ".".join(parts)
    i = position % max(len(token), 1)
    if kind == "flip":
        return token[:i] + value + token[i + 1 :]
    if kind == "delete":
        return token[:i] + token[i + 1 :]
    if kind == "insert":
        return token[:i] + value + token[i:]
    return token[:i]  # truncate


@SETTINGS
@given(artifact=st.sampled_from(ARTIFACTS), mutation=mutations)
def test_a_mutated_token_is_never_accepted(
    world: World, loop: asyncio.AbstractEventLoop, artifact: str, mutation: tuple[str, int, Any]
) -> None:
    request = fresh_request(world)
    token = getattr(request, artifact)
    mutated = mutate(token, mutation)
    assume(mutated != token)

    assert not verified(world, loop, replace(request, artifact, mutated))


# -- well-signed tokens with malformed claims ---------------------------------------------------

not_a_string = st.one_of(st.none(), st.booleans(), st.integers(), st.lists(st.text(), max_size=2))
not_a_number = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.lists(st.integers()))
not_an_object = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5))
bad_scope = st.one_of(
    not_an_object,
    st.lists(not_an_object, min_size=1, max_size=2),
    st.just([{"action": "*"}]),
    st.just([{"action": "*", "resource": "*", "when": "always"}]),
    st.just([{"action": 1, "resource": "*"}]),
    st.just([{"action": "", "resource": "*"}]),
)
MANDATE_CLAIMS: dict[str, st.SearchStrategy[Any]] = {
    "iss": not_a_string,
    "sub": st.one_of(not_a_string, st.just("")),
    "aud": st.one_of(st.none(), st.integers(), st.text(max_size=5), st.just(["x"])),
    "iat": not_a_number,
    "nbf": not_a_number,
    "exp": not_a_number,
    "jti": not_a_string,
    "scope": bad_scope,
    "env": st.one_of(not_an_object, st.lists(st.integers(), max_size=2)),
    "cnf": st.one_of(not_an_object, st.just({}), st.just({"jkt": 5}), st.just({"jkt": ""})),
    "att": st.one_of(st.booleans(), st.integers(), st.text(max_size=5), st.lists(st.integers())),
}
ATTESTATION_CLAIMS: dict[str, st.SearchStrategy[Any]] = {
    "iss": not_a_string,
    "sub": not_a_string,
    "iat": not_a_number,
    "exp": not_a_number,
    "nbf": not_a_number,
    "cnf": st.one_of(not_an_object, st.just({})),
    "env": not_an_object,
    "measurements": st.one_of(not_an_object, st.lists(st.integers(), min_size=1, max_size=2)),
}
PROOF_CLAIMS: dict[str, st.SearchStrategy[Any]] = {
    "jti": st.one_of(not_a_string, st.just(""), st.just("x" * 257)),
    "iat": not_a_number,
    "req": not_a_string,
    "ath": not_a_string,
}


def claim_damage(claims: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[tuple[str, Any]]:
    return st.sampled_from(sorted(claims)).flatmap(
        lambda name: st.tuples(st.just(name), st.one_of(st.just(DROP), claims[name]))
    )


@SETTINGS
@given(damage=claim_damage(MANDATE_CLAIMS))
def test_a_mandate_with_a_malformed_claim_is_never_accepted(
    world: World, loop: asyncio.AbstractEventLoop, damage: tuple[str, Any]
) -> None:
    name, value = damage
    assume(not (name == "att" and value is DROP))  # att is optional
    mandate = world.mandate(**{name: value})
    request = world.request(mandate=mandate)

    assert not verified(world, loop, request)


@SETTINGS
@given(damage=claim_damage(ATTESTATION_CLAIMS))
def test_an_attestation_with_a_malformed_claim_is_never_accepted(
    world: World, loop: asyncio.AbstractEventLoop, damage: tuple[str, Any]
) -> None:
    name, value = damage
    assume(not (name == "nbf" and value is DROP))  # nbf is optional on an attestation
    mandate = world.mandate(env={"cluster": "prod-eu"})
    request = world.request(mandate=mandate, attestation=world.attestation(**{name: value}))

    assert not verified(world, loop, request)


@SETTINGS
@given(damage=claim_damage(PROOF_CLAIMS))
def test_a_proof_with_a_malformed_claim_is_never_accepted(
    world: World, loop: asyncio.AbstractEventLoop, damage: tuple[str, Any]
) -> None:
    name, value = damage
    mandate = world.mandate()
    request = world.request(mandate=mandate, proof=world.signed_proof(mandate, **{name: value}))

    assert not verified(world, loop, request)


# -- forged headers ---------------------------------------------------------------------------

headers = st.fixed_dictionaries(
    {
        "alg": st.one_of(
            st.sampled_from(["none", "None", "HS256", "HS512", "EdDSA", "ES256", "RS256", "PS256"]),
            st.text(max_size=6),
            st.integers(),
        ),
        "typ": st.one_of(st.sampled_from([MANDATE_TYP, PROOF_TYP, ATTESTATION_TYP]), st.text()),
    },
    optional={
        "kid": st.one_of(st.sampled_from(["issuer-ed", "issuer-es", "issuer-rs"]), st.integers()),
        "crit": st.lists(st.text(max_size=4), max_size=2),
        "jwk": st.dictionaries(st.sampled_from(["kty", "crv", "x", "k"]), st.text(max_size=8)),
    },
)


@SETTINGS
@given(header=headers, signature=st.binary(max_size=300), artifact=st.sampled_from(ARTIFACTS))
def test_a_token_nobody_signed_is_never_accepted(
    world: World,
    loop: asyncio.AbstractEventLoop,
    header: dict[str, Any],
    signature: bytes,
    artifact: str,
) -> None:
    request = fresh_request(world)
    payload = json.loads(base64.urlsafe_b64decode(getattr(request, artifact).split(".")[1] + "=="))
    forged = raw_token(header, payload, signature)

    assert not verified(world, loop, replace(request, artifact, forged))


@SETTINGS
@given(text=st.text(max_size=200))
def test_arbitrary_text_is_never_accepted_and_never_crashes(
    world: World, loop: asyncio.AbstractEventLoop, text: str
) -> None:
    request = fresh_request(world)
    for artifact in ARTIFACTS:
        assert not verified(world, loop, replace(request, artifact, text))


# -- the strict parser --------------------------------------------------------------------------


def segment(obj: Any) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (segment({"alg": "EdDSA"}) + "." + segment({"a": 1}), "2 segments"),
        ("." + segment({"a": 1}) + ".sig", "empty header"),
        (segment(b'{"alg":"EdDSA","alg":"none"}') + "." + segment({}) + ".AA", "duplicate"),
        (segment({"alg": "EdDSA"}) + "." + segment(b'{"exp": NaN}') + ".AA", "not JSON"),
        (segment({"alg": "EdDSA"}) + "." + segment(b'{"exp": 1e999}') + ".AA", "out of range"),
        (segment({"alg": "EdDSA"}) + "." + segment(b"[1]") + ".AA", "not a JSON object"),
        (segment({"alg": "EdDSA"}) + "." + segment(b"[" * 5000 + b"]" * 5000) + ".AA", "nested"),
        (
            segment({"alg": "EdDSA"})
            + "."
            + segment(b'{"a":' + b"[" * 32 + b"]" * 32 + b"}")
            + ".AA",
            "nested more than 32 deep",
        ),
        (segment({"alg": "EdDSA"}) + "." + segment(b"\xff") + ".AA", "payload"),
        (segment({"alg": "EdDSA"}) + "=." + segment({}) + ".AA", "base64url"),
        (segment({"alg": "EdDSA"}) + "." + segment({}) + ".AB", "canonical"),
        ("x" * 20_000, "longer than"),
        ("é.é.é", "ASCII"),
    ],
)
def test_the_parser_refuses(token: str, why: str) -> None:
    with pytest.raises(TokenError, match=why):
        parse_compact(token)


# -- globs and bindings -------------------------------------------------------------------------


def reference_glob(pattern: str, text: str) -> bool:
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, text, flags=re.DOTALL) is not None


@settings(max_examples=500)
@given(pattern=st.text(alphabet="ab*./", max_size=8), text=st.text(alphabet="ab./", max_size=10))
def test_glob_matches_like_the_regular_expression_it_stands_for(pattern: str, text: str) -> None:
    assert glob_match(pattern, text) == reference_glob(pattern, text)


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        ("account:acme/*", "account:acme/treasury", True),
        ("account:acme/*", "account:acme", False),
        ("account:acme/*", "account:acme-evil/x", False),
        ("payments.transfer", "payments.transfer", True),
        ("payments.transfer", "payments.transferx", False),
        ("*", "", True),
        ("a*a", "a", False),
        ("[a]", "a", False),  # only * is special
        ("?", "a", False),
    ],
)
def test_glob_examples(pattern: str, text: str, matches: bool) -> None:
    assert glob_match(pattern, text) is matches


@pytest.mark.parametrize(
    ("want", "observed", "holds"),
    [
        ("prod", "prod", True),
        ("prod", "dev", False),
        (["a", "b"], "b", True),
        (["a", "b"], "c", False),
        ([], "a", False),
        (2, 2.0, True),
        (2, "2", False),
        (True, 1, False),
        ({"k": [1]}, {"k": [1]}, True),
        (None, None, True),
        (2**60, 2**60, False),  # beyond JSON's exact integers: never equal, fail closed
    ],
)
def test_binding_examples(want: Any, observed: Any, holds: bool) -> None:
    assert binding_satisfied(want, observed) is holds
