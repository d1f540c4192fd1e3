"""Cedar evaluation, closed: pure logic, no gRPC.

A request is evaluated as principal `Agent::"<sub>"`, action
`Action::"<action>"`, resource `Resource::"<resource>"` and context
{"request": ..., "env": ..., "attribution": ...}, with the bundle's schema
when it has one. The entity store holds the principal alone, a member of
`Issuer::"<iss>"` (and that issuer): a subject is one agent only under the
issuer verification vouched for, so `principal in Issuer::"..."` lets a
policy say whose agents it means.

Cedar skips a policy whose evaluation errors and decides without it; govmesh
does not: any error, NoDecision, or answer other than a clean Allow is a deny
with the error named, so an erroring forbid can never let a permit through.

Numbers. The engine sends the context as a protobuf Struct, where every
number is a double. A double that is a whole number within ±2^53 (where every
integer is exact) becomes a Cedar Long; any other number (a fraction, a whole
number beyond 2^53 whose digits the double may have rounded, NaN, infinity)
cannot be represented faithfully, and the request is denied with the path of
the number named. Cedar has no null either: a null is denied the same way.
Keys starting with "__" are refused too, since Cedar's JSON reads `__entity`
and `__extn` as escapes that would let a caller forge entity references.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cedarpy

from govmesh.artifacts.answers import MAX_QUOTED_CHARS, clip, quoted
from govmesh.policy.bundle import CompiledBundle
from govmesh.policy.entities import (
    ACTION_TYPE,
    ISSUER_TYPE,
    PRINCIPAL_TYPE,
    RESOURCE_TYPE,
    request_entities,
    uid,
)
from govmesh.runtime.errors import InvalidInput

#: Every integer up to this magnitude is exact in a double.
MAX_EXACT_INTEGER = 2**53
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
MAX_CONTEXT_DEPTH = 64


class ContextError(InvalidInput, ValueError):
    """A context value Cedar cannot faithfully receive."""


@dataclass(frozen=True)
class PolicyRequest:
    """One request, as the engine asks it."""

    principal: str
    action: str
    resource: str
    context: Mapping[str, Any]
    issuer: str


@dataclass(frozen=True)
class PolicyDecision:
    """The closed answer: `allowed` only for a clean Allow.

    `determining` lists the permits that allowed, or the forbids that denied
    (empty for a default deny); `errors` names every error, each one a deny.
    """

    allowed: bool
    determining: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


class _Refused(InvalidInput):
    """A context value refused; `path` is filled in on the way out (free when nothing fails)."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path: list[str] = []


_STR, _BOOL, _INT, _FLOAT, _MAP, _SEQ, _NULL, _OTHER = range(8)
#: The kind of each value type met so far (the ABC checks run once per type).
_KINDS: dict[type, int] = {
    str: _STR,
    bool: _BOOL,
    int: _INT,
    float: _FLOAT,
    dict: _MAP,
    list: _SEQ,
    tuple: _SEQ,
    type(None): _NULL,
}


def _kind(value_type: type) -> int:
    kind = _KINDS.get(value_type)
    if kind is None:
        if issubclass(value_type, bool):
            kind = _BOOL
        elif issubclass(value_type, str):
            kind = _STR
        elif issubclass(value_type, int):
            kind = _INT
        elif issubclass(value_type, float):
            kind = _FLOAT
        elif issubclass(value_type, Mapping):
            kind = _MAP
        elif issubclass(value_type, Sequence) and not issubclass(value_type, bytes | bytearray):
            kind = _SEQ
        else:
            kind = _OTHER
        _KINDS[value_type] = kind
    return kind


def _convert(value: Any, depth: int) -> Any:
    kind = _kind(type(value))
    if kind in (_STR, _BOOL):
        return value
    if kind == _FLOAT:
        if not math.isfinite(value) or not value.is_integer():
            raise _Refused(f"{value!r} is not a whole number; Cedar has no fractional numbers")
        if abs(value) > MAX_EXACT_INTEGER:
            raise _Refused(f"{value!r} is beyond 2^53 and may have been rounded")
        return int(value)
    if depth > MAX_CONTEXT_DEPTH:
        raise _Refused(f"nested deeper than {MAX_CONTEXT_DEPTH}")
    if kind == _MAP:
        record = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _Refused(f"key {quoted(key)} is not a string")
            if key.startswith("__"):
                raise _Refused(f"key {quoted(key)} is reserved (Cedar reads it as an escape)")
            try:
                record[key] = _convert(item, depth + 1)
            except _Refused as exc:
                # Keys are the caller's: the path quotes each only so far.
                exc.path.append(f".{clip(key, MAX_QUOTED_CHARS)}")
                raise
        return record
    if kind == _SEQ:
        items = []
        for n, item in enumerate(value):
            try:
                items.append(_convert(item, depth + 1))
            except _Refused as exc:
                exc.path.append(f"[{n}]")
                raise
        return items
    if kind == _INT:
        if not _LONG_MIN <= value <= _LONG_MAX:
            raise _Refused(f"{value} is outside Cedar's 64-bit integer range")
        return int(value)
    if kind == _NULL:
        raise _Refused("null has no Cedar value")
    raise _Refused(f"a {type(value).__name__} has no Cedar value")


