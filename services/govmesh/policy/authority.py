"""The policy authority: the active state, kept consistent with the store.

One replica holds one immutable Snapshot (epoch, active bundle, shadow
bundle) and replaces it by a single assignment, so every evaluation sees one
whole state, never a mix. A replica learns of a new epoch from a Postgres
NOTIFY, or at the latest from its periodic check, verifies it (the admin's
signed statement, each bundle's hash and signature), compiles it and only
then swaps. A replica that cannot load the newest epoch stops answering
rather than answer under a state that is no longer the active one.

The newest epoch a replica has verified, its epoch floor, is also kept in a
state file on its disk (see floor.py): a store that goes back below the
floor, even while the replica was down, is refused, never served.

Staleness is bounded. A replica that cannot reach its store cannot hear of a
new epoch either (an emergency freeze, say), so the epoch it serves is only
good while the store keeps confirming it: after STALE_AFTER_REFRESHES refresh
intervals without a confirmation, or as soon as it knows of a newer epoch it
cannot load, the replica stops answering (UNAVAILABLE, health NOT_SERVING)
and serves again on its own once the store confirms an epoch. The check runs
on the refresh loop, never per request, so a healthy replica under load
confirms its epoch every interval and never flaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from joserfc.jwk import OKPKey

from govmesh.artifacts.signing import (
    ACTIVATION_MAX_AGE_S,
    ACTIVATION_MAX_FUTURE_S,
    AdminKeys,
    SignatureRejected,
    SignedActivation,
    key_id,
    sign_activation,
    sign_bundle,
    verify_activation,
    verify_bundle_signature,
)
from govmesh.policy.bundle import (
    BundleRejected,
    BundleSource,
    CompiledBundle,
    compile_bundle,
    is_version,
    parse_bundle_content,
)
from govmesh.policy.core import PolicyDecision, PolicyRequest, evaluate, plain_json
from govmesh.policy.floor import EpochFloor
from govmesh.policy.shadow import ShadowRecorder
from govmesh.policy.store import (
    EpochConflict,
    EpochListener,
    EpochRecord,
    PolicyStore,
    ShadowRecord,
    StoredBundle,
    UnknownBundle,
)
from govmesh.policy.transitions import AlreadyInRole, activate, verify_stored_bundle
from govmesh.runtime.errors import ConfigurationError, Unavailable

logger = logging.getLogger(__name__)

#: How many compiled bundles a replica keeps beyond the ones it serves.
_COMPILED_SPARE = 2
_BOOTSTRAP_ATTEMPTS = 5
#: Refresh intervals without the store confirming the served epoch before a replica stops.
STALE_AFTER_REFRESHES = 3
#: ...but never sooner than this: sub-second intervals must not turn a slow query into an outage.
MIN_STALE_AFTER_S = 1.0


def staleness_limit(interval_s: float) -> float:
    """How long an epoch may go unconfirmed by the store when it is checked every `interval_s`."""
    return max(STALE_AFTER_REFRESHES * interval_s, MIN_STALE_AFTER_S)


class NotReady(Unavailable):
    """This replica has no valid bundle to answer with; the message says why."""


@dataclass(frozen=True)
class Snapshot:
    """One whole state: what is enforced and what is observed, at one epoch."""

    epoch: int
    active: CompiledBundle
    shadow: CompiledBundle | None


@dataclass(frozen=True)
class Answer:
    """The decisions for one request, and the snapshot they were made under."""

    snapshot: Snapshot
    active: PolicyDecision
    shadow: PolicyDecision | None


@dataclass(frozen=True)
class Published:
    """What a publish did."""

    bundle: CompiledBundle
    stored: StoredBundle
    created: bool
    epoch: EpochRecord | None


def _decision_name(decision: PolicyDecision) -> str:
    return "ALLOW" if decision.allowed else "DENY"


class Authority:
    """Holds the snapshot, evaluates under it, and changes the state through the store."""

    def __init__(
        self,
        *,
        store: PolicyStore,
        admin_keys: AdminKeys,
        floor: EpochFloor,
        recorder: ShadowRecorder | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        on_ready: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._keys = admin_keys
        self._recorder = recorder
        self._clock = clock
        self._monotonic = monotonic
        #: When (monotonic) the store last said that the served epoch is the newest.
        self._confirmed_at: float | None = None
        self._on_ready = on_ready
        self._snapshot: Snapshot | None = None
        self._floor = floor
        # The epoch floor; raises FloorError (a start-up error) when the state file is unusable.
        self._floor_epoch = floor.read()
        if self._floor_epoch:
            logger.info(
                "the newest policy epoch verified here is %d (%s)",
                self._floor_epoch,
                floor.state_file,
            )
        self._failed_epoch: int | None = None
        self._compiled: dict[str, CompiledBundle] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self.problem = "no policy bundle has been activated yet"

    # --- answering --------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot | None:
        """The state this replica answers under, or None."""
        return self._snapshot

    @property
    def ready(self) -> bool:
        return self._snapshot is not None

    def evaluate(
        self,
        request: PolicyRequest,
        *,
        request_digest: str = "",
        decision_id: str = "",
    ) -> Answer:
        """Decide `request` under the current snapshot; the shadow is evaluated, never enforced.

        Raises NotReady when there is no snapshot: nothing is ever answered
        without a valid bundle.
        """
        snapshot = self._snapshot
        if snapshot is None:
            raise NotReady(self.problem)
        active = evaluate(snapshot.active, request)
        shadow = None
        if snapshot.shadow is not None:
            try:
                shadow = evaluate(snapshot.shadow, request)
                if self._recorder is not None:
                    disagreement = None
                    if shadow.allowed != active.allowed:
                        disagreement = self._disagreement(
                            snapshot, request, request_digest, decision_id, active, shadow
                        )
                    self._recorder.observe(snapshot.epoch, disagreement)
            except Exception:  # the shadow must never change the active answer
                logger.exception("shadow evaluation failed")
        return Answer(snapshot, active, shadow)

    @staticmethod
    def _disagreement(
        snapshot: Snapshot,
        request: PolicyRequest,
        request_digest: str,
        decision_id: str,
        active: PolicyDecision,
        shadow: PolicyDecision,
    ) -> ShadowRecord:
        return ShadowRecord(
            epoch=snapshot.epoch,
            request_digest=request_digest,
            decision_id=decision_id,
            principal=request.principal,
            issuer=request.issuer,
            action=request.action,
            resource=request.resource,
            context=plain_json(request.context),
            active_decision=_decision_name(active),
            active_determining=active.determining,
            active_errors=active.errors,
            shadow_decision=_decision_name(shadow),
            shadow_determining=shadow.determining,
            shadow_errors=shadow.errors,
        )

    # --- following the store ----------------------------------------------------------

    def wake(self) -> None:
        """Ask for a refresh now (a NOTIFY arrived)."""
        self._wake.set()

    async def refresh(self) -> None:
        """Load the newest epoch if it is newer than the one served.

        A store that cannot be reached leaves the snapshot as it is, but
        unconfirmed: `enforce_freshness` stops serving it once that lasts.
        """
        async with self._lock:
            asked = self._monotonic()
            try:
                record = await self._store.current()
            except Exception as exc:
                logger.warning("cannot read the active policy epoch: %s", exc)
                return
            await self._follow(record, asked)

    async def enforce_freshness(self, limit_s: float) -> None:
        """Stop answering when the store has not confirmed the served epoch for `limit_s`."""
        snapshot = self._snapshot
        if snapshot is None or self._confirmed_at is None:
            return
        age = self._monotonic() - self._confirmed_at
        if age > limit_s:
            await self._fail(
                f"the policy store has not confirmed epoch {snapshot.epoch} for {age:.1f} s "
                f"(at most {limit_s:g} s): a newer epoch may be active"
            )

    async def _follow(self, record: EpochRecord | None, asked: float) -> None:
        current = self._snapshot
        if record is None:
            if self._floor_epoch:
                await self._fail(
                    f"the store has no policy epoch, but epoch {self._floor_epoch} was "
                    f"verified here{self._floor_hint()}"
                )
            return
        if current is not None and record.epoch == current.epoch:
            self._confirmed_at = asked
            return
        if record.epoch < self._floor_epoch:
            await self._fail(
                f"the store went back from epoch {self._floor_epoch} to {record.epoch}; "
                f"refusing to serve an older state{self._floor_hint()}"
            )
            return
        if record.epoch == self._failed_epoch:
            return
        try:
            snapshot = await self._load(record)
        except (BundleRejected, SignatureRejected, UnknownBundle) as exc:
            self._failed_epoch = record.epoch
            self._floor_epoch = max(self._floor_epoch, record.epoch)
            await self._fail(f"cannot load policy epoch {record.epoch}: {exc}")
            return
        except Exception as exc:
            # Perhaps passing (the store dropped a query): tried again at the next refresh.
            # Until then the served epoch is known to be replaced, so it is not served.
            await self._fail(f"cannot load policy epoch {record.epoch} yet: {exc}")
            return
        self._confirmed_at = asked
        await self._swap(snapshot)

    def _floor_hint(self) -> str:
        return (
            f" (the newest epoch verified here is recorded in {self._floor.state_file}: activate a "
            f"new epoch of at least {self._floor_epoch}, or restore the missing ones; remove "
            "that file only if the store was rolled back on purpose)"
        )

    async def _load(self, record: EpochRecord) -> Snapshot:
        """The snapshot of `record`, verified.

        1. An admin signed the statement, and it says what the row says.
        2. The epoch floor is raised to it in the state file, before it can be served.
        3. Every bundle it names verifies and compiles.
        """
        # 1. The statement.
        statement = verify_activation(record.statement, self._keys)
        if statement.activation != record.activation:
            raise SignatureRejected(
                f"epoch {record.epoch} in the store is not what its signed statement says"
            )
        # 2. The epoch floor.
        if record.epoch > self._floor_epoch:
            try:
                await asyncio.to_thread(self._floor.raise_to, record.epoch, record.active_version)
            except Exception as exc:
                raise OSError(
                    f"cannot record epoch {record.epoch} in {self._floor.state_file}: {exc}"
                ) from None
            self._floor_epoch = record.epoch
        # 3. The bundles.
        active = await self._bundle(record.active_version)
        shadow = await self._bundle(record.shadow_version) if record.shadow_version else None
        return Snapshot(record.epoch, active, shadow)

    async def _swap(self, snapshot: Snapshot) -> None:
        was_ready = self.ready
        self._snapshot = snapshot
        self._floor_epoch = max(self._floor_epoch, snapshot.epoch)
        self._failed_epoch = None
        self.problem = ""
        self._prune()
        logger.info(
            "serving policy epoch %d",
            snapshot.epoch,
            extra={
                "epoch": snapshot.epoch,
                "active": snapshot.active.version,
                "shadow": snapshot.shadow.version if snapshot.shadow else None,
                "policies": len(snapshot.active.policies),
            },
        )
        if not was_ready and self._on_ready is not None:
            await self._on_ready(True)

    async def _fail(self, problem: str) -> None:
        was_ready = self.ready
        self._snapshot = None
        self.problem = problem
        logger.error("not serving: %s", problem)
        if was_ready and self._on_ready is not None:
            await self._on_ready(False)

    def _prune(self) -> None:
        snapshot = self._snapshot
        keep = set()
        if snapshot is not None:
            keep.add(snapshot.active.version)
            if snapshot.shadow is not None:
                keep.add(snapshot.shadow.version)
        spare = [v for v in self._compiled if v not in keep]
        for version in spare[: max(0, len(spare) - _COMPILED_SPARE)]:
            del self._compiled[version]

    async def compiled(self, version: str) -> CompiledBundle:
        """The compiled bundle of `version`, verified as a replica loads it."""
        return await self._bundle(version)

    async def _bundle(self, version: str) -> CompiledBundle:
        """The compiled bundle of `version`, verified from the store unless already compiled."""
        compiled = self._compiled.get(version)
        if compiled is not None:
            return compiled
        stored = await self._store.bundle(version)
        if stored is None:
            raise UnknownBundle(f"no bundle has version {version}")
        compiled = await asyncio.to_thread(self._verify_and_compile, stored)
        self._compiled[version] = compiled
        self._prune()
        return compiled

    def _verify_and_compile(self, stored: StoredBundle) -> CompiledBundle:
        return compile_bundle(
            verify_stored_bundle(stored.content, stored.signature, stored.version, self._keys)
        )

    async def run(self, *, listener: EpochListener | None, interval_s: float) -> None:
        """Follow the store until cancelled: on every NOTIFY, and every `interval_s` regardless.

        Staleness is checked every `interval_s` too, also while a refresh
        hangs on a store that does not answer.
        """
        limit_s = staleness_limit(interval_s)
        listening = asyncio.create_task(listener.run()) if listener is not None else None
        refreshing: asyncio.Task[None] | None = None
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), interval_s)
                self._wake.clear()
                refreshing = asyncio.create_task(self.refresh())
                while True:
                    done, _ = await asyncio.wait({refreshing}, timeout=interval_s)
                    await self.enforce_freshness(limit_s)
                    if done:
                        break
                if refreshing.exception() is not None:
                    logger.error("policy refresh failed", exc_info=refreshing.exception())
        finally:
            for task in (refreshing, listening):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    # --- changing the state -----------------------------------------------------------

    def _fresh(self, statement: SignedActivation) -> None:
        age = self._clock() - statement.issued_at
        if age > ACTIVATION_MAX_AGE_S or -age > ACTIVATION_MAX_FUTURE_S:
            raise SignatureRejected(
                f"activation statement issued {int(age)} s ago; it must be fresh "
                f"(at most {ACTIVATION_MAX_AGE_S} s old)"
            )

    def _statement(self, token: str) -> SignedActivation:
        statement = verify_activation(token, self._keys)
        self._fresh(statement)
        for version in (statement.activation.active, statement.activation.shadow):
            if version is not None and not is_version(version):
                raise UnknownBundle(f"{version!r} is not a full bundle version")
        return statement

    async def publish(
        self, content: bytes, signature: str, activation: str = "", *, note: str = ""
    ) -> Published:
        """Publish a signed bundle, and activate it when `activation` says so, atomically.

        1. The content is a canonical bundle document.
        2. A trusted admin signed exactly its version.
        3. The activation statement, if any, is trusted, fresh and names this bundle.
        4. The bundle compiles: parses, is not empty, holds no template,
           validates against its schema.
        5. Every other bundle the statement names loads here.
        6. Bundle and epoch are committed in one transaction.
        7. This replica swaps to the new epoch before answering.

        Any refusal leaves the store and the active state untouched.
        """
        # 1. Content.
        source = parse_bundle_content(content)
        version = source.version
        # 2. Signature.
        kid = verify_bundle_signature(signature, version, self._keys)
        # 3. Statement.
        statement = self._statement(activation) if activation else None
        if statement is not None and version not in (
            statement.activation.active,
            statement.activation.shadow,
        ):
            raise SignatureRejected("the activation statement does not name the bundle published")
        # 4. Compile.
        compiled = await asyncio.to_thread(compile_bundle, source)
        # 5. The rest of the statement.
        if statement is not None:
            for other in (statement.activation.active, statement.activation.shadow):
                if other is not None and other != version:
                    await self._bundle(other)
        stored = StoredBundle(
            version=version,
            content=content,
            signature=signature,
            signer_kid=kid,
            policy_count=len(compiled.policies),
            has_schema=source.schema is not None,
            metadata=dict(source.metadata),
        )
        # 6. Commit.
        created, epoch = await self._store.commit(bundle=stored, activation=statement, note=note)
        self._compiled[version] = compiled
        # 7. Swap here at once; the other replicas follow the NOTIFY.
        if epoch is not None:
            await self.refresh()
        return Published(compiled, stored, created, epoch)

    async def activate(self, activation: str, *, note: str = "") -> EpochRecord:
        """Make the state a signed statement names current (activate, roll back, set shadow).

        Every bundle it names must load here first, so that a statement
        naming a bundle this replica cannot verify changes nothing.
        """
        statement = self._statement(activation)
        for version in (statement.activation.active, statement.activation.shadow):
            if version is not None:
                await self._bundle(version)
        _, epoch = await self._store.commit(activation=statement, note=note)
        assert epoch is not None
        await self.refresh()
        return epoch

    async def bootstrap(self, source: BundleSource, key: OKPKey, *, note: str = "start") -> None:
        """Sign `source` with `key` and activate it, unless it is already the active bundle.

        What `govmesh up --policies` and GOVMESH_POLICY_PATH ask for: the
        folder given at start is what is enforced. The current shadow, if
        any, stays shadow. Replicas starting together race for the next
        epoch; the losers find the bundle active and do nothing.
        """
        if key_id(key) not in self._keys.kids:
            raise ConfigurationError(
                f"the policy-admin key {key_id(key)} is not trusted by [policy] admin_jwks "
                "of the trust file"
            )
        version = source.version
        for _ in range(_BOOTSTRAP_ATTEMPTS):
            current = await self._store.current()
            try:
                activation = activate(current.activation if current is not None else None, version)
            except AlreadyInRole:
                assert current is not None
                logger.info("policy bundle %s is active at epoch %d", version, current.epoch)
                await self.refresh()
                return
            try:
                await self.publish(
                    source.canonical(),
                    sign_bundle(version, key, clock=self._clock),
                    sign_activation(activation, key, clock=self._clock),
                    note=note,
                )
            except EpochConflict:
                continue
            return
        raise ConfigurationError("could not activate the start-up policies: the epoch kept moving")

    def describe(self) -> Mapping[str, Any]:
        """What this replica serves, for logs and GetState."""
        snapshot = self._snapshot
        if snapshot is None:
            return {"ready": False, "problem": self.problem}
        return {
            "ready": True,
            "epoch": snapshot.epoch,
            "active": snapshot.active.version,
            "shadow": snapshot.shadow.version if snapshot.shadow else None,
        }
