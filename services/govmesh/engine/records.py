"""The lineage entry of a decision: its fields, and its bytes.

The bytes are canonical JSON (RFC 8785) of the fields below; lineage checks
them with `govmesh.artifacts.entries` and the auditor reads them back, so a
change here is a change of the log's format. A value that has no canonical
form is escaped rather than lost: every decision is recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

from govmesh.artifacts.answers import clip_list
from govmesh.artifacts.canonical import SAFE_INTEGER, CanonicalizationError, canonical_json
from govmesh.artifacts.checks import Reason
from govmesh.artifacts.entries import entry_problem
from govmesh.artifacts.names import MAX_ACTION_CHARS, MAX_RESOURCE_CHARS
from govmesh.engine.claims import Claimed
from govmesh.v1 import common_pb2, policy_pb2, verification_pb2

logger = logging.getLogger(__name__)


def loggable(value: Any) -> Any:
    """`value` in a form canonical JSON always accepts."""
    # Strings with lone surrogates become their backslash escapes; integers
    # beyond I-JSON become strings.
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return value if isinstance(value, int) and abs(value) <= SAFE_INTEGER else str(value)
    if isinstance(value, dict):
        return {loggable(k): loggable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [loggable(v) for v in value]
    return str(value)


def entry_bytes(entry: dict[str, Any]) -> bytes:
    """The entry as canonical JSON; a value that has no canonical form is escaped, not fatal."""
    try:
        return canonical_json(entry)
    except CanonicalizationError:
        logger.warning("entry holds values without a canonical form; recording them escaped")
        return canonical_json(loggable(entry))


def _trace_ids() -> dict[str, str | None]:
    span = trace.get_current_span().get_span_context()
    if not span.is_valid:
        return {"trace_id": None, "span_id": None}
    return {"trace_id": f"{span.trace_id:032x}", "span_id": f"{span.span_id:016x}"}


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def decision_entry(
    *,
    decision_id: str,
    engine_id: str,
    seq: int,
    time_s: float,
    digest: str,
    claimed: Claimed | None,
    verified: verification_pb2.VerifiedClaims | None,
    trust_version: str,
    policy: policy_pb2.EvaluateResponse | None,
    action: str,
    resource: str,
    reason: Reason | None,
    failed_checks: list[str],
) -> dict[str, Any]:
    """The full entry of a decision: an ALLOW when `reason` is None, else a DENY for it.

    `time_s` is the decision's wall-clock time in seconds since the epoch.
    The entry holds the whole of policy's answer, its errors when it has
    any, even when the caller's answer may not name it.
    """
    allowed = reason is None
    entry: dict[str, Any] = {
        "v": 1,
        "type": "decision",
        "decision_id": decision_id,
        "engine": {"id": engine_id, "seq": seq},
        "time": _timestamp(time_s),
        "request_digest": digest or None,
        "subject": verified.subject if verified else None,
        "claimed_subject": claimed.subject if claimed else None,
        "issuer": verified.issuer if verified else None,
        "mandate_id": verified.mandate_id if verified else None,
        "attestor": (verified.attestor or None) if verified else None,
        "measurements": list(verified.measurements) if verified else [],
        "trust": trust_version or None,
        "action": action[:MAX_ACTION_CHARS],
        "resource": resource[:MAX_RESOURCE_CHARS],
        "decision": "ALLOW" if allowed else "DENY",
        "reason": None if reason is None else common_pb2.DenyReason.Name(reason),
        "failed_checks": failed_checks,
        "policy": None,
        "shadow": None,
        "grant_id": decision_id if allowed else None,
        **_trace_ids(),
    }
    if policy is not None:
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


def denied(entry: dict[str, Any], *, reason: Reason, failed_checks: list[str]) -> dict[str, Any]:
    """An ALLOW's entry turned into the DENY that was answered instead, same id and place."""
    return {
        **entry,
        "decision": "DENY",
        "reason": common_pb2.DenyReason.Name(reason),
        "failed_checks": failed_checks,
        "grant_id": None,
    }


def bare_entry(
    *,
    decision_id: str,
    engine_id: str,
    seq: int,
    reason: Reason,
    failed_checks: list[str],
    note: str,
    clock: Callable[[], float],
    digest: str,
    claimed_subject: str | None,
    action: str,
    resource: str,
) -> bytes:
    """A DENY entry lineage accepts, whatever else went wrong.

    Holds what the engine itself made, none of what peers vouched for;
    `unrecorded` (from `note`) says why the full entry was not recorded.
    Falls back to the engine's own fields alone (accepted by construction:
    a fresh UUID, the checked engine id, counter, reason names).
    """
    essentials: dict[str, Any] = {
        "v": 1,
        "type": "decision",
        "decision_id": decision_id,
        "engine": {"id": engine_id, "seq": seq},
        "decision": "DENY",
        "reason": common_pb2.DenyReason.Name(reason),
        "failed_checks": loggable(failed_checks),
        "unrecorded": loggable(note[:1024]),
    }
    try:
        full = {
            **essentials,
            # The clock is read here, inside the fallback, so that even a
            # failing clock still leaves the essentials to record.
            "time": _timestamp(clock()),
            "request_digest": digest or None,
            "claimed_subject": claimed_subject,
            "action": action[:MAX_ACTION_CHARS],
            "resource": resource[:MAX_RESOURCE_CHARS],
        }
        data = entry_bytes(full)
        if entry_problem(data, decision_id) is None:
            return data
    except Exception:
        logger.exception(
            "request fields left out of a bare entry", extra={"decision_id": decision_id}
        )
    return canonical_json(essentials)
