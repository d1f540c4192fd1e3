"""Every exception govmesh defines has one kind, and every kind one gRPC status.

The kind decides what a gRPC edge answers (govmesh.runtime.status): an
exception with no kind would reach a caller as INTERNAL, one with two would
depend on the order of its bases.
"""

from __future__ import annotations

import importlib
from operator import attrgetter
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from govmesh.runtime import errors
from govmesh.runtime.errors import GovmeshError
from govmesh.runtime.status import ERROR_DOMAIN, STATUS_CODES, kinds_of, to_rpc_status

ROOT = Path(__file__).resolve().parents[2]

#: The kinds: what errors.py derives from GovmeshError itself.
KINDS: set[type[GovmeshError]] = {
    value
    for value in vars(errors).values()
    if isinstance(value, type)
    and issubclass(value, GovmeshError)
    and value is not GovmeshError
    and value.__module__ == errors.__name__
}


def _modules() -> list[str]:
    """Every module under services/govmesh and clients/govmesh (not a package's __main__)."""
    names = []
    for root in (ROOT / "services", ROOT / "clients"):
        for path in sorted((root / "govmesh").rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__main__":
                continue  # importing it would start the process
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join(parts))
    return names


def _subclasses(base: type[BaseException]) -> set[type[BaseException]]:
    found: set[type[BaseException]] = set()
    stack = [base]
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                stack.append(sub)
    return found


def _offenders(classes: set[type[BaseException]]) -> list[str]:
    """Each class below with not exactly one kind, named with its module and what it has."""
    problems = []
    for cls in classes:
        if cls in KINDS or cls is GovmeshError:
            continue
        kinds = kinds_of(cls)
        if not issubclass(cls, GovmeshError):
            problems.append(f"{cls.__module__}.{cls.__qualname__}: not a GovmeshError")
        elif len(kinds) != 1:
            named = ", ".join(k.__name__ for k in kinds) or "no kind"
            problems.append(f"{cls.__module__}.{cls.__qualname__}: {named}")
    return sorted(problems)


def _govmesh_exceptions() -> set[type[BaseException]]:
    for name in _modules():
        importlib.import_module(name)
    return {
        cls
        for cls in _subclasses(Exception)
        if cls.__module__.startswith("govmesh.") and not cls.__module__.endswith("_pb2")
    }


def test_every_kind_has_a_status_code_and_nothing_else_has_one() -> None:
    assert set(STATUS_CODES) == KINDS
    assert len(KINDS) == 10


def test_every_exception_govmesh_defines_derives_from_exactly_one_kind() -> None:
    offenders = _offenders(_govmesh_exceptions())
    assert not offenders, "exceptions without exactly one kind:\n" + "\n".join(offenders)


def test_the_check_names_a_class_with_no_kind_two_kinds_or_no_root() -> None:
    class Rootless(ValueError):
        pass

    class Kindless(GovmeshError):
        pass

    class Torn(errors.NotFound, errors.Conflict):
        pass

    class Sound(errors.NotFound, LookupError):
        pass

    offenders = _offenders({Rootless, Kindless, Torn, Sound})

    assert [line.split(": ", 1)[1] for line in offenders] == [
        "no kind",
        "not a GovmeshError",
        "NotFound, Conflict",
    ]


def _details(status: status_pb2.Status) -> list[object]:
    found: list[object] = []
    for detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo):
            message = kind()
            if detail.Unpack(message):
                found.append(message)
    return found


@pytest.mark.parametrize("kind", sorted(KINDS, key=attrgetter("__name__")))
def test_a_kind_becomes_its_code_with_the_message_and_an_error_info(
    kind: type[GovmeshError],
) -> None:
    class SomethingWrong(kind):  # type: ignore[valid-type, misc]
        pass

    status = to_rpc_status(SomethingWrong("what is wrong"))

    assert status.code == STATUS_CODES[kind].value[0]
    assert status.message == "what is wrong"
    [info] = _details(status)
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert (info.domain, info.reason) == (ERROR_DOMAIN, "SOMETHING_WRONG")


def test_the_table_is_the_one_the_contract_names() -> None:
    codes = {kind.__name__: code for kind, code in STATUS_CODES.items()}
    assert codes == {
        "InvalidInput": grpc.StatusCode.INVALID_ARGUMENT,
        "OutOfRange": grpc.StatusCode.OUT_OF_RANGE,
        "NotFound": grpc.StatusCode.NOT_FOUND,
        "PermissionRefused": grpc.StatusCode.PERMISSION_DENIED,
        "Conflict": grpc.StatusCode.ABORTED,
        "PreconditionFailed": grpc.StatusCode.FAILED_PRECONDITION,
        "Unavailable": grpc.StatusCode.UNAVAILABLE,
        "Exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
        "IntegrityError": grpc.StatusCode.DATA_LOSS,
        "ConfigurationError": grpc.StatusCode.UNAVAILABLE,
    }


def test_an_exhausted_error_may_say_when_to_ask_again() -> None:
    status = to_rpc_status(
        errors.Exhausted("busy"), reason="BUSY", metadata={"queued": "3"}, retry_delay=0.25
    )

    info, retry = _details(status)
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert (info.reason, dict(info.metadata)) == ("BUSY", {"queued": "3"})
    assert retry.retry_delay.ToNanoseconds() == 250_000_000


def test_anything_else_is_internal_and_tells_the_caller_nothing_of_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    try:
        raise KeyError("/etc/secret-path")
    except KeyError as exc:
        bug = exc

    status = to_rpc_status(bug, message="leak", reason="LEAK", internal_message="policy failed")

    assert status.code == grpc.StatusCode.INTERNAL.value[0]
    assert status.message == "policy failed"
    [info] = _details(status)
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == "INTERNAL"
    assert "secret" not in status.SerializeToString().decode("utf-8", "replace")
    # The server's log has it, traceback and all.
    assert "secret-path" in caplog.text
    assert caplog.records[-1].exc_info is not None
