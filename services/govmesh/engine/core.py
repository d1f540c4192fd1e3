"""The decision: pure logic over injected peers, no gRPC.

`Engine.authorize` is the fail-closed path of DESIGN.md section 2. Every step
is numbered here and at the place it happens in the code. The parts live
beside it: the peers it asks (`protocols`), request validation (`requests`),
the claims read before verification (`claims`), the checks of each answer
(`consistency`) and the lineage entry (`records`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from govmesh.artifacts.canonical import CanonicalizationError, b64url, request_digest
from govmesh.artifacts.checks import Reason, primary_reason
from govmesh.artifacts.entries import entry_problem, text_problem
from govmesh.engine.breaker import CircuitBreaker, Permit, StateHook
from govmesh.engine.claims import Claimed, claimed_inputs
from govmesh.engine.consistency import (
    POLICY_CHECK,
    EpochTracker,
    Failure,
    Inconsistent,
    check_policy,
    check_verification,
)
from govmesh.engine.protocols import (
    DenySpool,
    GrantSigner,
    LineageSink,
    PolicyPeer,
    VerificationPeer,
)

# The peer errors are re-exported on purpose: batching.py and lineage.py
# still import them from here. Their home is govmesh.engine.protocols.
from govmesh.engine.protocols import PeerError as PeerError
from govmesh.engine.protocols import PeerRejected as PeerRejected
from govmesh.engine.protocols import PeerTimeout as PeerTimeout
from govmesh.engine.protocols import PeerUnavailable as PeerUnavailable
from govmesh.engine.records import bare_entry, decision_entry, denied, entry_bytes
from govmesh.engine.requests import MalformedRequest, UnreadableRequest, validate
from govmesh.v1 import common_pb2, engine_pb2, policy_pb2, verification_pb2

logger = logging.getLogger(__name__)

T = TypeVar("T")


#: What a stretched budget leaves of the caller's deadline for the answer to reach it.
REPLY_MARGIN_S = 0.05


@dataclass(frozen=True)
class DecisionConfig:
    """Deadlines of one decision, in seconds, and its peers' circuit breakers."""

    verification_timeout_s: float
    policy_timeout_s: float
    lineage_timeout_s: float
    budget_s: float
    #: How long a deny that lineage could not take may wait to be durable in
    #: the spool before it is answered anyway. Past the budget on purpose: a
    #: late DENY harms nobody, an unrecorded one breaks "nothing lost".
    spool_timeout_s: float = 2.0
    #: Consecutive failed calls (timeouts, unreachable, unusable answers) after
    #: which a peer's circuit breaker opens and its calls are refused at once.
    breaker_failures: int = 5
    #: How long an open breaker refuses calls before it lets one probe through.
    breaker_cool_down_s: float = 1.0
    #: The longest budget a caller that can wait may get (None: budget_s).
    #: The deadlines above are what a decision gets when its caller's own
    #: deadline leaves no more; a caller that can wait longer gets all of
    #: them stretched in proportion, up to this budget (see stretch).
    budget_max_s: float | None = None

    def stretch(self, time_remaining: float | None) -> float:
        """The factor, from 1 up, by which one decision's deadlines are stretched.

        `time_remaining` is what is left of the caller's deadline once the
        decision starts (math.inf: no deadline; None: unknown, no stretch).
        A machine that stalls a peer for a few hundred milliseconds (a busy
        core, a slow commit) must not turn into denies of valid requests
        whose callers would have waited: the budget follows the caller's
        deadline, less a margin for the answer to travel back, between
        budget_s and budget_max_s. A caller in a hurry keeps the short
        deadlines, and its DENY PEER_TIMEOUT arrives before its own deadline.
        """
        ceiling = max(self.budget_s, self.budget_max_s or self.budget_s)
        if time_remaining is None or ceiling <= self.budget_s:
            return 1.0
        budget = min(ceiling, max(self.budget_s, time_remaining - REPLY_MARGIN_S))
        return budget / self.budget_s


@dataclass
class _Decision:
    decision_id: str
    seq: int
    digest: str
    started: float
    #: This decision's deadlines are the configured ones times this (>= 1).
    stretch: float = 1.0
    failures: list[Failure] = field(default_factory=list)
    claimed: Claimed | None = None
    verified: verification_pb2.VerifiedClaims | None = None
    trust_version: str = ""
    policy: policy_pb2.EvaluateResponse | None = None
    #: Counted in Engine.before_lineage until its entry goes to lineage (or it ends).
    on_the_way: bool = True

    def fail(self, check: str, reason: Reason, detail: str) -> None:
        self.failures.append(Failure(check, reason, detail))


