"""The trust file, the keys it admits, and reloading it while verifying."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey, RSAKey

from govmesh.artifacts.keys import generate_ed25519
from govmesh.artifacts.trust import TrustFileError, load_trust, usable_key
from govmesh.verification.cache import VerifiedTokenCache, token_key
from govmesh.verification.core import VerificationConfig, Verifier
from govmesh.verification.trustsource import TrustSource
from tests.support.verification import (
    GOOD_MEASUREMENT,
    ISSUER,
    Clock,
    MemoryReplayStore,
    World,
    jwks,
    make_world,
    odd_modulus,
    rsa_jwk,
    rsa_key,
    write_json,
)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path / "trust")


def public(key: Any, **members: Any) -> dict[str, Any]:
    params: dict[str, Any] = key.as_dict(private=False)
    params.update(members)
    return {k: v for k, v in params.items() if v is not None}


# -- which keys verify what -----------------------------------------------------------


def test_an_ed25519_key_verifies_eddsa_declared_or_not() -> None:
    key = generate_ed25519()
    assert usable_key(public(key, alg=None))[0] == "EdDSA"
    assert usable_key(public(key, alg="EdDSA"))[0] == "EdDSA"


@pytest.mark.parametrize(
    ("params", "why"),
    [
        (lambda: public(generate_ed25519(), alg="ES256"), "cannot be used with alg"),
        (lambda: public(ECKey.generate_key("P-256"), alg=None), "declares alg ES256"),
        (lambda: public(ECKey.generate_key("P-384"), alg="ES256"), "P-256"),
        (lambda: public(RSAKey.generate_key(2048), alg=None), "declares alg RS256"),
        (lambda: public(RSAKey.generate_key(2048), alg="PS256"), "declares alg RS256"),
        (lambda: public(RSAKey.generate_key(1024), alg="RS256"), "shorter than 2048"),
        (lambda: public(generate_ed25519(), use="enc"), "not sig"),
        (lambda: public(generate_ed25519(), key_ops=["encrypt"]), "key_ops"),
        (lambda: {"kty": "oct", "alg": "HS256"}, "not accepted"),
        (lambda: {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}, "not a valid"),
        (lambda: {**rsa_jwk(odd_modulus(2048), 3), "alg": "RS256"}, "exponent is not 65537"),
        (lambda: {**rsa_jwk(odd_modulus(3072), 2**3069 + 1), "alg": "RS256"}, "not 65537"),
        (lambda: {**rsa_jwk(odd_modulus(8192)), "alg": "RS256"}, "longer than 4096"),
        (lambda: {**rsa_jwk(odd_modulus(4104)), "alg": "RS256"}, "4104 bits is longer"),
        (lambda: {"kty": "RSA", "alg": "RS256", "n": "A" * 100_000, "e": "AQAB"}, "longer"),
        (lambda: {"kty": "RSA", "alg": "RS256", "n": "A" * 400, "e": "A" * 9}, "not 65537"),
        (lambda: {"kty": "RSA", "alg": "RS256", "n": 5, "e": "AQAB"}, "'n' is not a string"),
        (lambda: {"kty": "RSA", "alg": "RS256", "e": "AQAB"}, "'n' is not a string"),
    ],
)
@pytest.mark.filterwarnings("ignore:Key size should be")
def test_keys_govmesh_will_not_verify_with(params: Any, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        usable_key(params())


@pytest.mark.parametrize("bits", [2048, 4096])
def test_rsa_keys_within_the_bounds_are_usable(bits: int) -> None:
    key = RSAKey.generate_key(bits, parameters={"alg": "RS256"}) if bits > 2048 else rsa_key("k")
    assert usable_key(public(key))[0] == "RS256"


@pytest.mark.parametrize(
    ("params", "why"),
    [
        (lambda: rsa_jwk(odd_modulus(3072), 2**3069 + 1), "public exponent is not 65537"),
        (lambda: rsa_jwk(odd_modulus(2048), 3), "public exponent is not 65537"),
        (lambda: rsa_jwk(odd_modulus(8192)), "longer than 4096 bits"),
        (lambda: rsa_jwk(odd_modulus(1024)), "1024 bits is shorter than 2048"),
    ],
)
def test_a_jwks_with_a_key_too_costly_to_verify_with_refuses_the_trust_file(
    world: World, params: Any, why: str
) -> None:
    # Not ignored like a key meant for something else: this key would verify,
    # and every verification with it would hold the event loop.
    costly = {**params(), "alg": "RS256", "use": "sig", "kid": "costly"}
    write_json(world.root / "issuer.jwks.json", {"keys": [world.issuer.as_dict(), costly]})

    with pytest.raises(TrustFileError, match=why) as refused:
        load_trust(world.trust_file)

    message = str(refused.value)
    assert "issuer.jwks.json: key costly" in message
    assert "e = 65537 and a 2048-4096-bit modulus" in message


def test_unusable_keys_are_ignored_and_noted(world: World) -> None:
    undeclared = ECKey.generate_key("P-256", parameters={"kid": "ec-undeclared"})
    write_json(world.root / "issuer.jwks.json", jwks(world.issuer, undeclared))

    trust = load_trust(world.trust_file)

    assert [k.kid for k in trust.issuers[ISSUER].keys] == ["issuer-ed"]
    assert any("ec-undeclared" in note for note in trust.notes)


@pytest.mark.parametrize(
    ("document", "why"),
    [
        ({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, "private or symmetric"),
        ("private", "private or symmetric"),
        ({"keys": []}, "no key govmesh can verify with"),
        ({"nokeys": 1}, "no keys array"),
        ("duplicate", "twice"),
        ("not json", "not JSON"),
    ],
)
def test_unusable_jwks_files_refuse_the_whole_trust_file(
    world: World, document: Any, why: str
) -> None:
    path = world.root / "attestor.jwks.json"
    if document == "private":
        write_json(path, {"keys": [world.attestor.as_dict(private=True)]})
    elif document == "duplicate":
        write_json(path, jwks(world.attestor, generate_ed25519("attestor-1")))
    elif document == "not json":
        path.write_text("{")
    else:
        write_json(path, document)

    with pytest.raises(TrustFileError, match=why):
        load_trust(world.trust_file)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[[issuers]]\niss = 'x'\n", "needs iss and jwks"),
        ("[[issuers]]\niss = 'x'\njwks = 'missing.json'\n", "cannot read JWKS"),
        ("[runtime]\nallowed_measurements = ['md5:abc']\n", "sha256:<64 hex digits>"),
        ("[runtime]\nallowed_measurements = 'sha256:x'\n", "list of strings"),
        ("issuers = 3\n", "array of tables"),
        ("not toml [[[", "not valid TOML"),
    ],
)
def test_unusable_trust_files_say_why(world: World, text: str, why: str) -> None:
    world.trust_file.write_text(text)
    with pytest.raises(TrustFileError, match=why):
        load_trust(world.trust_file)


def test_a_missing_trust_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(TrustFileError, match="cannot read trust file"):
        load_trust(tmp_path / "nope.toml")


def test_the_version_follows_the_bytes(world: World) -> None:
    first = load_trust(world.trust_file)
    assert load_trust(world.trust_file).version == first.version

    write_json(world.root / "attestor.jwks.json", jwks(world.attestor, generate_ed25519("b")))

    assert load_trust(world.trust_file).version != first.version
    assert first.allowed_measurements == {GOOD_MEASUREMENT}


# -- reloading ------------------------------------------------------------------------


def test_the_source_reloads_when_a_file_changes(world: World) -> None:
    source = TrustSource(world.trust_file, cache_size=10)
    first = source.current()
    assert source.current() is first  # nothing changed: the same state, no reload

    write_json(world.root / "issuer.jwks.json", jwks(world.issuer))
    second = source.current()

    assert second.generation == first.generation + 1
    assert second.trust is not None
    assert [k.kid for k in second.trust.issuers[ISSUER].keys] == ["issuer-ed"]
    assert second.cache is not first.cache


def test_rewriting_the_same_bytes_keeps_the_state_and_its_cache(world: World) -> None:
    source = TrustSource(world.trust_file, cache_size=10)
    first = source.current()

    world.write_trust()  # new inodes, identical content

    assert source.current().generation == first.generation
    assert source.current().cache is first.cache


def test_an_unloadable_configuration_is_not_kept_in_its_last_good_form(world: World) -> None:
    source = TrustSource(world.trust_file, cache_size=10)
    good = world.trust_file.read_text()

    world.trust_file.write_text("[[issuers]]\n")
    broken = source.current()

    assert broken.trust is None and broken.error
    world.trust_file.write_text(good)
    assert source.refresh().trust is not None


def test_start_up_refuses_an_unloadable_configuration(world: World) -> None:
    world.trust_file.write_text("[[issuers]]\n")
    with pytest.raises(TrustFileError):
        TrustSource(world.trust_file, cache_size=10)


async def test_a_cached_mandate_is_verified_again_after_its_key_is_removed(world: World) -> None:
    verifier, source, _ = world.verifier()
    mandate = world.mandate(key=world.issuer_rs)
    assert (await verifier.verify(world.request(mandate=mandate))).verified
    assert len(source.current().cache) == 1

    write_json(world.root / "issuer.jwks.json", jwks(world.issuer, world.issuer_es))
    result = await verifier.verify(world.request(mandate=mandate))

    assert [o.check.value for o in result.failed] == ["signature"]


class _ReloadWhileWaiting(MemoryReplayStore):
    """A replay store during whose answer the operator removes a key."""

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world

    async def remember(self, key: bytes, expires_at: float, *, timeout: float) -> bool:
        write_json(self.world.root / "issuer.jwks.json", jwks(self.world.issuer_rs))
        await asyncio.sleep(0)
        return await super().remember(key, expires_at, timeout=timeout)


async def test_a_key_removed_while_the_replay_store_answers_does_not_verify(
    world: World,
) -> None:
    source = TrustSource(world.trust_file, cache_size=10)
    verifier = Verifier(
        trust=source,
        replay=_ReloadWhileWaiting(world),
        clock=world.clock,
        config=VerificationConfig(),
    )

    result = await verifier.verify(world.request())

    assert not result.verified
    assert [o.check.value for o in result.failed] == ["signature"]
    assert result.trust_version == source.current().version


# -- the cache ----------------------------------------------------------------------------


async def test_mandates_and_attestations_come_from_the_cache_proofs_never(world: World) -> None:
    verifier, source, _ = world.verifier()
    mandate = world.mandate(env={"cluster": "prod-eu"})
    attestation = world.attestation()

    for _ in range(5):
        request = world.request(mandate=mandate, attestation=attestation)
        assert (await verifier.verify(request)).verified
    cache = source.current().cache

    assert (cache.hits, cache.misses) == (8, 2)
    # A cached mandate does not vouch for a proof: a forged proof still fails.
    forged = world.signed_proof(mandate, key=generate_ed25519())
    result = await verifier.verify(
        world.request(mandate=mandate, proof=forged, attestation=attestation)
    )
    assert [o.check.value for o in result.failed] == ["pop"]


async def test_a_cached_mandate_still_expires(tmp_path: Path) -> None:
    clock = Clock(1_900_000_000)
    world = make_world(tmp_path, clock=clock)
    verifier, _, _ = world.verifier(skew=5)
    mandate = world.mandate(exp=int(clock()) + 30)
    assert (await verifier.verify(world.request(mandate=mandate))).verified

    clock.now = clock() + 36
    result = await verifier.verify(world.request(mandate=mandate))

    assert [o.check.value for o in result.failed] == ["window"]


async def test_failed_verifications_are_not_cached(world: World) -> None:
    verifier, source, _ = world.verifier()
    forged = world.mandate(key=world.stranger)
    for _ in range(3):
        result = await verifier.verify(world.request(mandate=forged))
        assert [o.check.value for o in result.failed] == ["signature"]
    assert len(source.current().cache) == 0


async def test_a_disabled_cache_verifies_every_time(world: World) -> None:
    verifier, source, _ = world.verifier(cache_size=0)
    mandate = world.mandate()
    for _ in range(3):
        assert (await verifier.verify(world.request(mandate=mandate))).verified
    assert len(source.current().cache) == 0


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    cache: VerifiedTokenCache[str] = VerifiedTokenCache(2)
    cache.put(b"a", "A", expires_at=100, now=0)
    cache.put(b"b", "B", expires_at=100, now=0)
    assert cache.get(b"a", now=1) == "A"  # a is now the most recent

    cache.put(b"c", "C", expires_at=100, now=1)

    assert len(cache) == 2
    assert cache.get(b"b", now=1) is None
    assert (cache.get(b"a", now=1), cache.get(b"c", now=1)) == ("A", "C")


def test_cache_entries_expire() -> None:
    cache: VerifiedTokenCache[str] = VerifiedTokenCache(10)
    cache.put(b"a", "A", expires_at=10, now=0)
    cache.put(b"gone", "G", expires_at=5, now=5)  # already expired: not stored

    assert cache.get(b"a", now=9.9) == "A"
    assert cache.get(b"a", now=10) is None
    assert len(cache) == 0


def test_cache_keys_separate_artifact_kinds() -> None:
    assert token_key("mandate", "t") != token_key("attestation", "t")


def test_a_configmap_style_symlink_swap_is_picked_up(tmp_path: Path) -> None:
    # Kubernetes mounts a ConfigMap as NAME -> ..data/NAME, ..data -> ..<version>,
    # and updates it by pointing ..data at a new version and deleting the old one.
    staging = make_world(tmp_path / "staging")
    mount = tmp_path / "mount"
    mount.mkdir()

    def publish(version: str) -> None:
        target = mount / f"..{version}"
        target.mkdir()
        for name in ("trust.toml", "issuer.jwks.json", "single.jwks.json", "attestor.jwks.json"):
            (target / name).write_bytes((staging.root / name).read_bytes())
        link = mount / "..data_tmp"
        link.symlink_to(target.name)
        os.replace(link, mount / "..data")

    publish("v1")
    for name in ("trust.toml", "issuer.jwks.json", "single.jwks.json", "attestor.jwks.json"):
        (mount / name).symlink_to(f"..data/{name}")
    source = TrustSource(mount / "trust.toml", cache_size=10)
    first = source.current()

    write_json(staging.root / "issuer.jwks.json", jwks(staging.issuer))
    publish("v2")
    shutil.rmtree(mount / "..v1")
    second = source.current()

    assert second.error is None, second.error
    assert second.generation == first.generation + 1
    assert second.trust is not None
    assert [k.kid for k in second.trust.issuers[ISSUER].keys] == ["issuer-ed"]
