"""The decision: pure logic over injected peers, no gRPC.

`Engine.authorize` is the fail-closed path of DESIGN.md section 2. Every step
is numbered here and at the place it happens in the code.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from opentelemetry import trace

from govmesh.artifacts.answers import MAX_MESSAGE_TEXT_BYTES, clip, clip_list
from govmesh.artifacts.canonical import (
    SAFE_INTEGER,
    CanonicalizationError,
    b64url,
    canonical_json,
    json_depth,
    request_digest,
)
from govmesh.artifacts.checks import REQUIRED_CHECKS, Reason, primary_reason
from govmesh.artifacts.entries import entry_problem, text_problem
from govmesh.artifacts.jws import TokenError, parse_compact
from govmesh.artifacts.names import (
    MAX_ACTION_CHARS,
    MAX_RESOURCE_CHARS,
    InvalidName,
    check_action,
    check_resource,
)
from govmesh.artifacts.structs import struct_to_dict
from govmesh.engine.breaker import CircuitBreaker, Permit, StateHook
from govmesh.v1 import (
    common_pb2,
    engine_pb2,
    policy_pb2,
    verification_pb2,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_CONTEXT_BYTES = 16 * 1024
MAX_CONTEXT_DEPTH = 16
MAX_ARTIFACT_CHARS = 16 * 1024
#: SPIFFE IDs are at most 2048 bytes; a longer subject is not one govmesh serves.
MAX_SUBJECT_CHARS = 2048
#: An issuer is a URL from the trust file; one this long is none of them.
MAX_ISSUER_CHARS = 2048

#: The failed check that stands for policy's answer, or for the policy peer's failure.
POLICY_CHECK = "policy"


# --- what the engine talks to ------------------------------------------------


class PeerError(Exception):
    """A peer gave no usable answer."""


class PeerTimeout(PeerError):
    """A peer missed its deadline."""


class PeerUnavailable(PeerError):
    """A peer could not be reached or failed."""


class PeerRejected(PeerUnavailable):
    """A peer refused or could not handle one call as a whole, while healthy.

    A message too large, a batch it finds invalid, an error while handling
    it: something in that call, not the peer's health. The batcher asks
    again for the call's requests in smaller batches; a single request so
    refused is PEER_UNAVAILABLE like any other.
    """


class VerificationPeer(Protocol):
    """The verification service, as the engine sees it."""

    async def verify(
        self, request: verification_pb2.VerifyRequest, *, timeout: float
    ) -> verification_pb2.VerifyResponse: ...


class PolicyPeer(Protocol):
    """The policy authority, as the engine sees it."""

    async def evaluate(
        self, request: policy_pb2.EvaluateRequest, *, timeout: float
    ) -> policy_pb2.EvaluateResponse: ...


class LineageSink(Protocol):
    """Where decisions are recorded; returns only once the entry is committed."""

    async def append(
        self, entry: bytes, decision_id: str, *, timeout: float
    ) -> common_pb2.LineageReceipt: ...


class DenySpool(Protocol):
    """Durable local storage for denies that lineage could not take in time."""

    async def put(self, entry: bytes, decision_id: str) -> None: ...


class GrantSigner(Protocol):
    """Signs the execution grant of an ALLOW."""

    def sign(self, claims: Mapping[str, Any]) -> str: ...


# --- the parts of a decision -------------------------------------------------


class MalformedRequest(ValueError):
    """A request that cannot be decided on; answered DENY MALFORMED_REQUEST."""


@dataclass(frozen=True)
class UnreadableRequest:
    """Bytes that did not parse as an AuthorizeRequest; decided like any malformed request."""

    detail: str


@dataclass(frozen=True)
class Failure:
    """One failed check of a decision."""

    check: str
    reason: Reason
    detail: str


@dataclass(frozen=True)
class Claimed:
    """What the artifacts say before verification: the input policy is asked about.

    Never trusted on its own: a decision uses it only when verification
    reports the same subject, issuer, environment and attribution from
    verified artifacts.
    """

    subject: str
    issuer: str
    env: dict[str, Any]
    attribution: dict[str, Any]


@dataclass(frozen=True)
class DecisionConfig:
    """Deadlines, in seconds."""

    verification_timeout: float
    policy_timeout: float
    lineage_timeout: float
    budget: float
    #: How long a deny that lineage could not take may wait to be durable in
    #: the spool before it is answered anyway. Past the budget on purpose: a
    #: late DENY harms nobody, an unrecorded one breaks "nothing lost".
    spool_timeout: float = 2.0
    #: Consecutive failed calls (timeouts, unreachable, unusable answers) after
    #: which a peer's circuit breaker opens and its calls are refused at once.
    breaker_failures: int = 5
    #: How long an open breaker refuses calls before it lets one probe through.
    breaker_cool_down: float = 1.0


@dataclass
class _Decision:
    decision_id: str
    seq: int
    digest: str
    started: float
    failures: list[Failure] = field(default_factory=list)
    claimed: Claimed | None = None
    verified: verification_pb2.VerifiedClaims | None = None
    trust_version: str = ""
    policy: policy_pb2.EvaluateResponse | None = None

    def fail(self, check: str, reason: Reason, detail: str) -> None:
        self.failures.append(Failure(check, reason, detail))


class _Inconsistent(Exception):
    pass


def _loggable(value: Any) -> Any:
    # Strings with lone surrogates become their backslash escapes; integers
    # beyond I-JSON become strings: a form canonical JSON always accepts.
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return value if isinstance(value, int) and abs(value) <= SAFE_INTEGER else str(value)
    if isinstance(value, dict):
        return {_loggable(k): _loggable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_loggable(v) for v in value]
    return str(value)


def _entry_bytes(entry: dict[str, Any]) -> bytes:
    """The entry as canonical JSON; a value that has no canonical form is escaped, not fatal."""
    try:
        return canonical_json(entry)
    except CanonicalizationError:
        logger.warning("entry holds values without a canonical form; recording them escaped")
        return canonical_json(_loggable(entry))


def _log_spool_failure(decision_id: str) -> Callable[[asyncio.Future[None]], None]:
    def report(write: asyncio.Future[None]) -> None:
        if not write.cancelled() and write.exception() is not None:
            logger.error(
                "deny could not be spooled: %s",
                write.exception(),
                extra={"decision_id": decision_id},
            )

    return report


def _trace_ids() -> dict[str, str | None]:
    span = trace.get_current_span().get_span_context()
    if not span.is_valid:
        return {"trace_id": None, "span_id": None}
    return {"trace_id": f"{span.trace_id:032x}", "span_id": f"{span.span_id:016x}"}


def validate(request: engine_pb2.AuthorizeRequest) -> dict[str, Any]:
    """Check names, sizes and required fields; return the context as plain JSON.

    Raises MalformedRequest with the first problem found.
    """
    # Names another spelling could stand for are refused here, before anyone
    # is asked: the grammar is govmesh.artifacts.names, shared by every reader.
    try:
        check_action(request.action)
        check_resource(request.resource)
    except InvalidName as exc:
        raise MalformedRequest(str(exc)) from None
    for name in ("mandate", "proof", "attestation"):
        value = getattr(request, name)
        if len(value) > MAX_ARTIFACT_CHARS:
            raise MalformedRequest(f"{name} is longer than {MAX_ARTIFACT_CHARS} characters")
        if value and not value.isascii():
            raise MalformedRequest(f"{name} is not a compact JWS")
    if request.context.ByteSize() > MAX_CONTEXT_BYTES:
        raise MalformedRequest(f"context is larger than {MAX_CONTEXT_BYTES} bytes")
    try:
        context = struct_to_dict(request.context)
    except (ValueError, TypeError) as exc:
        raise MalformedRequest(f"context is not JSON: {exc}") from None
    if json_depth(context, MAX_CONTEXT_DEPTH) > MAX_CONTEXT_DEPTH:
        raise MalformedRequest(f"context is nested deeper than {MAX_CONTEXT_DEPTH}")
    return context


def _jws_payload(token: str) -> Mapping[str, Any] | None:
    # The one strict reader verification uses too: claims it would refuse to
    # read (duplicate members, another spelling of a segment, numbers beyond
    # I-JSON, deep nesting) are never shown to policy.
    try:
        return parse_compact(token).payload
    except TokenError:
        return None


def claimed_inputs(request: engine_pb2.AuthorizeRequest) -> Claimed | None:
    """The subject, issuer, attested environment and attribution the artifacts claim.

    None when the mandate is absent or unreadable, or an attestation is
    present but unreadable: policy is then not asked, and the decision cannot
    be an ALLOW.
    """
    mandate = _jws_payload(request.mandate) if request.mandate else None
    if mandate is None or not all(
        isinstance(mandate.get(name), str) and mandate[name] for name in ("sub", "iss")
    ):
        return None
    attribution = mandate.get("att", {})
    if not isinstance(attribution, dict):
        attribution = {}
    env: dict[str, Any] = {}
    if request.attestation:
        attestation = _jws_payload(request.attestation)
        if attestation is None:
            return None  # an attestation verification would not read is not an absent one
        observed = attestation.get("env")
        if isinstance(observed, dict):
            env = observed
    claimed = Claimed(
        subject=mandate["sub"], issuer=mandate["iss"], env=env, attribution=attribution
    )
    if len(claimed.subject) > MAX_SUBJECT_CHARS or len(claimed.issuer) > MAX_ISSUER_CHARS:
        return None
    try:
        # What cannot be canonical JSON (lone surrogates, integers past 2^53)
        # can neither reach policy as a Struct nor the log as an entry.
        canonical_json(
            {"sub": claimed.subject, "iss": claimed.issuer, "env": env, "att": attribution}
        )
    except CanonicalizationError:
        return None
    return claimed


def check_verification(
    answer: verification_pb2.VerifyResponse, digest: str, claimed: Claimed | None
) -> list[Failure]:
    """Step 4 for verification: the failures it reports, if its answer holds together.

    Raises _Inconsistent when the answer is for another request, misses a
    required check, has a verdict that disagrees with its checks, or vouches
    for claims other than those policy was asked about.
    """
    if answer.request_digest != digest:
        raise _Inconsistent("verification answered for another request")
    names = [check.name for check in answer.checks]
    if len(set(names)) != len(names):
        raise _Inconsistent("verification reported a check twice")
    missing = [check.value for check in REQUIRED_CHECKS if check.value not in names]
    if missing:
        raise _Inconsistent("verification did not report " + ", ".join(missing))
    failures = []
    for check in answer.checks:
        if check.verdict == common_pb2.CHECK_PASSED:
            if check.reason != common_pb2.DENY_REASON_UNSPECIFIED:
                raise _Inconsistent(f"check {check.name} passed with a deny reason")
        elif check.verdict == common_pb2.CHECK_FAILED:
            if check.reason not in common_pb2.DenyReason.values() or check.reason == 0:
                raise _Inconsistent(f"check {check.name} failed without a known reason")
            failures.append(Failure(check.name, check.reason, check.detail))
        else:
            raise _Inconsistent(f"check {check.name} has no verdict")
    if answer.verified != (not failures):
        raise _Inconsistent("verification's verdict disagrees with its checks")
    if failures:
        if answer.reason != primary_reason(f.reason for f in failures):
            raise _Inconsistent("verification's reason disagrees with its checks")
        return failures
    if answer.reason != common_pb2.DENY_REASON_UNSPECIFIED:
        raise _Inconsistent("verification passed with a deny reason")
    claims = answer.claims
    if claimed is None or not answer.HasField("claims") or claims.subject != claimed.subject:
        raise _Inconsistent("verification vouched for another subject than policy evaluated")
    # The same sub under another issuer is another agent (DESIGN.md section 5).
    if claims.issuer != claimed.issuer:
        raise _Inconsistent("verification vouched for another issuer than policy evaluated")
    if struct_to_dict(claims.env) != claimed.env:
        raise _Inconsistent("verification vouched for another environment than policy evaluated")
    if struct_to_dict(claims.attribution) != claimed.attribution:
        raise _Inconsistent("verification vouched for another attribution than policy evaluated")
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
        """Raise _Inconsistent for a stale epoch or an epoch seen with another bundle."""
        if not bundle.version or bundle.epoch == 0:
            raise _Inconsistent("policy answered without a bundle version and epoch")
        if bundle.epoch < self.newest:
            raise _Inconsistent(
                f"policy answered under epoch {bundle.epoch}, older than {self.newest}"
            )
        known = self._versions.get(bundle.epoch)
        if known is not None and known != bundle.version:
            raise _Inconsistent(f"policy replicas disagree on the bundle of epoch {bundle.epoch}")

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
        raise _Inconsistent("policy answered for another request")
    epochs.check(answer.bundle)
    if answer.decision == common_pb2.ALLOW:
        if answer.errors:
            raise _Inconsistent("policy allowed despite evaluation errors")
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
    raise _Inconsistent("policy answered neither ALLOW nor DENY")


# --- the engine ----------------------------------------------------------------


class Engine:
    """Decides Authorize requests. Stateless but for counters and the newest epoch."""

    def __init__(
        self,
        *,
        verification: VerificationPeer,
        policy: PolicyPeer,
        lineage: LineageSink,
        spool: DenySpool,
        grants: GrantSigner,
        config: DecisionConfig,
        engine_id: str,
        epochs: EpochTracker,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        on_breaker_change: StateHook | None = None,
    ) -> None:
        # Every entry carries the engine id: one lineage would refuse would
        # make every decision of this engine unrecordable.
        problem = text_problem(engine_id) if engine_id else "is empty"
        if problem is not None:
            raise ValueError(f"engine id {engine_id!r} {problem}")
        self._verification = verification
        self._policy = policy
        self._lineage = lineage
        self._spool = spool
        self._grants = grants
        self._config = config
        self._engine_id = engine_id
        self._clock = clock
        self._monotonic = monotonic
        self._sequence = itertools.count()
        self.epochs = epochs
        #: One circuit breaker per peer, read by metrics through `state`.
        self.breakers = {
            peer: CircuitBreaker(
                peer=peer,
                failure_threshold=config.breaker_failures,
                cool_down=config.breaker_cool_down,
                monotonic=monotonic,
                on_change=on_breaker_change,
            )
            for peer in ("verification", "policy", "lineage")
        }

    async def authorize(
        self, request: engine_pb2.AuthorizeRequest | UnreadableRequest
    ) -> engine_pb2.AuthorizeResponse:
        """Decide one request, fail-closed.

        1. Validate the request; malformed → DENY MALFORMED_REQUEST.
        2. Compute the request digest (RFC 8785, SHA-256, base64url).
        3. Ask verification and policy concurrently, each under its own
           deadline inside the overall budget; a miss is PEER_TIMEOUT, an
           error PEER_UNAVAILABLE.
        4. Check the answers for consistency; a mismatch is INCONSISTENT_ANSWERS.
        5. Decide: ALLOW only when every check passed and policy permits;
           otherwise DENY with one primary reason and every failed check
           (to a caller whose artifacts did not verify, only those that are
           not policy's: see _disclosed).
        6. Append the decision to lineage. An ALLOW without a receipt becomes
           DENY LINEAGE_UNAVAILABLE; a DENY that cannot be appended is spooled.
        7. For an ALLOW, sign the execution grant, bound to the digest, the
           decision id and the receipt.

        Any exception on this path ends in DENY INTERNAL_ERROR, never in ALLOW.
        """
        # Every decision takes its place in this engine's counter once, here:
        # the auditor reads a missing number as a decision that was lost.
        decision = _Decision(
            decision_id=str(uuid.uuid4()),
            seq=next(self._sequence),
            digest="",
            started=self._monotonic(),
        )
        if isinstance(request, UnreadableRequest):
            # 1. Validate: not even a protobuf.
            decision.fail("request", common_pb2.MALFORMED_REQUEST, request.detail)
            return await self._finish_safely(decision, "", "")
        action, resource = request.action, request.resource
        try:
            # 1. Validate.
            try:
                context = validate(request)
            except MalformedRequest as exc:
                decision.fail("request", common_pb2.MALFORMED_REQUEST, str(exc))
                return await self._finish(decision, action, resource)

            # 2. Digest.
            try:
                decision.digest = request_digest(action, resource, context)
            except CanonicalizationError as exc:
                decision.fail("request", common_pb2.MALFORMED_REQUEST, f"context: {exc}")
                return await self._finish(decision, action, resource)

            # 3. Fan out.
            decision.claimed = claimed_inputs(request)
            await self._ask_peers(decision, request, context)

            # 4 and 5 happened in _ask_peers as each answer arrived; 6 and 7 follow.
            return await self._finish(decision, action, resource)
        except Exception:
            logger.exception("decision failed", extra={"decision_id": decision.decision_id})
            decision.fail("engine", common_pb2.INTERNAL_ERROR, "internal error")
            return await self._finish_safely(decision, action, resource)

    def _remaining(self, decision: _Decision) -> float:
        return decision.started + self._config.budget - self._monotonic()

    async def _call(
        self,
        decision: _Decision,
        peer: str,
        call: Callable[[float], Awaitable[T]],
        cap: float,
        use: Callable[[T], bool],
    ) -> None:
        """Ask `peer` through its breaker; `use` takes the answer and says if it held together."""
        timeout = min(cap, self._remaining(decision))
        if timeout <= 0:
            decision.fail(peer, common_pb2.PEER_TIMEOUT, f"{peer}: no time left in the budget")
            return
        breaker = self.breakers[peer]
        permit = breaker.admit()
        if permit is None:
            # 3. A peer that keeps failing is not waited for: deny at once.
            decision.fail(peer, common_pb2.PEER_UNAVAILABLE, f"{peer} unavailable: circuit open")
            return
        usable: bool | None = None
        try:
            try:
                async with asyncio.timeout(timeout):
                    answer = await call(timeout)
            except (TimeoutError, PeerTimeout):
                usable = False
                decision.fail(peer, common_pb2.PEER_TIMEOUT, f"{peer} did not answer in time")
                return
            except PeerUnavailable as exc:
                usable = False
                decision.fail(peer, common_pb2.PEER_UNAVAILABLE, f"{peer} unavailable: {exc}")
                return
            # 4. Only an answer that passed the consistency checks counts as
            # the peer being healthy: a probe answered wrongly does not close
            # the breaker. Nor does it count as a failure: what the request
            # carries can make answers disagree, and no caller may open a
            # peer's breaker for every other caller.
            if use(answer):
                usable = True
        finally:
            self._report(breaker, permit, usable)

    @staticmethod
    def _report(breaker: CircuitBreaker, permit: Permit, usable: bool | None) -> None:
        # None: no verdict on the peer (an inconsistent answer, a cancelled decision).
        if usable is None:
            breaker.released(permit)
        elif usable:
            breaker.succeeded(permit)
        else:
            breaker.failed(permit)

    async def _ask_peers(
        self, decision: _Decision, request: engine_pb2.AuthorizeRequest, context: dict[str, Any]
    ) -> None:
        verify_request = verification_pb2.VerifyRequest(
            request_digest=decision.digest,
            action=request.action,
            resource=request.resource,
            mandate=request.mandate,
            proof=request.proof,
            attestation=request.attestation,
            decision_id=decision.decision_id,
        )
        verify_request.context.CopyFrom(request.context)

        def use_verification(answer: verification_pb2.VerifyResponse) -> bool:
            # 4. Consistency of the verification answer.
            try:
                decision.failures.extend(
                    check_verification(answer, decision.digest, decision.claimed)
                )
            except _Inconsistent as exc:
                decision.fail("verification", common_pb2.INCONSISTENT_ANSWERS, str(exc))
                return False
            if answer.verified:
                decision.verified = answer.claims
            decision.trust_version = answer.trust_version
            return True

        async def verify() -> None:
            await self._call(
                decision,
                "verification",
                lambda t: self._verification.verify(verify_request, timeout=t),
                self._config.verification_timeout,
                use_verification,
            )

        def use_policy(answer: policy_pb2.EvaluateResponse) -> bool:
            # 4. Consistency of the policy answer.
            try:
                decision.failures.extend(check_policy(answer, decision.digest, self.epochs))
            except _Inconsistent as exc:
                decision.fail(POLICY_CHECK, common_pb2.INCONSISTENT_ANSWERS, str(exc))
                return False
            decision.policy = answer
            return True

        async def evaluate() -> None:
            claimed = decision.claimed
            if claimed is None:
                return  # nothing to evaluate; verification reports why
            if not self.epochs.floor_known:
                # 4. Without the store's newest epoch no answer can be checked for staleness.
                decision.fail(
                    POLICY_CHECK,
                    common_pb2.PEER_UNAVAILABLE,
                    "policy: the newest activated epoch is not known yet",
                )
                return
            evaluate_request = policy_pb2.EvaluateRequest(
                request_digest=decision.digest,
                principal=claimed.subject,
                issuer=claimed.issuer,
                action=request.action,
                resource=request.resource,
                decision_id=decision.decision_id,
            )
            evaluate_request.context.update(
                {"request": context, "env": claimed.env, "attribution": claimed.attribution}
            )
            await self._call(
                decision,
                POLICY_CHECK,
                lambda t: self._policy.evaluate(evaluate_request, timeout=t),
                self._config.policy_timeout,
                use_policy,
            )

        # A TaskGroup, not gather: if one side fails, the other is cancelled
        # and nothing touches the decision after its entry is built.
        async with asyncio.TaskGroup() as group:
            group.create_task(verify())
            group.create_task(evaluate())

    def _allowed(self, decision: _Decision) -> bool:
        # 5. ALLOW only with no failure, a verified mandate and a policy ALLOW.
        return (
            not decision.failures
            and decision.verified is not None
            and decision.policy is not None
            and decision.policy.decision == common_pb2.ALLOW
        )

    def _entry(
        self, decision: _Decision, action: str, resource: str, allowed: bool
    ) -> dict[str, Any]:
        policy = decision.policy
        verified = decision.verified
        reason = None if allowed else common_pb2.DenyReason.Name(self._reason(decision))
        entry: dict[str, Any] = {
            "v": 1,
            "type": "decision",
            "decision_id": decision.decision_id,
            "engine": {"id": self._engine_id, "seq": decision.seq},
            "time": datetime.fromtimestamp(self._clock(), UTC).isoformat(timespec="milliseconds"),
            "request_digest": decision.digest or None,
            "subject": verified.subject if verified else None,
            "claimed_subject": decision.claimed.subject if decision.claimed else None,
            "issuer": verified.issuer if verified else None,
            "mandate_id": verified.mandate_id if verified else None,
            "attestor": (verified.attestor or None) if verified else None,
            "measurements": list(verified.measurements) if verified else [],
            "trust": decision.trust_version or None,
            "action": action[:MAX_ACTION_CHARS],
            "resource": resource[:MAX_RESOURCE_CHARS],
            "decision": "ALLOW" if allowed else "DENY",
            "reason": reason,
            "failed_checks": self._failed_names(decision),
            "policy": None,
            "shadow": None,
            "grant_id": decision.decision_id if allowed else None,
            **_trace_ids(),
        }
        if policy is not None:
            # The whole of policy's answer, its errors when it has any, even
            # when the caller's answer may not name it (see _disclosed).
            entry["policy"] = {
                "bundle": policy.bundle.version,
                "epoch": policy.bundle.epoch,
                "decision": common_pb2.Decision.Name(policy.decision),
                "determining": clip_list(policy.determining_policies),
            }
            if policy.errors:
                entry["policy"]["errors"] = clip_list(policy.errors)
            if policy.HasField("shadow"):
                entry["shadow"] = {
                    "bundle": policy.shadow.bundle.version,
                    "epoch": policy.shadow.bundle.epoch,
                    "decision": common_pb2.Decision.Name(policy.shadow.decision),
                    "determining": clip_list(policy.shadow.determining_policies),
                }
                if policy.shadow.errors:
                    entry["shadow"]["errors"] = clip_list(policy.shadow.errors)
        return entry

    @staticmethod
    def _failed_names(decision: _Decision) -> list[str]:
        return list(dict.fromkeys(f.check for f in decision.failures))

    @staticmethod
    def _reason(decision: _Decision) -> Reason:
        if not decision.failures:
            # A deny with nothing failed: policy unanswered or not asked.
            return common_pb2.INTERNAL_ERROR
        return primary_reason(f.reason for f in decision.failures)

    async def _finish(
        self, decision: _Decision, action: str, resource: str
    ) -> engine_pb2.AuthorizeResponse:
        allowed = self._allowed(decision)
        if not allowed and not decision.failures:
            decision.fail("engine", common_pb2.INTERNAL_ERROR, "no complete answer to decide on")
        entry = self._entry(decision, action, resource, allowed)
        data = _entry_bytes(entry)
        problem = entry_problem(data, decision.decision_id)
        if problem is not None:
            # Lineage would refuse this entry, and a spooled copy would never
            # drain. Verification refuses the claims that could cause it; if
            # one slips through, the decision is a DENY recorded without it.
            logger.error(
                "decision entry is one lineage refuses: %s",
                problem,
                extra={"decision_id": decision.decision_id},
            )
            allowed = False
            decision.fail(
                "lineage", common_pb2.INTERNAL_ERROR, "the decision cannot be recorded as built"
            )
            data = self._bare_entry(decision, action, resource, problem)

        # 6. Lineage: no log, no execution.
        receipt: common_pb2.LineageReceipt | None = None
        unrecorded = "the decision could not be recorded"
        timeout = min(self._config.lineage_timeout, self._remaining(decision))
        breaker = self.breakers["lineage"]
        permit = breaker.admit() if timeout > 0 else None
        if timeout > 0 and permit is None:
            # An open breaker skips the append, never the deny: it goes to the spool below.
            unrecorded += ": circuit open"
        if permit is not None:
            appended: bool | None = None
            try:
                async with asyncio.timeout(timeout):
                    receipt = await self._lineage.append(
                        data, decision.decision_id, timeout=timeout
                    )
                appended = True
            except (TimeoutError, PeerError) as exc:
                appended = False
                logger.warning(
                    "lineage append failed",
                    extra={"decision_id": decision.decision_id, "error": repr(exc)},
                )
            finally:
                self._report(breaker, permit, appended)
        if allowed and receipt is None:
            allowed = False
            decision.fail("lineage", common_pb2.LINEAGE_UNAVAILABLE, unrecorded)
            # The ALLOW was never answered: record what was, under the same id and place.
            entry.update(
                decision="DENY",
                reason=common_pb2.DenyReason.Name(self._reason(decision)),
                failed_checks=self._failed_names(decision),
                grant_id=None,
            )
            data = _entry_bytes(entry)
        if not allowed and receipt is None:
            await self._spool_deny(decision, data)

        if not allowed:
            return self._deny_response(decision, receipt)

        # 7. Grant.
        assert receipt is not None and decision.verified is not None
        assert decision.policy is not None
        grant = self._grants.sign(self._grant_claims(decision, action, resource, receipt))
        return engine_pb2.AuthorizeResponse(
            decision=common_pb2.ALLOW,
            reason=common_pb2.DENY_REASON_UNSPECIFIED,
            decision_id=decision.decision_id,
            grant=grant,
            lineage=receipt,
            message="allowed",
            request_digest=decision.digest,
        )

    async def _spool_deny(self, decision: _Decision, data: bytes) -> None:
        # Answer once the deny is durable. A disk that does not answer within
        # spool_timeout does not hold the answer for ever: the write goes on
        # in the background and its failure is logged.
        write = asyncio.ensure_future(self._spool.put(data, decision.decision_id))
        write.add_done_callback(_log_spool_failure(decision.decision_id))
        with contextlib.suppress(TimeoutError, OSError, ValueError):
            await asyncio.wait_for(asyncio.shield(write), self._config.spool_timeout)

    async def _finish_safely(
        self, decision: _Decision, action: str, resource: str
    ) -> engine_pb2.AuthorizeResponse:
        # The decision already failed once; whatever happens now, the answer is DENY.
        decision.verified = None
        try:
            return await self._finish(decision, action, resource)
        except Exception as exc:
            logger.exception("recording a failed decision failed")
            if not any(f.check == "engine" for f in decision.failures):
                decision.fail("engine", common_pb2.INTERNAL_ERROR, "internal error")
            # Nothing lost: the deny is spooled in the barest form lineage accepts.
            # (If the failed finish had recorded it already, the drain finds it.)
            try:
                unfinished = f"the decision could not be finished: {type(exc).__name__}"
                await self._spool_deny(
                    decision, self._bare_entry(decision, action, resource, unfinished)
                )
            except Exception:
                logger.exception(
                    "a failed decision could not be spooled",
                    extra={"decision_id": decision.decision_id},
                )
            return self._deny_response(decision, None)

    def _bare_entry(self, decision: _Decision, action: str, resource: str, note: str) -> bytes:
        """The decision as a DENY entry lineage accepts, whatever else went wrong.

        Holds what the engine itself made, none of what peers vouched for;
        `unrecorded` says why the full entry was not recorded. Falls back
        to the engine's own fields alone (accepted by construction: a
        fresh UUID, the checked engine id, counter, reason names).
        """
        essentials: dict[str, Any] = {
            "v": 1,
            "type": "decision",
            "decision_id": decision.decision_id,
            "engine": {"id": self._engine_id, "seq": decision.seq},
            "decision": "DENY",
            "reason": common_pb2.DenyReason.Name(self._reason(decision)),
            "failed_checks": _loggable(self._failed_names(decision)),
            "unrecorded": _loggable(note[:1024]),
        }
        try:
            full = {
                **essentials,
                "time": datetime.fromtimestamp(self._clock(), UTC).isoformat(
                    timespec="milliseconds"
                ),
                "request_digest": decision.digest or None,
                "claimed_subject": decision.claimed.subject if decision.claimed else None,
                "action": action[:MAX_ACTION_CHARS],
                "resource": resource[:MAX_RESOURCE_CHARS],
            }
            data = _entry_bytes(full)
            if entry_problem(data, decision.decision_id) is None:
                return data
        except Exception:
            logger.exception(
                "request fields left out of a bare entry",
                extra={"decision_id": decision.decision_id},
            )
        return canonical_json(essentials)

    @staticmethod
    def _disclosed(decision: _Decision) -> list[Failure]:
        """The failures a DENY names to its caller.

        Until the caller's artifacts have verified, the answer names only
        why they did not: the request's own failures, verification's failed
        checks, or verification's peer failing. Nothing of policy (whether
        it would have permitted, which policy forbids, its errors, whether
        it answered at all) reaches a caller who could not show a valid
        mandate and proof, or the DENY would be an oracle for policy. The
        primary reason is then the first in REASON_PRECEDENCE among the
        disclosed failures: POLICY_MISMATCH from policy never outranks, say,
        a verification PEER_TIMEOUT in such an answer. The lineage entry and
        the log keep every failure and the decision's full reason.
        """
        if decision.verified is not None:
            return decision.failures
        disclosed = [f for f in decision.failures if f.check != POLICY_CHECK]
        if disclosed:
            return disclosed
        # Unreachable: an unverified decision has verification's failure.
        return [Failure("engine", common_pb2.INTERNAL_ERROR, "internal error")]

    def _deny_response(
        self, decision: _Decision, receipt: common_pb2.LineageReceipt | None
    ) -> engine_pb2.AuthorizeResponse:
        failures = self._disclosed(decision)
        withheld = [f for f in decision.failures if f not in failures]
        if withheld:
            logger.info(
                "decision %s: withheld from the unverified caller: %s",
                decision.decision_id,
                "; ".join(f"{f.check}: {f.detail}" for f in withheld),
            )
        details = [f"{f.check}: {f.detail}" for f in failures]
        response = engine_pb2.AuthorizeResponse(
            decision=common_pb2.DENY,
            reason=primary_reason(f.reason for f in failures),
            decision_id=decision.decision_id,
            failed_checks=list(dict.fromkeys(f.check for f in failures)),
            message="; ".join(dict.fromkeys(details)),
            request_digest=decision.digest,
        )
        if receipt is not None:
            response.lineage.CopyFrom(receipt)
        return response

    def _grant_claims(
        self,
        decision: _Decision,
        action: str,
        resource: str,
        receipt: common_pb2.LineageReceipt,
    ) -> dict[str, Any]:
        assert decision.verified is not None and decision.policy is not None
        return {
            "sub": decision.verified.subject,
            "jti": decision.decision_id,
            "act": {"action": action, "resource": resource},
            "req": decision.digest,
            "pol": {
                "bundle": decision.policy.bundle.version,
                "epoch": decision.policy.bundle.epoch,
            },
            "lin": {
                "index": receipt.index,
                "leaf_hash": b64url(receipt.leaf_hash),
                "tree_size": receipt.tree_size,
            },
            "cnf": {"jkt": decision.verified.cnf_jkt},
        }