def cedar_context(context: Mapping[str, Any]) -> dict[str, Any]:
    """The context as Cedar receives it; raises ContextError naming the offending path.

    Any Mapping and Sequence will do, a protobuf Struct and ListValue included,
    so that the engine's Struct is read once, straight into Cedar's values.
    """
    try:
        if _kind(type(context)) != _MAP:
            raise _Refused("not a record")
        converted = _convert(context, 1)
    except _Refused as exc:
        path = "context" + "".join(reversed(exc.path))
        raise ContextError(f"{path}: {exc.problem}") from None
    assert isinstance(converted, dict)
    return converted


def plain_json(value: Any) -> Any:
    """`value` with every Mapping a dict and every Sequence a list (for storing as JSON)."""
    if isinstance(value, Mapping):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [plain_json(v) for v in value]
    return value


def _deny(*errors: str, determining: tuple[str, ...] = ()) -> PolicyDecision:
    return PolicyDecision(False, determining, tuple(errors))


def evaluate(
    bundle: CompiledBundle, request: PolicyRequest, *, indexed: bool = True
) -> PolicyDecision:
    """Evaluate `request` under `bundle`, denying on anything but a clean Allow.

    1. Principal, issuer, action and resource must be non-empty strings.
    2. The context must convert to Cedar values (see the module docstring).
    3. Take the policies that can apply (the scope index), or all of them.
    4. Ask Cedar, once per policy set the index hands out; an exception is a deny.
    5. Any error is a deny, whatever Cedar decided: skip-on-error is closed.
    6. NoDecision, or a decision Cedar does not document, is a deny.
    7. Allow needs a determining permit; Deny names its forbids.
    """
    # 1. The request variables.
    for name in ("principal", "issuer", "action", "resource"):
        value = getattr(request, name)
        if not isinstance(value, str) or not value:
            return _deny(f"request has no {name}")
    # 2. The context.
    try:
        context = cedar_context(request.context)
    except ContextError as exc:
        return _deny(str(exc))
    # 3. The policies: the index's sets together hold exactly the candidates.
    principal = (PRINCIPAL_TYPE, request.principal)
    issuer = (ISSUER_TYPE, request.issuer)
    action = (ACTION_TYPE, request.action)
    resource = (RESOURCE_TYPE, request.resource)
    cedar_request = {
        "principal": uid(*principal),
        "action": uid(*action),
        "resource": uid(*resource),
        "context": context,
    }
    try:
        policy_sets = (
            bundle.index.policy_sets(principal, action, resource, principal_in=(issuer,))
            if indexed
            else (bundle.full_set,)
        )
        entities = request_entities(request.principal, request.issuer)
        # 4. Cedar, once per set.
        results = [
            cedarpy.is_authorized(cedar_request, policy_set, entities, schema=bundle.schema)
            for policy_set in policy_sets
        ]
        decisions = {result.decision for result in results}
        errors = tuple(sorted({str(e) for r in results for e in r.diagnostics.errors}))
        # Cedar names the satisfied forbids when it denies, the satisfied permits when it allows.
        forbids = _reasons(results, cedarpy.Decision.Deny)
        permits = _reasons(results, cedarpy.Decision.Allow)
    except Exception as exc:  # cedarpy surfaces bad input and Rust panics as several types
        return _deny(f"evaluation failed: {type(exc).__name__}: {exc}")
    # 5. Errors deny. The forbids Cedar found satisfied still determine the deny.
    if errors:
        return _deny(*errors, determining=forbids)
    # 6. NoDecision and the unknown.
    if cedarpy.Decision.NoDecision in decisions:
        return _deny("Cedar reached no decision")
    if not decisions <= {cedarpy.Decision.Allow, cedarpy.Decision.Deny}:
        return _deny(f"Cedar answered {sorted(str(d) for d in decisions)}")
    # 7. Forbid overrides permit; an Allow stands only on permits of this bundle.
    if forbids:
        if any(bundle.effects.get(r) != "forbid" for r in forbids):
            return _deny(f"Cedar denied citing policies that are not forbids: {forbids}")
        return PolicyDecision(False, forbids)
    if cedarpy.Decision.Allow in decisions:
        if not permits or any(bundle.effects.get(r) != "permit" for r in permits):
            return _deny(f"Cedar allowed without a determining permit of this bundle: {permits}")
        return PolicyDecision(True, permits)
    return PolicyDecision(False)


def _reasons(results: list[Any], decision: Any) -> tuple[str, ...]:
    return tuple(
        sorted(
            {
                str(r)
                for result in results
                if result.decision == decision
                for r in result.diagnostics.reasons
            }
        )
    )
