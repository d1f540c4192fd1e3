"""The policy admin client against a real authority: typed answers and typed refusals."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from govmesh.artifacts.keys import generate_ed25519, load_private_jwk
from govmesh.artifacts.signing import Activation, sign_activation, sign_bundle
from govmesh.cli.devsetup import SAMPLE_POLICY, DevSetup
from govmesh.client.admin import (
    REFUSALS,
    AuthorityUnavailable,
    BundleRefused,
    EpochTaken,
    PolicyAdminClient,
    SignatureRefused,
    StateRefused,
    UnknownVersion,
)
from govmesh.policy.bundle import BundleSource, PolicyFile
from govmesh.runtime.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PermissionRefused,
    PreconditionFailed,
    Unavailable,
)
from govmesh.v1 import policy_pb2
from tests.support.processes import ServiceProcess

STRICT = SAMPLE_POLICY.replace("<= 1000", "<= 100")


def bundle_of(text: str) -> BundleSource:
    return BundleSource(policies=(PolicyFile("policies.cedar", text),))


@pytest.fixture
def authority(
    services: Callable[..., ServiceProcess], dev_setup: DevSetup, database_url: str, tmp_path: Path
) -> ServiceProcess:
    return services(
        "policy",
        {
            "GOVMESH_DATABASE_URL": database_url,
            "GOVMESH_TRUST_FILE": str(dev_setup.trust_file),
            "GOVMESH_KEYS_DIR": str(dev_setup.keys_dir),
            "GOVMESH_POLICY_STATE_FILE": str(tmp_path / "state" / "policy-epoch.json"),
        },
        wait_serving=False,
    )


async def test_publish_activate_list_and_show_through_the_client(
    authority: ServiceProcess, dev_setup: DevSetup
) -> None:
    key = load_private_jwk(dev_setup.keys_dir / "policy-admin.jwk.json")
    sample, strict = bundle_of(SAMPLE_POLICY), bundle_of(STRICT)

    async with await PolicyAdminClient.connect(authority.address, timeout=10) as admin:
        assert not (await admin.state()).current.epoch

        published = await admin.publish(
            policy_pb2.SignedBundle(
                content=sample.canonical(), signature=sign_bundle(sample.version, key)
            ),
            activation=sign_activation(Activation(1, sample.version), key),
            note="first",
        )
        assert published.created
        assert (published.bundle.version, published.epoch.epoch) == (sample.version, 1)

        staged = await admin.publish(
            policy_pb2.SignedBundle(
                content=strict.canonical(), signature=sign_bundle(strict.version, key)
            )
        )
        assert not staged.HasField("epoch")
        activated = await admin.activate(
            sign_activation(Activation(2, strict.version, sample.version), key), note="second"
        )
        assert (activated.epoch.epoch, activated.epoch.shadow_version) == (2, sample.version)

        state = await admin.state()
        assert (state.current.epoch, state.current.active_version) == (2, strict.version)
        listing = await admin.list_bundles(limit=10)
        assert {b.version for b in listing.bundles} == {sample.version, strict.version}
        assert [e.note for e in listing.history] == ["second", "first"]
        shown = await admin.bundle(sample.version[:8])
        assert shown.info.version == sample.version
        assert shown.bundle.content == sample.canonical()
        assert [e.epoch for e in shown.epochs] == [2, 1]
        report = await admin.shadow_report()
        assert (report.active_version, report.shadow_version) == (strict.version, sample.version)


async def test_refusals_arrive_as_typed_errors_of_their_kind(
    authority: ServiceProcess, dev_setup: DevSetup
) -> None:
    key, stranger = (
        load_private_jwk(dev_setup.keys_dir / "policy-admin.jwk.json"),
        generate_ed25519(),
    )
    sample = bundle_of(SAMPLE_POLICY)
    signed = policy_pb2.SignedBundle(
        content=sample.canonical(), signature=sign_bundle(sample.version, key)
    )

    async with await PolicyAdminClient.connect(authority.address, timeout=10) as admin:
        with pytest.raises(UnknownVersion, match="NOT_FOUND") as unknown:
            await admin.bundle("ffffffff")
        assert isinstance(unknown.value, NotFound)
        with pytest.raises(UnknownVersion):
            await admin.shadow_report()

        with pytest.raises(BundleRefused, match="INVALID_ARGUMENT") as malformed:
            await admin.publish(policy_pb2.SignedBundle(content=b"{}", signature="x"))
        assert isinstance(malformed.value, InvalidInput)

        with pytest.raises(SignatureRefused, match="PERMISSION_DENIED") as untrusted:
            await admin.publish(
                policy_pb2.SignedBundle(
                    content=sample.canonical(), signature=sign_bundle(sample.version, stranger)
                )
            )
        assert isinstance(untrusted.value, PermissionRefused)

        await admin.publish(signed, activation=sign_activation(Activation(1, sample.version), key))
        with pytest.raises(EpochTaken, match="ABORTED") as taken:
            await admin.activate(sign_activation(Activation(1, sample.version), key))
        assert isinstance(taken.value, Conflict)

        with pytest.raises(StateRefused, match="FAILED_PRECONDITION") as unchanged:
            await admin.activate(sign_activation(Activation(2, sample.version), key))
        assert isinstance(unchanged.value, PreconditionFailed)


async def test_an_authority_that_does_not_answer_is_unavailable() -> None:
    async with await PolicyAdminClient.connect("127.0.0.1:1", timeout=1) as admin:
        with pytest.raises(AuthorityUnavailable) as unreachable:
            await admin.state()
    assert isinstance(unreachable.value, Unavailable)
    assert AuthorityUnavailable in REFUSALS
