"""What verification is asked, what each check finds, and what it answers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from govmesh.artifacts.checks import REQUIRED_CHECKS, Check, Reason, primary_reason
from govmesh.v1 import common_pb2

PASSED: Reason = common_pb2.DENY_REASON_UNSPECIFIED
MISSING: Reason = common_pb2.MISSING_AUTHORIZATION
INVALID: Reason = common_pb2.INVALID_VERIFICATION
EXPIRED: Reason = common_pb2.EXPIRED_AUTHORIZATION
REPLAYED: Reason = common_pb2.REPLAY_DETECTED
ENV_MISMATCH: Reason = common_pb2.ENVIRONMENT_MISMATCH
RUNTIME: Reason = common_pb2.RUNTIME_INTEGRITY_FAILURE
OUT_OF_SCOPE: Reason = common_pb2.POLICY_MISMATCH
MALFORMED: Reason = common_pb2.MALFORMED_REQUEST
UNAVAILABLE: Reason = common_pb2.PEER_UNAVAILABLE
TIMEOUT: Reason = common_pb2.PEER_TIMEOUT
INTERNAL: Reason = common_pb2.INTERNAL_ERROR

#: One thing a check found wrong: its deny reason and a detail for people.
Problem = tuple[Reason, str]


@dataclass(frozen=True)
class VerificationInput:
    """What verification is asked about.

    `context` is the request context as JSON, or None when the request's
    context could not be read as JSON.
    """

    request_digest: str
    action: str
    resource: str
    context: Mapping[str, Any] | None
    mandate: str
    proof: str
    attestation: str = ""


@dataclass(frozen=True)
class CheckOutcome:
    """One check's verdict; a failed check carries its deny reason."""

    check: Check
    passed: bool
    reason: Reason = PASSED
    detail: str = ""


class Verdict(NamedTuple):
    """What one step found about its check: it held when nothing was found wrong.

    A step returns its check's Verdict once it has evaluated it; a check no
    step returned a Verdict for fails (see `outcomes`), so nothing passes by
    default. (A named tuple: one is made per check per request, and it is the
    cheapest immutable record to make.)
    """

    check: Check
    problems: tuple[Problem, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.problems

    def outcome(self) -> CheckOutcome:
        """The CheckOutcome: the primary reason of every problem found, their details joined."""
        if self.problems:
            reason = primary_reason(r for r, _ in self.problems)
            return CheckOutcome(self.check, False, reason, "; ".join(d for _, d in self.problems))
        return CheckOutcome(self.check, True)


def outcomes(verdicts: tuple[Verdict, ...]) -> tuple[CheckOutcome, ...]:
    """Every required check's outcome, in REQUIRED_CHECKS order.

    A check that no verdict speaks for was never evaluated: it fails with
    INTERNAL_ERROR. Two verdicts for one check are a fault in the sequence.
    """
    by_check = {v.check: v for v in verdicts}
    if len(by_check) != len(verdicts):
        raise ValueError("a check was evaluated twice")
    return tuple(
        by_check[c].outcome()
        if c in by_check
        else CheckOutcome(c, False, INTERNAL, "not evaluated")
        for c in REQUIRED_CHECKS
    )


@dataclass(frozen=True)
class VerifiedClaims:
    """What verified artifacts say, as the engine needs it."""

    issuer: str
    subject: str
    mandate_id: str
    cnf_jkt: str
    env: Mapping[str, Any]
    attribution: Mapping[str, Any]
    mandate_expires_at: int
    proof_id: str
    attestor: str = ""
    measurements: tuple[str, ...] = ()


@dataclass(frozen=True)
class VerificationResult:
    """Every required check's outcome, in REQUIRED_CHECKS order, and the claims if verified."""

    request_digest: str
    outcomes: tuple[CheckOutcome, ...]
    claims: VerifiedClaims | None = None
    trust_version: str = ""

    def __post_init__(self) -> None:
        if tuple(o.check for o in self.outcomes) != REQUIRED_CHECKS:
            raise ValueError("a result reports every required check exactly once, in order")
        for outcome in self.outcomes:
            if outcome.passed != (outcome.reason == PASSED):
                raise ValueError(f"check {outcome.check} has a verdict without its reason")
        if self.claims is not None and not self.verified:
            raise ValueError("claims are returned only when every check passed")

    @property
    def verified(self) -> bool:
        """True only when every required check passed."""
        return all(outcome.passed for outcome in self.outcomes)

    @property
    def failed(self) -> tuple[CheckOutcome, ...]:
        """The failed checks, in REQUIRED_CHECKS order."""
        return tuple(o for o in self.outcomes if not o.passed)

    @property
    def reason(self) -> Reason:
        """The primary deny reason; DENY_REASON_UNSPECIFIED when verified."""
        failed = self.failed
        if not failed:
            return PASSED
        return primary_reason(o.reason for o in failed)

    @classmethod
    def internal_error(cls, digest: str, detail: str) -> VerificationResult:
        """Every check failed with INTERNAL_ERROR: the answer when verification itself broke."""
        return cls(
            request_digest=digest,
            outcomes=tuple(CheckOutcome(c, False, INTERNAL, detail) for c in REQUIRED_CHECKS),
        )
