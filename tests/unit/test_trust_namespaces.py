"""What each trusted party may vouch for: issuers' subjects, attestors' environment values.

A subject names one agent whoever signed its mandate, and an environment value
means one thing whoever attested it; so with several issuers (attestors) each
declares its own, no two overlap, and verification refuses anything else.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from joserfc.jwk import OKPKey

from govmesh.artifacts.keys import generate_ed25519
from govmesh.artifacts.trust import TrustedParty, TrustFileError, load_trust, subject_in
from govmesh.v1 import common_pb2
from govmesh.verification.core import VerificationResult
from tests.support.verification import (
    ATTESTOR,
    GOOD_MEASUREMENT,
    ISSUER,
    SINGLE_KEY_ISSUER,
    SUBJECT,
    World,
    jwks,
    make_world,
    write_json,
)

DEV_ATTESTOR = "https://attestor-dev.test"
PROD_ENV = {"cluster": "prod-eu", "region": "eu-west-1"}


@pytest.fixture
def world(tmp_path: Path) -> World:
    world = make_world(tmp_path / "trust")
    write_json(world.root / "dev.jwks.json", jwks(_dev_key()))
    return world


_DEV: list[OKPKey] = []


def _dev_key() -> OKPKey:
    if not _DEV:
        _DEV.append(generate_ed25519("attestor-dev"))
    return _DEV[0]


def write(world: World, *blocks: str) -> Path:
    world.trust_file.write_text(
        "\n".join(blocks) + f'\n[runtime]\nallowed_measurements = ["{GOOD_MEASUREMENT}"]\n'
    )
    return world.trust_file


def issuer(iss: str = ISSUER, jwks_file: str = "issuer.jwks.json", extra: str = "") -> str:
    return f'[[issuers]]\niss = "{iss}"\njwks = "{jwks_file}"\n{extra}\n'


def attestor(iss: str = ATTESTOR, jwks_file: str = "attestor.jwks.json", extra: str = "") -> str:
    return f'[[attestors]]\niss = "{iss}"\njwks = "{jwks_file}"\n{extra}\n'


def two_issuers(a: str, b: str) -> tuple[str, str]:
    return (
        issuer(extra=f"subjects = {a}"),
        issuer(SINGLE_KEY_ISSUER, "single.jwks.json", f"subjects = {b}"),
    )


def two_attestors(prod: str, dev: str) -> tuple[str, str]:
    return attestor(extra=f"env = {prod}"), attestor(DEV_ATTESTOR, "dev.jwks.json", f"env = {dev}")


# -- matching ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sub", "entry", "inside"),
    [
        ("spiffe://a/agent/1", "spiffe://a/agent/", True),
        ("spiffe://a/agent/x/y", "spiffe://a/agent/", True),
        ("spiffe://a/agentX/1", "spiffe://a/agent/", False),  # a segment, not letters
        ("spiffe://a/agent", "spiffe://a/agent/", False),
        ("spiffe://a/agent", "spiffe://a/agent", True),  # no "/": one exact subject
        ("spiffe://a/agentX", "spiffe://a/agent", False),
        ("spiffe://a/agent/1", "spiffe://a/agent", False),
        ("SPIFFE://a/agent/1", "spiffe://a/agent/", False),  # exact bytes, no folding
    ],
)
def test_a_subject_is_inside_a_namespace_by_whole_segments(
    sub: str, entry: str, inside: bool
) -> None:
    assert subject_in(sub, entry) is inside


def test_an_attestor_may_attest_only_the_values_it_declares(tmp_path: Path) -> None:
    party = TrustedParty(
        iss=DEV_ATTESTOR,
        jwks_path=tmp_path,
        keys=(),
        env={"cluster": frozenset({"dev"}), "region": frozenset({"eu-west-1"})},
    )

    assert party.unattestable({"cluster": "dev"}) == []
    assert party.unattestable({}) == []
    assert party.unattestable({"cluster": "prod-eu"}) == ["cluster='prod-eu'"]
    assert party.unattestable({"zone": "a"}) == ["zone='a'"]  # a key it never declared
    assert party.unattestable({"cluster": ["dev"]}) == ["cluster=['dev']"]  # not a string
    assert party.unattestable({"cluster": "dev", "region": 1}) == ["region=1"]


# -- load-time rules -----------------------------------------------------------------


def test_a_single_issuer_and_attestor_need_declare_nothing(world: World) -> None:
    trust = load_trust(write(world, issuer(), attestor()))

    assert trust.issuers[ISSUER].may_issue_for("anything at all")
    assert trust.attestors[ATTESTOR].unattestable({"cluster": "prod"}) == []


def test_declared_bounds_are_loaded(world: World) -> None:
    trust = load_trust(
        write(
            world,
            *two_issuers('["spiffe://a/agent/", "spiffe://a/bot"]', '["spiffe://b/"]'),
            *two_attestors(
                '{ cluster = ["prod-eu"], region = ["eu-west-1"] }', '{ cluster = ["dev"] }'
            ),
        )
    )

    assert trust.issuers[ISSUER].subjects == ("spiffe://a/agent/", "spiffe://a/bot")
    assert trust.issuers[SINGLE_KEY_ISSUER].may_issue_for("spiffe://b/agent/1")
    assert not trust.issuers[SINGLE_KEY_ISSUER].may_issue_for("spiffe://a/agent/1")
    assert trust.attestors[DEV_ATTESTOR].env == {"cluster": frozenset({"dev"})}
    assert trust.notes == ()


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ('["spiffe://a/agent/"]', '["spiffe://a/agentX/"]'),  # letters shared, segments not
        ('["spiffe://a/agent"]', '["spiffe://a/agent/"]'),  # the exact sub is not inside
        ('["spiffe://a/agent/1"]', '["spiffe://a/agent/2"]'),
    ],
)
def test_disjoint_namespaces_load(world: World, a: str, b: str) -> None:
    load_trust(write(world, *two_issuers(a, b)))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ('["spiffe://a/agent/"]', '["spiffe://a/agent/"]'),  # equal
        ('["spiffe://a/"]', '["spiffe://a/agent/"]'),  # one inside the other
        ('["spiffe://x/", "spiffe://a/agent/"]', '["spiffe://a/"]'),  # either way round
        ('["spiffe://a/agent/"]', '["spiffe://a/agent/1"]'),  # an exact sub inside
        ('["spiffe://a/agent/1"]', '["spiffe://a/agent/1"]'),
    ],
)
def test_overlapping_namespaces_refuse_the_file(world: World, a: str, b: str) -> None:
    with pytest.raises(TrustFileError, match=r"overlap in `subjects`.*one issuer only"):
        load_trust(write(world, *two_issuers(a, b)))


def test_two_issuers_must_each_declare_subjects(world: World) -> None:
    with pytest.raises(TrustFileError, match=r"each must declare `subjects`.*single.test"):
        load_trust(
            write(
                world,
                issuer(extra='subjects = ["spiffe://a/"]'),
                issuer(SINGLE_KEY_ISSUER, "single.jwks.json"),
            )
        )
    with pytest.raises(TrustFileError, match="each must declare `subjects`"):
        load_trust(write(world, issuer(), issuer(SINGLE_KEY_ISSUER, "single.jwks.json")))


@pytest.mark.parametrize(
    ("prod", "dev"),
    [
        ('{ cluster = ["prod-eu"] }', '{ cluster = ["dev", "prod-eu"] }'),
        ('{ cluster = ["prod-eu"], region = ["eu"] }', '{ cluster = ["dev"], region = ["eu"] }'),
    ],
)
def test_attestors_attesting_the_same_value_refuse_the_file(
    world: World, prod: str, dev: str
) -> None:
    with pytest.raises(TrustFileError, match=r"overlap in `env`.*one attestor only"):
        load_trust(write(world, issuer(), *two_attestors(prod, dev)))


def test_attestors_may_share_a_key_with_distinct_values(world: World) -> None:
    trust = load_trust(
        write(
            world,
            issuer(),
            *two_attestors('{ cluster = ["prod-eu"], zone = ["a"] }', '{ cluster = ["dev"] }'),
        )
    )
    assert set(trust.attestors) == {ATTESTOR, DEV_ATTESTOR}


def test_two_attestors_must_each_declare_env(world: World) -> None:
    with pytest.raises(TrustFileError, match=r"each must declare `env`.*attestor-dev"):
        load_trust(
            write(
                world,
                issuer(),
                attestor(extra='env = { cluster = ["prod-eu"] }'),
                attestor(DEV_ATTESTOR, "dev.jwks.json"),
            )
        )


@pytest.mark.parametrize(
    ("block", "why"),
    [
        (issuer(extra="subjects = []"), "sign for nobody"),
        (issuer(extra='subjects = "spiffe://a/"'), "list of non-empty strings"),
        (issuer(extra='subjects = [""]'), "list of non-empty strings"),
        (issuer(extra="subjects = [1]"), "list of non-empty strings"),
        (attestor(extra="env = {}"), "table of environment keys"),
        (attestor(extra='env = ["dev"]'), "table of environment keys"),
        (attestor(extra='env = { cluster = "dev" }'), "env.cluster must be a non-empty list"),
        (attestor(extra="env = { cluster = [] }"), "env.cluster must be a non-empty list"),
        (attestor(extra="env = { tier = [2] }"), "env.tier must be a non-empty list of strings"),
    ],
)
def test_unusable_declarations_refuse_the_file(world: World, block: str, why: str) -> None:
    with pytest.raises(TrustFileError, match=why):
        load_trust(write(world, block))


# -- verification --------------------------------------------------------------------


def verify(world: World, mandate: str | None = None, attestation: str = "") -> VerificationResult:
    verifier, _, _ = world.verifier()
    return asyncio.run(verifier.verify(world.request(mandate=mandate, attestation=attestation)))


def failed(result: VerificationResult) -> tuple[str, ...]:
    return tuple(o.check.value for o in result.failed)


@pytest.fixture
def two_of_each(world: World) -> World:
    write(
        world,
        *two_issuers('["spiffe://test/agent/"]', '["spiffe://single.test/agent/"]'),
        *two_attestors(
            '{ cluster = ["prod-eu"], region = ["eu-west-1"] }',
            '{ cluster = ["dev"], region = ["dev-local"] }',
        ),
    )
    return world


def test_an_issuer_signing_for_another_issuers_agent_is_refused(two_of_each: World) -> None:
    w = two_of_each
    # The single-key issuer's own key, its own iss, a scope it chose: only the sub is not its own.
    mandate = w.mandate(
        key=w.single, iss=SINGLE_KEY_ISSUER, sub=SUBJECT, scope=[{"action": "*", "resource": "*"}]
    )

    result = verify(w, mandate=mandate)

    assert not result.verified
    assert result.reason == common_pb2.INVALID_VERIFICATION
    assert failed(result) == ("issuer",)
    assert "may not issue for subject" in result.failed[0].detail


def test_each_issuer_still_signs_for_its_own_agents(two_of_each: World) -> None:
    w = two_of_each
    own = w.mandate(key=w.single, iss=SINGLE_KEY_ISSUER, sub="spiffe://single.test/agent/7")

    assert verify(w).verified
    assert verify(w, mandate=own).verified


def _bound(w: World, cluster: str, *, key: OKPKey, iss: str, env: dict[str, str]) -> dict[str, str]:
    mandate = w.mandate(env={"cluster": cluster})
    return {"mandate": mandate, "attestation": w.attestation(key=key, iss=iss, env=env)}


def test_the_development_attestor_attesting_production_is_refused(two_of_each: World) -> None:
    w = two_of_each
    request = _bound(w, "prod-eu", key=_dev_key(), iss=DEV_ATTESTOR, env=PROD_ENV)

    result = verify(w, **request)

    assert not result.verified
    assert result.reason == common_pb2.ENVIRONMENT_MISMATCH
    assert failed(result) == ("environment",)
    assert "may not attest cluster='prod-eu', region='eu-west-1'" in result.failed[0].detail


def test_an_attested_key_the_attestor_never_declared_is_refused(two_of_each: World) -> None:
    # Unbound by the mandate, yet policy would read it from context.env.
    w = two_of_each
    request = _bound(
        w, "dev", key=_dev_key(), iss=DEV_ATTESTOR, env={"cluster": "dev", "pci": "yes"}
    )

    result = verify(w, **request)

    assert result.reason == common_pb2.ENVIRONMENT_MISMATCH
    assert "pci='yes'" in result.failed[0].detail


def test_each_attestor_still_attests_its_own_environment(two_of_each: World) -> None:
    w = two_of_each
    prod = _bound(w, "prod-eu", key=w.attestor, iss=ATTESTOR, env=PROD_ENV)
    dev = _bound(w, "dev", key=_dev_key(), iss=DEV_ATTESTOR, env={"cluster": "dev"})

    assert verify(w, **prod).verified
    assert verify(w, **dev).verified


def test_a_reload_into_overlap_denies_until_fixed(two_of_each: World) -> None:
    w = two_of_each
    verifier, source, _ = w.verifier()
    assert asyncio.run(verifier.verify(w.request())).verified

    write(w, *two_issuers('["spiffe://test/"]', '["spiffe://test/agent/"]'))
    result = asyncio.run(verifier.verify(w.request()))

    assert not result.verified
    assert source.state.error is not None and "overlap" in source.state.error
