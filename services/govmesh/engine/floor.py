"""The engine's policy epoch floor, kept at the newest activation in the policy store.

The engine refuses a policy answer under an epoch older than the newest it
knows of, but answers alone cannot tell it of an activation: a replica that
missed one (its NOTIFY lost, its periodic check not yet due) still answers
under the epoch before it, and an engine that starts, or has not yet seen an
answer of the new epoch, would take that answer. So the engine asks the
policy service for the newest activation in the store (GetState, which every
replica reads from the store whatever it serves itself) before it reports
SERVING, and again every GOVMESH_POLICY_FLOOR_INTERVAL_S. Until it has
learned it once, its decisions deny.

With the policy-admin keys of the trust file (GOVMESH_TRUST_FILE), the engine
checks the admin's signed activation statement itself: a replica then cannot
raise the floor past any real epoch (which would deny everything) nor name
another bundle for an epoch. Without them it takes the replica's word, which
can only make it deny more, never allow.

The remaining risk: an activation reaches an engine within one interval,
and until then a replica that missed it can still be believed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from govmesh.artifacts.signing import AdminKeys, SignatureRejected, verify_activation
from govmesh.engine.consistency import EpochTracker
from govmesh.engine.protocols import PeerError
from govmesh.runtime.errors import IntegrityError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreActivation:
    """The newest epoch in the policy store, as a policy replica reports it."""

    epoch: int
    active: str
    #: The admin's signed activation statement of that epoch.
    statement: str


class ActivationSource(Protocol):
    """Where the newest activation is read: the policy service."""

    async def newest_activation(self, *, timeout: float) -> StoreActivation | None:
        """The store's newest activation, None before the first; raises PeerError."""
        ...


class FloorUnverified(IntegrityError):
    """A reported activation that the engine cannot take as the store's."""


class PolicyFloor:
    """Learns the newest activated epoch from the policy service and keeps it current."""

    def __init__(
        self,
        *,
        source: ActivationSource,
        epochs: EpochTracker,
        admin_keys: AdminKeys | None,
        timeout_s: float,
        on_known: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._source = source
        self._epochs = epochs
        self._keys = admin_keys
        self._timeout_s = timeout_s
        self._on_known = on_known

    @property
    def known(self) -> bool:
        return self._epochs.floor_known

    async def refresh(self) -> bool:
        """Ask once; True when the floor is known afterwards.

        1. Ask the policy service for the newest activation in the store.
        2. With the admin keys: the statement verifies under a trusted admin
           key and names exactly that epoch and bundle.
        3. Raise the floor to it (it never goes down).
        """
        was_known = self.known
        try:
            # 1. Ask.
            activation = await self._source.newest_activation(timeout=self._timeout_s)
            # 2. Verify.
            if activation is not None:
                self._verify(activation)
        except (PeerError, TimeoutError) as exc:
            logger.warning("cannot learn the newest policy epoch: %s", exc)
            return was_known
        except FloorUnverified as exc:
            logger.error("refusing the newest policy epoch reported: %s", exc)
            return was_known
        # 3. Raise.
        if activation is None:
            self._epochs.learn(0, "")
        else:
            if activation.epoch > self._epochs.newest:
                logger.info("the newest activated policy epoch is %d", activation.epoch)
            self._epochs.learn(activation.epoch, activation.active)
        if not was_known and self._on_known is not None:
            await self._on_known()
        return True

    def _verify(self, activation: StoreActivation) -> None:
        if activation.epoch <= 0 or not activation.active:
            raise FloorUnverified("an activation without an epoch and a bundle")
        if self._keys is None:
            return
        try:
            statement = verify_activation(activation.statement, self._keys)
        except SignatureRejected as exc:
            raise FloorUnverified(f"epoch {activation.epoch}: {exc}") from None
        said = statement.activation
        if (said.epoch, said.active) != (activation.epoch, activation.active):
            raise FloorUnverified(
                f"epoch {activation.epoch} is not what its signed statement says "
                f"(epoch {said.epoch}, bundle {said.active})"
            )

    async def run(self, *, interval_s: float) -> None:
        """Refresh every `interval_s` until cancelled."""
        while True:
            try:
                await self.refresh()
            except Exception:  # the follower must outlive any one refresh
                logger.exception("learning the newest policy epoch failed")
            await asyncio.sleep(interval_s)
