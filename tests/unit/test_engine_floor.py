"""The engine's policy epoch floor over fakes: learned from the store, never from answers alone."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from joserfc.jwk import OKPKey

from govmesh.artifacts.keys import generate_ed25519, public_jwks
from govmesh.artifacts.signing import Activation, AdminKeys, sign_activation
from govmesh.engine.consistency import EpochTracker
from govmesh.engine.floor import PolicyFloor, StoreActivation
from govmesh.engine.protocols import PeerUnavailable
from govmesh.v1 import common_pb2
from tests.unit.engine_fakes import BUNDLE, authorize_request, build_engine

OTHER = "c" * 64


@dataclass
class FakeStore:
    """What GetState reports: the activations in turn, or an error."""

    answers: list[StoreActivation | Exception | None]
    asked: int = 0

    async def newest_activation(self, *, timeout: float) -> StoreActivation | None:
        answer = self.answers[min(self.asked, len(self.answers) - 1)]
        self.asked += 1
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def admin() -> OKPKey:
    return generate_ed25519()


def keys(*signers: OKPKey) -> AdminKeys:
    return AdminKeys.from_jwks([("test", public_jwks(list(signers)))])


def activation(
    epoch: int, version: str, signer: OKPKey, said: int | None = None
) -> StoreActivation:
    statement = sign_activation(Activation(said or epoch, version), signer)
    return StoreActivation(epoch=epoch, active=version, statement=statement)


async def test_an_engine_denies_until_it_knows_the_newest_epoch_without_asking_policy() -> None:
    epochs = EpochTracker()
    h = build_engine(epochs=epochs)

    before = await h.engine.authorize(authorize_request())
    epochs.learn(BUNDLE.epoch, BUNDLE.version)
    after = await h.engine.authorize(authorize_request())

    assert before.decision == common_pb2.DENY
    assert before.reason == common_pb2.PEER_UNAVAILABLE
    assert list(before.failed_checks) == ["policy"]
    assert "not known yet" in before.message
    assert len(h.policy.calls) == 1  # only the decision after the floor was known asked
    assert after.decision == common_pb2.ALLOW


async def test_an_answer_older_than_the_stores_newest_epoch_is_refused() -> None:
    epochs = EpochTracker()
    epochs.learn(BUNDLE.epoch + 1, OTHER)  # no answer has named this epoch yet
    h = build_engine(epochs=epochs)

    response = await h.engine.authorize(authorize_request())

    assert response.decision == common_pb2.DENY
    assert response.reason == common_pb2.INCONSISTENT_ANSWERS
    assert f"older than {BUNDLE.epoch + 1}" in response.message


async def test_an_answer_naming_another_bundle_than_the_store_for_its_epoch_is_refused() -> None:
    epochs = EpochTracker()
    epochs.learn(BUNDLE.epoch, OTHER)
    h = build_engine(epochs=epochs)

    response = await h.engine.authorize(authorize_request())

    assert response.reason == common_pb2.INCONSISTENT_ANSWERS


async def test_the_floor_follows_signed_activations_and_never_goes_down(admin: OKPKey) -> None:
    epochs = EpochTracker()
    store = FakeStore([activation(4, "a" * 64, admin), activation(2, "b" * 64, admin)])
    known: list[bool] = []

    async def on_known() -> None:
        known.append(True)

    floor = PolicyFloor(
        source=store, epochs=epochs, admin_keys=keys(admin), timeout_s=1.0, on_known=on_known
    )

    assert await floor.refresh() and epochs.newest == 4
    assert await floor.refresh() and epochs.newest == 4  # a store behind cannot lower it
    assert known == [True]


@pytest.mark.parametrize(
    "forged",
    ["another key", "another epoch", "not a statement", "epoch zero"],
)
async def test_a_reported_epoch_without_a_valid_admin_statement_is_not_learned(
    admin: OKPKey, forged: str
) -> None:
    intruder = generate_ed25519()
    report = {
        "another key": activation(9, "a" * 64, intruder),
        "another epoch": activation(9, "a" * 64, admin, said=2),
        "not a statement": StoreActivation(epoch=9, active="a" * 64, statement="x.y.z"),
        "epoch zero": StoreActivation(epoch=0, active="a" * 64, statement=""),
    }[forged]
    epochs = EpochTracker()
    floor = PolicyFloor(
        source=FakeStore([report]), epochs=epochs, admin_keys=keys(admin), timeout_s=1.0
    )

    assert not await floor.refresh()
    assert not epochs.floor_known and epochs.newest == 0


async def test_an_unreachable_policy_service_leaves_the_floor_unknown_then_it_is_learned(
    admin: OKPKey,
) -> None:
    epochs = EpochTracker()
    store = FakeStore([PeerUnavailable("down"), None, activation(1, "a" * 64, admin)])
    floor = PolicyFloor(source=store, epochs=epochs, admin_keys=keys(admin), timeout_s=1.0)

    assert not await floor.refresh()
    assert not epochs.floor_known
    assert await floor.refresh()  # nothing activated yet: known, at no epoch
    assert epochs.floor_known and epochs.newest == 0
    assert await floor.refresh() and epochs.newest == 1
