"""Bundles: content versions, what compiles, and whose signatures count."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc.jwk import OKPKey

from govmesh.artifacts.canonical import b64url
from govmesh.artifacts.keys import generate_ed25519, public_jwks
from govmesh.artifacts.signing import (
    ACTIVATION_TYP,
    BUNDLE_TYP,
    Activation,
    AdminKeys,
    AdminTrustError,
    SignatureRejected,
    load_admin_keys,
    sign_activation,
    sign_bundle,
    verify_activation,
    verify_bundle_signature,
)
from govmesh.cli.devsetup import write_dev_setup
from govmesh.policy.bundle import (
    BundleRejected,
    BundleSource,
    PolicyFile,
    SchemaFile,
    compile_bundle,
    parse_bundle_content,
    read_bundle_source,
)

PERMIT = '@id("all") permit (principal, action, resource);'


def source(*texts: str, schema: str | None = None) -> BundleSource:
    return BundleSource(
        policies=tuple(PolicyFile(f"p{n}.cedar", text) for n, text in enumerate(texts)),
        schema=SchemaFile("cedar", schema) if schema else None,
    )


# --- versions ---------------------------------------------------------------------------


def test_version_is_the_sha256_of_the_canonical_content() -> None:
    bundle = source(PERMIT)

    assert bundle.version == hashlib.sha256(bundle.canonical()).hexdigest()
    assert json.loads(bundle.canonical())["policies"] == [{"name": "p0.cedar", "text": PERMIT}]


def test_version_ignores_file_order_but_not_content() -> None:
    a = BundleSource(policies=(PolicyFile("a.cedar", PERMIT), PolicyFile("b.cedar", "")))
    b = BundleSource(policies=(PolicyFile("b.cedar", ""), PolicyFile("a.cedar", PERMIT)))
    c = BundleSource(policies=(PolicyFile("a.cedar", PERMIT + " "), PolicyFile("b.cedar", "")))

    assert a.version == b.version
    assert a.version != c.version


def test_a_folder_reads_policies_schema_and_metadata(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.cedar").write_text(PERMIT)
    (tmp_path / "sub" / "b.cedar").write_text('@id("b") forbid (principal, action, resource);')
    (tmp_path / ".hidden.cedar").write_text("not cedar at all")
    (tmp_path / "app.cedarschema").write_text("entity Agent; entity Resource;")
    (tmp_path / "bundle.json").write_text('{"name": "payments"}')

    bundle = read_bundle_source(tmp_path)

    assert [p.name for p in bundle.policies] == ["a.cedar", "sub/b.cedar"]
    assert bundle.schema == SchemaFile("cedar", "entity Agent; entity Resource;")
    assert bundle.metadata == {"name": "payments"}


def test_two_schemas_in_one_folder_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.cedar").write_text(PERMIT)
    (tmp_path / "a.cedarschema").write_text("entity Agent;")
    (tmp_path / "b.cedarschema.json").write_text("{}")

    with pytest.raises(BundleRejected, match="more than one schema"):
        read_bundle_source(tmp_path)


def test_content_round_trips_and_must_be_canonical() -> None:
    bundle = source(PERMIT)
    assert parse_bundle_content(bundle.canonical()) == bundle

    pretty = json.dumps(bundle.document(), indent=2).encode()
    with pytest.raises(BundleRejected, match="canonical"):
        parse_bundle_content(pretty)
    with pytest.raises(BundleRejected):
        parse_bundle_content(b'{"format": "something else"}')


# --- compilation: what is refused at publish ------------------------------------------------


@pytest.mark.parametrize(
    ("texts", "named"),
    [
        (("permit (principal, action, resource",), "does not parse"),
        (("// nothing but a comment",), "no policy"),
        (("",), "no policy"),
        (("permit (principal == ?principal, action, resource);",), "template"),
        ((PERMIT, PERMIT), "unique"),
    ],
)
def test_unusable_policies_are_refused(texts: tuple[str, ...], named: str) -> None:
    with pytest.raises(BundleRejected, match=named):
        compile_bundle(source(*texts))


SCHEMA = """
entity Issuer; entity Agent in [Issuer]; entity Resource;
action "payments.transfer" appliesTo {
  principal: [Agent], resource: [Resource],
  context: { request: { amount: Long }, env: {}, attribution: {} }
};
"""


def test_a_policy_that_fails_schema_validation_is_refused_by_name() -> None:
    ok = '@id("ok") permit (principal, action == Action::"payments.transfer", resource);'
    typo = (
        '@id("typo") permit (principal, action == Action::"payments.transfer", resource) '
        "when { context.request.amont < 10 };"
    )
    assert compile_bundle(source(ok, schema=SCHEMA)).policy_ids == ("ok",)

    with pytest.raises(BundleRejected, match="schema validation") as refused:
        compile_bundle(source(ok, typo, schema=SCHEMA))
    assert "typo" in str(refused.value)


def test_a_schema_that_does_not_parse_is_refused() -> None:
    with pytest.raises(BundleRejected, match="schema does not parse"):
        compile_bundle(source(PERMIT, schema="entity Agent {"))


# --- signatures -------------------------------------------------------------------------------


@pytest.fixture
def admin() -> OKPKey:
    return generate_ed25519()


@pytest.fixture
def trusted(admin: OKPKey) -> AdminKeys:
    return AdminKeys.from_jwks([("test", public_jwks([admin]))])


def test_a_trusted_admin_signature_verifies(admin: OKPKey, trusted: AdminKeys) -> None:
    version = source(PERMIT).version

    kid = verify_bundle_signature(sign_bundle(version, admin), version, trusted)

    assert kid == admin.as_dict()["kid"]


def test_a_signature_for_other_content_is_refused(admin: OKPKey, trusted: AdminKeys) -> None:
    signed_for = source(PERMIT).version
    published = source(PERMIT + "\n// changed").version

    with pytest.raises(SignatureRejected, match="another bundle"):
        verify_bundle_signature(sign_bundle(signed_for, admin), published, trusted)


def test_an_untrusted_key_is_refused(trusted: AdminKeys) -> None:
    version = source(PERMIT).version

    with pytest.raises(SignatureRejected, match="not a trusted policy admin"):
        verify_bundle_signature(sign_bundle(version, generate_ed25519()), version, trusted)


def test_an_untrusted_key_claiming_a_trusted_kid_is_refused(
    admin: OKPKey, trusted: AdminKeys
) -> None:
    impostor = generate_ed25519(kid=str(admin.as_dict()["kid"]))
    version = source(PERMIT).version

    with pytest.raises(SignatureRejected, match="bad signature"):
        verify_bundle_signature(sign_bundle(version, impostor), version, trusted)


def test_a_tampered_signature_is_refused(admin: OKPKey, trusted: AdminKeys) -> None:
    version = source(PERMIT).version
    header, payload, signature = sign_bundle(version, admin).split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]

    with pytest.raises(SignatureRejected):
        verify_bundle_signature(f"{header}.{payload}.{flipped}", version, trusted)


def _forge(header: Mapping[str, object], claims: Mapping[str, object], key: OKPKey | None) -> str:
    """A compact JWS signed by hand, so that any header can be tried."""
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    signature = b""
    if key is not None:
        private = key.private_key
        assert isinstance(private, Ed25519PrivateKey)
        signature = private.sign(signing_input.encode())
    return signing_input + "." + b64url(signature)


@pytest.mark.parametrize(
    ("header", "signed"),
    [
        ({"alg": "none", "typ": BUNDLE_TYP}, False),
        ({"alg": "HS256", "typ": BUNDLE_TYP}, False),
        ({"alg": "EdDSA", "typ": ACTIVATION_TYP}, True),
        ({"alg": "EdDSA", "typ": "JWT"}, True),
        ({"alg": "EdDSA", "typ": BUNDLE_TYP, "crit": ["exp"], "exp": 1}, True),
    ],
)
def test_wrong_alg_typ_or_crit_is_refused(
    admin: OKPKey, trusted: AdminKeys, header: dict[str, object], signed: bool
) -> None:
    version = source(PERMIT).version
    kid = str(admin.as_dict()["kid"])
    good = {"alg": "EdDSA", "typ": BUNDLE_TYP, "kid": kid}
    claims = {"ver": version, "iat": 1}
    assert verify_bundle_signature(_forge(good, claims, admin), version, trusted)

    forged = _forge({**header, "kid": kid}, claims, admin if signed else None)

    with pytest.raises(SignatureRejected):
        verify_bundle_signature(forged, version, trusted)


def test_activation_statements_round_trip(admin: OKPKey, trusted: AdminKeys) -> None:
    activation = Activation(epoch=7, active="a" * 64, shadow="b" * 64)

    signed = verify_activation(sign_activation(activation, admin, clock=lambda: 1000), trusted)

    assert signed.activation == activation
    assert signed.issued_at == 1000


def test_a_bundle_signature_is_not_an_activation(admin: OKPKey, trusted: AdminKeys) -> None:
    with pytest.raises(SignatureRejected, match="typ"):
        verify_activation(sign_bundle("a" * 64, admin), trusted)


# --- which admins are trusted ------------------------------------------------------------------


def test_the_dev_trust_file_names_the_policy_admin_key(tmp_path: Path) -> None:
    setup = write_dev_setup(tmp_path / "dev")
    key = json.loads((setup.keys_dir / "policy-admin.jwk.json").read_text())

    keys = load_admin_keys(setup.trust_file)

    assert keys.kids == (key["kid"],)


def test_a_trust_file_without_a_policy_section_is_refused(tmp_path: Path) -> None:
    trust = tmp_path / "trust.toml"
    trust.write_text("[runtime]\nallowed_measurements = []\n")

    with pytest.raises(AdminTrustError, match="admin_jwks"):
        load_admin_keys(trust)


def test_private_key_material_in_the_admin_jwks_is_refused(tmp_path: Path) -> None:
    key = generate_ed25519()
    (tmp_path / "admin.jwks.json").write_text(json.dumps({"keys": [key.as_dict(private=True)]}))
    trust = tmp_path / "trust.toml"
    trust.write_text('[policy]\nadmin_jwks = "admin.jwks.json"\n')

    with pytest.raises(AdminTrustError, match="public keys"):
        load_admin_keys(trust)
