"""The next activation and the stored-bundle check, as the authority and the CLI apply them."""

from __future__ import annotations

import pytest

from govmesh.artifacts.keys import generate_ed25519
from govmesh.artifacts.signing import Activation, AdminKeys, SignatureRejected, key_id, sign_bundle
from govmesh.policy.bundle import BundleRejected, BundleSource, PolicyFile
from govmesh.policy.transitions import (
    AlreadyInRole,
    NoShadow,
    NothingActive,
    NotItsVersion,
    activate,
    clear_shadow,
    next_epoch,
    observe,
    verify_stored_bundle,
)
from govmesh.runtime.errors import PreconditionFailed

A, B, C = "a" * 64, "b" * 64, "c" * 64


def test_the_next_epoch_is_the_one_after_the_current_and_the_first_is_one() -> None:
    assert next_epoch(None) == 1
    assert next_epoch(Activation(7, A, None)) == 8


def test_activating_keeps_the_shadow_unless_it_becomes_active() -> None:
    assert activate(None, A) == Activation(1, A, None)
    assert activate(Activation(3, A, B), C) == Activation(4, C, B)
    assert activate(Activation(3, A, B), B) == Activation(4, B, None)


def test_activating_the_active_bundle_changes_nothing_and_is_refused() -> None:
    with pytest.raises(AlreadyInRole) as refused:
        activate(Activation(3, A, B), A)
    assert (refused.value.version, refused.value.role) == (A, "active")
    assert isinstance(refused.value, PreconditionFailed)


def test_a_shadow_needs_an_active_bundle_and_a_new_role() -> None:
    assert observe(Activation(3, A, None), B) == Activation(4, A, B)
    assert observe(Activation(3, A, B), C) == Activation(4, A, C)
    with pytest.raises(NothingActive):
        observe(None, B)
    with pytest.raises(AlreadyInRole) as active:
        observe(Activation(3, A, B), A)
    assert active.value.role == "active"
    with pytest.raises(AlreadyInRole) as shadow:
        observe(Activation(3, A, B), B)
    assert shadow.value.role == "shadow"


def test_clearing_the_shadow_needs_one() -> None:
    assert clear_shadow(Activation(3, A, B)) == Activation(4, A, None)
    with pytest.raises(NoShadow):
        clear_shadow(Activation(3, A, None))
    with pytest.raises(NoShadow):
        clear_shadow(None)


SOURCE = BundleSource(policies=(PolicyFile("p.cedar", "permit(principal, action, resource);"),))


def test_a_stored_bundle_verifies_only_under_its_own_hash_and_a_trusted_signature() -> None:
    key, stranger = generate_ed25519(), generate_ed25519()
    keys = AdminKeys({key_id(key): key})
    content, version = SOURCE.canonical(), SOURCE.version

    assert verify_stored_bundle(content, sign_bundle(version, key), version, keys) == SOURCE

    with pytest.raises(NotItsVersion) as mislabelled:
        verify_stored_bundle(content, sign_bundle(A, key), A, keys)
    assert mislabelled.value.actual == version
    assert isinstance(mislabelled.value, BundleRejected)
    with pytest.raises(BundleRejected):
        verify_stored_bundle(b"not a bundle", sign_bundle(version, key), version, keys)
    with pytest.raises(SignatureRejected):
        verify_stored_bundle(content, sign_bundle(version, stranger), version, keys)
