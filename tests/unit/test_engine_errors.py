"""Every exception the engine defines is a GovmeshError of exactly one kind."""

from __future__ import annotations

import importlib
import inspect

import pytest

from govmesh.runtime import errors

KINDS = (
    errors.ConfigurationError,
    errors.InvalidInput,
    errors.OutOfRange,
    errors.NotFound,
    errors.PermissionRefused,
    errors.Conflict,
    errors.PreconditionFailed,
    errors.Unavailable,
    errors.Exhausted,
    errors.IntegrityError,
)

#: The kind each engine exception is reported as: the gRPC status it would map to.
EXPECTED = {
    "govmesh.engine.protocols.PeerError": errors.Unavailable,
    "govmesh.engine.protocols.PeerTimeout": errors.Unavailable,
    "govmesh.engine.protocols.PeerUnavailable": errors.Unavailable,
    "govmesh.engine.protocols.PeerRejected": errors.Unavailable,
    "govmesh.engine.requests.MalformedRequest": errors.InvalidInput,
    "govmesh.engine.consistency.Inconsistent": errors.IntegrityError,
    "govmesh.engine.admission.Refused": errors.Exhausted,
    "govmesh.engine.floor.FloorUnverified": errors.IntegrityError,
}

MODULES = (
    "protocols",
    "requests",
    "claims",
    "consistency",
    "records",
    "core",
    "admission",
    "floor",
)


def _defined() -> dict[str, type[BaseException]]:
    found = {}
    for name in MODULES:
        module = importlib.import_module(f"govmesh.engine.{name}")
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == module.__name__:
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return found


def test_the_engine_defines_exactly_the_exceptions_listed_here() -> None:
    assert set(_defined()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_engine_exception_has_one_kind_and_the_expected_one(name: str) -> None:
    cls = _defined()[name]
    kinds = [kind for kind in KINDS if issubclass(cls, kind)]
    assert kinds == [EXPECTED[name]]


def test_a_malformed_request_is_still_a_value_error() -> None:
    from govmesh.engine.requests import MalformedRequest

    assert issubclass(MalformedRequest, ValueError)
