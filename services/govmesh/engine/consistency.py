"""Step 4 of a decision: does a peer's answer hold together.

Distrust crosses every boundary: an answer is for this request's digest,
reports every required check with a verdict that agrees with them, vouches
for the very claims policy was asked about, and comes under the newest
policy epoch the engine knows. An answer that does not is
INCONSISTENT_ANSWERS, never a reason to allow.
"""

from __future__ import annotations

from dataclasses import dataclass

from govmesh.artifacts.answers import MAX_MESSAGE_TEXT_BYTES, clip, clip_list
from govmesh.artifacts.checks import REQUIRED_CHECKS, Reason, primary_reason
from govmesh.artifacts.structs import struct_to_dict
from govmesh.engine.claims import Claimed
from govmesh.runtime.errors import IntegrityError
from govmesh.v1 import common_pb2, policy_pb2, verification_pb2

#: The failed check that stands for policy's answer, or for the policy peer's failure.
POLICY_CHECK = "policy"


@dataclass(frozen=True)
class Failure:
    """One failed check of a decision."""

    check: str
    reason: Reason
    detail: str


class Inconsistent(IntegrityError):
    """A peer's answer that does not hold together; the decision records INCONSISTENT_ANSWERS."""


def check_verification(
    answer: verification_pb2.VerifyResponse, digest: str, claimed: Claimed | None
) -> list[Failure]:
    """Step 4 for verification: the failures it reports, if its answer holds together.

    Raises Inconsistent when the answer is for another request, misses a
    required check, has a verdict that disagrees with its checks, or vouches
    for claims other than those policy was asked about.
    """
    if answer.request_digest != digest:
        raise Inconsistent("verification answered for another request")
    names = [check.name for check in answer.checks]
    if len(set(names)) != len(names):
        raise Inconsistent("verification reported a check twice")
    missing = [check.value for check in REQUIRED_CHECKS if check.value not in names]
    if missing:
        raise Inconsistent("verification did not report " + ", ".join(missing))
    failures = []
    for check in answer.checks:
        if check.verdict == common_pb2.CHECK_PASSED:
            if check.reason != common_pb2.DENY_REASON_UNSPECIFIED:
                raise Inconsistent(f"check {check.name} passed with a deny reason")
        elif check.verdict == common_pb2.CHECK_FAILED:
            if check.reason not in common_pb2.DenyReason.values() or check.reason == 0:
                raise Inconsistent(f"check {check.name} failed without a known reason")
            failures.append(Failure(check.name, check.reason, check.detail))
        else:
            raise Inconsistent(f"check {check.name} has no verdict")
    if answer.verified != (not failures):
        raise Inconsistent("verification's verdict disagrees with its checks")
    if failures:
        if answer.reason != primary_reason(f.reason for f in failures):
            raise Inconsistent("verification's reason disagrees with its checks")
        return failures
    if answer.reason != common_pb2.DENY_REASON_UNSPECIFIED:
        raise Inconsistent("verification passed with a deny reason")
    claims = answer.claims
    if claimed is None or not answer.HasField("claims") or claims.subject != claimed.subject:
        raise Inconsistent("verification vouched for another subject than policy evaluated")
    # The same sub under another issuer is another agent (DESIGN.md section 5).
    if claims.issuer != claimed.issuer:
        raise Inconsistent("verification vouched for another issuer than policy evaluated")
    if struct_to_dict(claims.env) != claimed.env:
        raise Inconsistent("verification vouched for another environment than policy evaluated")
    if struct_to_dict(claims.attribution) != claimed.attribution:
        raise Inconsistent("verification vouched for another attribution than policy evaluated")
    return []


class EpochTracker:
    """The newest policy epoch seen, and the bundle each epoch stood for.

    The floor rises from two sources: the answers of policy replicas, and the
    newest activation in the policy store, which the engine process learns
    (`learn`) before it reports SERVING and keeps current. Answers alone are
    not enough: a replica that missed an activation still answers under the
    epoch before it, and an engine that started after the activation, or has
    not yet seen an answer of the new epoch, would have nothing to refuse it
    by. So no policy answer is decided on before the store's newest
    activation has been learned once (`floor_known`).
    """

    def __init__(self) -> None:
        self.newest = 0
        self.floor_known = False
        self._versions: dict[int, str] = {}

    @classmethod
    def unsafe_without_store_floor(cls) -> EpochTracker:
        """A tracker that decides on answers without knowing the store's newest activation.

        Only for tests of the other steps: an engine built with it takes a
        stale replica's answer until it has seen a newer one.
        """
        tracker = cls()
        tracker.floor_known = True
        return tracker

    def learn(self, epoch: int, version: str) -> None:
        """The newest activation in the policy store: `version` is active at `epoch`.

        Epoch 0 (nothing activated yet) only marks the floor as known. What
        the store says an epoch's bundle is replaces what answers said.
        """
        if epoch > 0:
            self._versions[epoch] = version
            self.newest = max(self.newest, epoch)
            self._prune()
        self.floor_known = True

    def check(self, bundle: common_pb2.BundleRef) -> None:
        """Raise Inconsistent for a stale epoch or an epoch seen with another bundle."""
        if not bundle.version or bundle.epoch == 0:
            raise Inconsistent("policy answered without a bundle version and epoch")
        if bundle.epoch < self.newest:
            raise Inconsistent(
                f"policy answered under epoch {bundle.epoch}, older than {self.newest}"
            )
        known = self._versions.get(bundle.epoch)
        if known is not None and known != bundle.version:
            raise Inconsistent(f"policy replicas disagree on the bundle of epoch {bundle.epoch}")

    def record(self, bundle: common_pb2.BundleRef) -> None:
        """Remember a consistent answer's bundle."""
        self._versions.setdefault(bundle.epoch, bundle.version)
        self.newest = max(self.newest, bundle.epoch)
        self._prune()

    def _prune(self) -> None:
        # Only the newest epochs can matter again; keep the map small.
        if len(self._versions) > 64:
            for epoch in sorted(self._versions)[:-32]:
                del self._versions[epoch]


def check_policy(
    answer: policy_pb2.EvaluateResponse, digest: str, epochs: EpochTracker
) -> list[Failure]:
    """Step 4 for policy: its denial, if its answer holds together."""
    if answer.request_digest != digest:
        raise Inconsistent("policy answered for another request")
    epochs.check(answer.bundle)
    if answer.decision == common_pb2.ALLOW:
        if answer.errors:
            raise Inconsistent("policy allowed despite evaluation errors")
        epochs.record(answer.bundle)
        return []
    if answer.decision == common_pb2.DENY:
        epochs.record(answer.bundle)
        if answer.errors:
            detail = "policy evaluation failed: " + "; ".join(clip_list(answer.errors))
        elif answer.determining_policies:
            detail = "forbidden by " + ", ".join(clip_list(answer.determining_policies))
        else:
            detail = "no policy permits this request"
        return [
            Failure(POLICY_CHECK, common_pb2.POLICY_MISMATCH, clip(detail, MAX_MESSAGE_TEXT_BYTES))
        ]
    raise Inconsistent("policy answered neither ALLOW nor DENY")
