"""The decision: pure logic over injected peers, no gRPC.

`Engine.authorize` is the fail-closed path of DESIGN.md section 2. Every step
is numbered here and at the place it happens in the code.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import re
import time
import unicodedata
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from opentelemetry import trace

from govmesh.artifacts.canonical import (
    SAFE_INTEGER,
    CanonicalizationError,
    b64url,
    b64url_decode,
    canonical_json,
    request_digest,
)
from govmesh.artifacts.checks import REQUIRED_CHECKS, Reason, primary_reason
from govmesh.artifacts.structs import struct_to_dict
from govmesh.v1 import (
    common_pb2,
    engine_pb2,
    policy_pb2,
    verification_pb2,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_ACTION_CHARS = 256
MAX_RESOURCE_CHARS = 1024
MAX_CONTEXT_BYTES = 16 * 1024
MAX_CONTEXT_DEPTH = 16
MAX_ARTIFACT_CHARS = 16 * 1024
#: SPIFFE IDs are at most 2048 bytes; a longer subject is not one govmesh serves.
MAX_SUBJECT_CHARS = 2048


# --- what the engine talks to ------------------------------------------------


class PeerError(Exception):
    """A peer gave no usable answer."""


class PeerTimeout(PeerError):
    """A peer missed its deadline."""


class PeerUnavailable(PeerError):
    """A peer could not be reached or failed."""


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
    reports the same subject, environment and attribution from verified
    artifacts.
    """

    subject: str
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


def _depth(value: Any, limit: int) -> int:
    stack = [(value, 1)]
    deepest = 0
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return deepest


# Spellings of a path that executors commonly collapse to another resource:
# dot segments, empty segments, and their percent-encoded forms.
_ALIASING = re.compile(r"(^|/)\.{1,2}(/|$)|(?<!:)//|%2e|%2f|%5c|\\", re.IGNORECASE)


def _printable(text: str) -> bool:
    return text.isprintable()


def _canonical_name(text: str, what: str) -> None:
    """Refuse names that another spelling could stand for.

    A policy that forbids `account:acme/frozen` must not be passed by
    `account:acme/treasury/../frozen`, `account:acme//frozen` or a trailing
    space: executors act on the string in the grant, and some of them
    normalise it. Names are taken as exact, NFC-normalised strings; matching
    them byte for byte is the executor's contract.
    """
    if text != text.strip():
        raise MalformedRequest(f"{what} has leading or trailing whitespace")
    if not unicodedata.is_normalized("NFC", text):
        raise MalformedRequest(f"{what} is not NFC-normalised Unicode")
    if _ALIASING.search(text):
        raise MalformedRequest(f"{what} has dot segments, empty segments or encoded separators")


def validate(request: engine_pb2.AuthorizeRequest) -> dict[str, Any]:
    """Check sizes and required fields; return the context as plain JSON.

    Raises MalformedRequest with the first problem found.
    """
    if not request.action or len(request.action) > MAX_ACTION_CHARS:
        raise MalformedRequest(f"action must be 1..{MAX_ACTION_CHARS} characters")
    if not _printable(request.action):
        raise MalformedRequest("action contains control characters")
    if not request.resource or len(request.resource) > MAX_RESOURCE_CHARS:
        raise MalformedRequest(f"resource must be 1..{MAX_RESOURCE_CHARS} characters")
    if not _printable(request.resource):
        raise MalformedRequest("resource contains control characters")
    _canonical_name(request.action, "action")
    if any(c.isspace() for c in request.action):
        raise MalformedRequest("action contains whitespace")
    _canonical_name(request.resource, "resource")
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
    if _depth(context, MAX_CONTEXT_DEPTH) > MAX_CONTEXT_DEPTH:
        raise MalformedRequest(f"context is nested deeper than {MAX_CONTEXT_DEPTH}")
    return context


