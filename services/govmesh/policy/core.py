"""Cedar evaluation, closed: pure logic, no gRPC.

A request is evaluated as principal `Agent::"<sub>"`, action
`Action::"<action>"`, resource `Resource::"<resource>"` and context
{"request": ..., "env": ..., "attribution": ...}, with an empty entity store
and the bundle's schema when it has one.

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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cedarpy
from govmesh.policy.bundle import CompiledBundle

PRINCIPAL_TYPE = "Agent"
ACTION_TYPE = "Action"
RESOURCE_TYPE = "Resource"

#: Every integer up to this magnitude is exact in a double.
MAX_EXACT_INTEGER = 2**53
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
MAX_CONTEXT_DEPTH = 64


class ContextError(ValueError):
    """A context value Cedar cannot faithfully receive."""


@dataclass(frozen=True)
class PolicyRequest:
    """One request, as the engine asks it."""

    principal: str
    action: str
    resource: str
    context: Mapping[str, Any]


@dataclass(frozen=True)
class PolicyDecision:
    """The closed answer: `allowed` only for a clean Allow.

    `determining` lists the permits that allowed, or the forbids that denied
    (empty for a default deny); `errors` names every error, each one a deny.
    """

    allowed: bool
    determining: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


def _convert(value: Any, path: str, depth: int) -> Any:
    if depth > MAX_CONTEXT_DEPTH:
        raise ContextError(f"{path}: nested deeper than {MAX_CONTEXT_DEPTH}")
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if not _LONG_MIN <= value <= _LONG_MAX:
            raise ContextError(f"{path}: {value} is outside Cedar's 64-bit integer range")
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ContextError(
                f"{path}: {value!r} is not a whole number; Cedar has no fractional numbers"
            )
        if abs(value) > MAX_EXACT_INTEGER:
            raise ContextError(f"{path}: {value!r} is beyond 2^53 and may have been rounded")
        return int(value)
    if isinstance(value, Mapping):
        record = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ContextError(f"{path}: key {key!r} is not a string")
            if key.startswith("__"):
                raise ContextError(f"{path}: key {key!r} is reserved (Cedar reads it as an escape)")
            record[key] = _convert(item, f"{path}.{key}", depth + 1)
        return record
    if isinstance(value, list | tuple):
        return [_convert(item, f"{path}[{n}]", depth + 1) for n, item in enumerate(value)]
    if value is None:
        raise ContextError(f"{path}: null has no Cedar value")
    raise ContextError(f"{path}: a {type(value).__name__} has no Cedar value")


def cedar_context(context: Mapping[str, Any]) -> dict[str, Any]:
    """The context as Cedar receives it; raises ContextError naming the offending path."""
    converted = _convert(context, "context", 1)
    assert isinstance(converted, dict)
    return converted


def _uid(entity_type: str, entity_id: str) -> dict[str, str]:
    return {"type": entity_type, "id": entity_id}


def _deny(*errors: str, determining: tuple[str, ...] = ()) -> PolicyDecision:
    return PolicyDecision(False, determining, tuple(errors))


def evaluate(
    bundle: CompiledBundle, request: PolicyRequest, *, indexed: bool = True
) -> PolicyDecision:
    """Evaluate `request` under `bundle`, denying on anything but a clean Allow.

    1. Principal, action and resource must be non-empty strings.
    2. The context must convert to Cedar values (see the module docstring).
    3. Take the policies that can apply (the scope index), or all of them.
    4. Ask Cedar; an exception is a deny.
    5. Any error is a deny, whatever Cedar decided: skip-on-error is closed.
    6. NoDecision, or a decision Cedar does not document, is a deny.
    7. Allow needs a determining permit; Deny names its forbids.
    """
    # 1. The request variables.
    for name in ("principal", "action", "resource"):
        value = getattr(request, name)
        if not isinstance(value, str) or not value:
            return _deny(f"request has no {name}")
    # 2. The context.
    try:
        context = cedar_context(request.context)
    except ContextError as exc:
        return _deny(str(exc))
    # 3. The policies.
    principal = (PRINCIPAL_TYPE, request.principal)
    action = (ACTION_TYPE, request.action)
    resource = (RESOURCE_TYPE, request.resource)
    try:
        policy_set = (
            bundle.index.policy_set(principal, action, resource) if indexed else bundle.full_set
        )
        # 4. Cedar.
        result = cedarpy.is_authorized(
            {
                "principal": _uid(*principal),
                "action": _uid(*action),
                "resource": _uid(*resource),
                "context": context,
            },
            policy_set,
            [],
            schema=bundle.schema,
        )
        decision = result.decision
        reasons = tuple(sorted(str(r) for r in result.diagnostics.reasons))
        errors = tuple(sorted(str(e) for e in result.diagnostics.errors))
    except Exception as exc:  # cedarpy surfaces bad input and Rust panics as several types
        return _deny(f"evaluation failed: {type(exc).__name__}: {exc}")
    # 5. Errors deny. The forbids Cedar found satisfied still determine the deny.
    if errors:
        forbids = reasons if decision == cedarpy.Decision.Deny else ()
        return _deny(*errors, determining=forbids)
    # 6. NoDecision and the unknown.
    if decision == cedarpy.Decision.NoDecision:
        return _deny("Cedar reached no decision")
    if decision == cedarpy.Decision.Allow:
        # 7. An Allow stands only on permits of this bundle.
        if not reasons or any(bundle.effects.get(r) != "permit" for r in reasons):
            return _deny(f"Cedar allowed without a determining permit of this bundle: {reasons}")
        return PolicyDecision(True, reasons)
    if decision == cedarpy.Decision.Deny:
        if any(bundle.effects.get(r) != "forbid" for r in reasons):
            return _deny(f"Cedar denied citing policies that are not forbids: {reasons}")
        return PolicyDecision(False, reasons)
    return _deny(f"Cedar answered {decision!r}")