def _log_spool_failure(decision_id: str) -> Callable[[asyncio.Future[None]], None]:
    def report(write: asyncio.Future[None]) -> None:
        if not write.cancelled() and write.exception() is not None:
            logger.error(
                "deny could not be spooled: %s",
                write.exception(),
                extra={"decision_id": decision_id},
            )

    return report


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
        #: Decisions begun whose entries have not gone to lineage yet: the
        #: company a lineage batch may linger for (none: it goes at once).
        self.before_lineage = 0
        self.epochs = epochs
        #: One circuit breaker per peer, read by metrics through `state`.
        self.breakers = {
            peer: CircuitBreaker(
                peer=peer,
                failure_threshold=config.breaker_failures,
                cool_down_s=config.breaker_cool_down_s,
                monotonic=monotonic,
                on_change=on_breaker_change,
            )
            for peer in ("verification", "policy", "lineage")
        }

    async def authorize(
        self,
        request: engine_pb2.AuthorizeRequest | UnreadableRequest,
        *,
        time_remaining: float | None = None,
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

        `time_remaining` is what is left of the caller's deadline, in seconds
        (math.inf: none): a caller that can wait gets longer deadlines, up to
        the configured ceiling (DecisionConfig.stretch).
        """
        # Every decision takes its place in this engine's counter once, here:
        # the auditor reads a missing number as a decision that was lost.
        decision = _Decision(
            decision_id=str(uuid.uuid4()),
            seq=next(self._sequence),
            digest="",
            started=self._monotonic(),
            stretch=self._config.stretch(time_remaining),
        )
        self.before_lineage += 1
        try:
            return await self._decide(decision, request)
        finally:
            self._left_for_lineage(decision)

    def _left_for_lineage(self, decision: _Decision) -> None:
        if decision.on_the_way:
            decision.on_the_way = False
            self.before_lineage -= 1

    async def _decide(
        self, decision: _Decision, request: engine_pb2.AuthorizeRequest | UnreadableRequest
    ) -> engine_pb2.AuthorizeResponse:
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
        return decision.started + self._config.budget_s * decision.stretch - self._monotonic()

    async def _call(
        self,
        decision: _Decision,
        peer: str,
        call: Callable[[float], Awaitable[T]],
        cap: float,
        use: Callable[[T], bool],
    ) -> None:
        """Ask `peer` through its breaker; `use` takes the answer and says if it held together."""
        timeout = min(cap * decision.stretch, self._remaining(decision))
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
            except Inconsistent as exc:
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
                self._config.verification_timeout_s,
                use_verification,
            )

        def use_policy(answer: policy_pb2.EvaluateResponse) -> bool:
            # 4. Consistency of the policy answer.
            try:
                decision.failures.extend(check_policy(answer, decision.digest, self.epochs))
            except Inconsistent as exc:
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
                self._config.policy_timeout_s,
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
        # 5. Decide.
        allowed = self._allowed(decision)
        if not allowed and not decision.failures:
            decision.fail("engine", common_pb2.INTERNAL_ERROR, "no complete answer to decide on")
        entry = self._entry(decision, action, resource, allowed)
        data, recordable = self._entry_data(decision, action, resource, entry)
        allowed = allowed and recordable

        # 6. Lineage: no log, no execution.
        receipt, unrecorded = await self._append(decision, data)
        if allowed and receipt is None:
            allowed = False
            decision.fail("lineage", common_pb2.LINEAGE_UNAVAILABLE, unrecorded)
            # The ALLOW was never answered: record what was, under the same id and place.
            entry = denied(
                entry, reason=self._reason(decision), failed_checks=self._failed_names(decision)
            )
            data = entry_bytes(entry)
        if not allowed and receipt is None:
            await self._spool_deny(decision, data)

        if not allowed:
            return self._deny_response(decision, receipt)

        # 7. Grant.
        assert receipt is not None
        return self._allow_response(decision, action, resource, receipt)

    def _entry(
        self, decision: _Decision, action: str, resource: str, allowed: bool
    ) -> dict[str, Any]:
        return decision_entry(
            decision_id=decision.decision_id,
            engine_id=self._engine_id,
            seq=decision.seq,
            time_s=self._clock(),
            digest=decision.digest,
            claimed=decision.claimed,
            verified=decision.verified,
            trust_version=decision.trust_version,
            policy=decision.policy,
            action=action,
            resource=resource,
            reason=None if allowed else self._reason(decision),
            failed_checks=self._failed_names(decision),
        )

    def _entry_data(
        self, decision: _Decision, action: str, resource: str, entry: dict[str, Any]
    ) -> tuple[bytes, bool]:
        """The bytes to record, and whether they are the full entry lineage takes."""
        data = entry_bytes(entry)
        problem = entry_problem(data, decision.decision_id)
        if problem is None:
            return data, True
        # Lineage would refuse this entry, and a spooled copy would never
        # drain. Verification refuses the claims that could cause it; if
        # one slips through, the decision is a DENY recorded without it.
        logger.error(
            "decision entry is one lineage refuses: %s",
            problem,
            extra={"decision_id": decision.decision_id},
        )
        decision.fail(
            "lineage", common_pb2.INTERNAL_ERROR, "the decision cannot be recorded as built"
        )
        return self._bare_entry(decision, action, resource, problem), False

    async def _append(
        self, decision: _Decision, data: bytes
    ) -> tuple[common_pb2.LineageReceipt | None, str]:
        """Append the entry within the budget: its receipt, or None and why not."""
        receipt: common_pb2.LineageReceipt | None = None
        unrecorded = "the decision could not be recorded"
        # This decision no longer keeps a lineage batch waiting for it.
        self._left_for_lineage(decision)
        timeout = min(self._config.lineage_timeout_s * decision.stretch, self._remaining(decision))
        breaker = self.breakers["lineage"]
        permit = breaker.admit() if timeout > 0 else None
        if timeout > 0 and permit is None:
            # An open breaker skips the append, never the deny: it goes to the spool.
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
        return receipt, unrecorded

    def _allow_response(
        self,
        decision: _Decision,
        action: str,
        resource: str,
        receipt: common_pb2.LineageReceipt,
    ) -> engine_pb2.AuthorizeResponse:
        assert decision.verified is not None
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
            await asyncio.wait_for(asyncio.shield(write), self._config.spool_timeout_s)

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
        """The decision as a DENY entry lineage accepts, whatever else went wrong."""
        return bare_entry(
            decision_id=decision.decision_id,
            engine_id=self._engine_id,
            seq=decision.seq,
            reason=self._reason(decision),
            failed_checks=self._failed_names(decision),
            note=note,
            clock=self._clock,
            digest=decision.digest,
            claimed_subject=decision.claimed.subject if decision.claimed else None,
            action=action,
            resource=resource,
        )

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