def _jws_payload(token: str) -> dict[str, Any] | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(b64url_decode(parts[1]).decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return payload if isinstance(payload, dict) else None


def claimed_inputs(request: engine_pb2.AuthorizeRequest) -> Claimed | None:
    """The subject, attested environment and attribution the artifacts claim.

    None when the mandate is absent or unreadable: policy is then not asked,
    and the decision cannot be an ALLOW.
    """
    mandate = _jws_payload(request.mandate) if request.mandate else None
    if mandate is None or not isinstance(mandate.get("sub"), str) or not mandate["sub"]:
        return None
    attribution = mandate.get("att", {})
    if not isinstance(attribution, dict):
        attribution = {}
    env: dict[str, Any] = {}
    if request.attestation:
        attestation = _jws_payload(request.attestation)
        observed = attestation.get("env") if attestation else None
        if isinstance(observed, dict):
            env = observed
    claimed = Claimed(subject=mandate["sub"], env=env, attribution=attribution)
    if len(claimed.subject) > MAX_SUBJECT_CHARS:
        return None
    try:
        # What cannot be canonical JSON (lone surrogates, integers past 2^53)
        # can neither reach policy as a Struct nor the log as an entry.
        canonical_json({"sub": claimed.subject, "env": env, "att": attribution})
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
    if struct_to_dict(claims.env) != claimed.env:
        raise _Inconsistent("verification vouched for another environment than policy evaluated")
    if struct_to_dict(claims.attribution) != claimed.attribution:
        raise _Inconsistent("verification vouched for another attribution than policy evaluated")
    return []


class EpochTracker:
    """The newest policy epoch seen, and the bundle each epoch stood for."""

    def __init__(self) -> None:
        self.newest = 0
        self._versions: dict[int, str] = {}

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
            detail = "policy evaluation failed: " + "; ".join(answer.errors)
        elif answer.determining_policies:
            detail = "forbidden by " + ", ".join(answer.determining_policies)
        else:
            detail = "no policy permits this request"
        return [Failure("policy", common_pb2.POLICY_MISMATCH, detail)]
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
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
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
        self.epochs = EpochTracker()

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
           otherwise DENY with one primary reason and every failed check.
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
    ) -> T | None:
        timeout = min(cap, self._remaining(decision))
        if timeout <= 0:
            decision.fail(peer, common_pb2.PEER_TIMEOUT, f"{peer}: no time left in the budget")
            return None
        try:
            async with asyncio.timeout(timeout):
                return await call(timeout)
        except (TimeoutError, PeerTimeout):
            decision.fail(peer, common_pb2.PEER_TIMEOUT, f"{peer} did not answer in time")
        except PeerUnavailable as exc:
            decision.fail(peer, common_pb2.PEER_UNAVAILABLE, f"{peer} unavailable: {exc}")
        return None

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

        async def verify() -> None:
            answer = await self._call(
                decision,
                "verification",
                lambda t: self._verification.verify(verify_request, timeout=t),
                self._config.verification_timeout,
            )
            if answer is None:
                return
            # 4. Consistency of the verification answer.
            try:
                decision.failures.extend(
                    check_verification(answer, decision.digest, decision.claimed)
                )
                if answer.verified:
                    decision.verified = answer.claims
                decision.trust_version = answer.trust_version
            except _Inconsistent as exc:
                decision.fail("verification", common_pb2.INCONSISTENT_ANSWERS, str(exc))

        async def evaluate() -> None:
            claimed = decision.claimed
            if claimed is None:
                return  # nothing to evaluate; verification reports why
            evaluate_request = policy_pb2.EvaluateRequest(
                request_digest=decision.digest,
                principal=claimed.subject,
                action=request.action,
                resource=request.resource,
                decision_id=decision.decision_id,
            )
            evaluate_request.context.update(
                {"request": context, "env": claimed.env, "attribution": claimed.attribution}
            )
            answer = await self._call(
                decision,
                "policy",
                lambda t: self._policy.evaluate(evaluate_request, timeout=t),
                self._config.policy_timeout,
            )
            if answer is None:
                return
            # 4. Consistency of the policy answer.
            try:
                decision.failures.extend(check_policy(answer, decision.digest, self.epochs))
                decision.policy = answer
            except _Inconsistent as exc:
                decision.fail("policy", common_pb2.INCONSISTENT_ANSWERS, str(exc))

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
            entry["policy"] = {
                "bundle": policy.bundle.version,
                "epoch": policy.bundle.epoch,
                "decision": common_pb2.Decision.Name(policy.decision),
                "determining": list(policy.determining_policies),
            }
            if policy.HasField("shadow"):
                entry["shadow"] = {
                    "bundle": policy.shadow.bundle.version,
                    "epoch": policy.shadow.bundle.epoch,
                    "decision": common_pb2.Decision.Name(policy.shadow.decision),
                    "determining": list(policy.shadow.determining_policies),
                }
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

        # 6. Lineage: no log, no execution.
        receipt: common_pb2.LineageReceipt | None = None
        timeout = min(self._config.lineage_timeout, self._remaining(decision))
        if timeout > 0:
            try:
                async with asyncio.timeout(timeout):
                    receipt = await self._lineage.append(
                        data, decision.decision_id, timeout=timeout
                    )
            except (TimeoutError, PeerError) as exc:
                logger.warning(
                    "lineage append failed",
                    extra={"decision_id": decision.decision_id, "error": repr(exc)},
                )
        if allowed and receipt is None:
            allowed = False
            decision.fail(
                "lineage", common_pb2.LINEAGE_UNAVAILABLE, "the decision could not be recorded"
            )
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
        except Exception:
            logger.exception("recording a failed decision failed")
            return self._deny_response(decision, None)

    def _deny_response(
        self, decision: _Decision, receipt: common_pb2.LineageReceipt | None
    ) -> engine_pb2.AuthorizeResponse:
        details = [f"{f.check}: {f.detail}" for f in decision.failures]
        response = engine_pb2.AuthorizeResponse(
            decision=common_pb2.DENY,
            reason=self._reason(decision),
            decision_id=decision.decision_id,
            failed_checks=self._failed_names(decision),
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
