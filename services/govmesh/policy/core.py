"""Cedar evaluation: pure logic, no gRPC.

Cedar skips a policy whose evaluation errors; govmesh does not: any error, and
any answer other than Allow, is a deny with the error named, so an erroring
forbid can never let a permit through.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cedarpy

from govmesh.runtime.errors import ConfigurationError


class PolicyLoadError(ConfigurationError):
    """Policies that cannot be loaded: missing, unparsable or empty."""


@dataclass(frozen=True)
class Bundle:
    """A parsed set of Cedar policies and the version it is known by."""

    version: str
    epoch: int
    policy_set: Any  # cedarpy.PolicySet
    source: str


@dataclass(frozen=True)
class PolicyInput:
    """One request, as Cedar will see it."""

    principal: str
    action: str
    resource: str
    context: dict[str, Any]


@dataclass(frozen=True)
class PolicyDecision:
    """Cedar's answer, closed: `allowed` only for Allow with no errors."""

    allowed: bool
    determining_policies: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def load_bundle(path: Path, *, epoch: int = 1) -> Bundle:
    """Parse a .cedar file, or every .cedar file in a folder, into one bundle."""
    files = sorted(path.glob("*.cedar")) if path.is_dir() else [path]
    try:
        sources = [(f.name, f.read_text()) for f in files]
    except OSError as exc:
        raise PolicyLoadError(f"cannot read policies at {path}: {exc.strerror}") from exc
    source = "\n".join(text for _, text in sources)
    if not source.strip():
        raise PolicyLoadError(f"no policies at {path}")
    try:
        policy_set = cedarpy.PolicySet.from_str(source)
    except (ValueError, RuntimeError) as exc:
        raise PolicyLoadError(f"policies at {path} do not parse: {exc}") from exc
    digest = hashlib.sha256(json.dumps(sources, sort_keys=True).encode()).hexdigest()
    return Bundle(version=digest, epoch=epoch, policy_set=policy_set, source=source)


def _cedar_value(value: Any) -> Any:
    # Struct numbers arrive as doubles; Cedar has only integers, so whole
    # numbers become Longs and anything else stays a float, which Cedar
    # refuses: an evaluation error, hence a deny.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _cedar_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cedar_value(v) for v in value]
    return value


def _euid(entity_type: str, entity_id: str) -> dict[str, str]:
    return {"type": entity_type, "id": entity_id}


def evaluate(bundle: Bundle, request: PolicyInput) -> PolicyDecision:
    """Evaluate `request` against `bundle`, denying on anything but a clean Allow."""
    cedar_request = {
        "principal": _euid("Agent", request.principal),
        "action": _euid("Action", request.action),
        "resource": _euid("Resource", request.resource),
        "context": _cedar_value(request.context),
    }
    try:
        result = cedarpy.is_authorized(cedar_request, bundle.policy_set, [])
    except Exception as exc:  # cedarpy surfaces Rust panics and bad input as several types
        return PolicyDecision(False, errors=[f"evaluation failed: {exc}"])
    errors = list(result.diagnostics.errors)
    # Name policies by their @id annotation where they have one.
    names = result.diagnostics.id_annotations_by_reason
    determining = [names.get(reason) or reason for reason in result.diagnostics.reasons]
    if result.decision == cedarpy.Decision.Allow and not errors:
        return PolicyDecision(True, determining)
    if result.decision == cedarpy.Decision.NoDecision and not errors:
        errors = ["no decision"]
    return PolicyDecision(False, determining if not result.allowed else [], errors)
