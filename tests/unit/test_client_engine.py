"""The client reads every gRPC error as a DENY, and says when asking again may help."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from govmesh.client import AuthorizationResult
from govmesh.engine.admission import Refusal, Refused
from govmesh.engine.servicer import refusal_status


def _error(
    code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, str | bytes], ...] = ()
) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details=details
    )


def _as_sent(status: grpc.Status) -> grpc.aio.AioRpcError:
    return _error(status.code, status.details, tuple(status.trailing_metadata))


@pytest.mark.parametrize("why", list(Refusal))
def test_the_engines_refusal_is_a_retryable_unanswered_deny(why: Refusal) -> None:
    error = _as_sent(refusal_status(Refused(why, expected_wait_s=0.25, queued=3)))

    result = AuthorizationResult.no_answer(error)

    assert result.decision == "DENY"
    assert not result.allowed
    assert result.answered is False
    assert result.retryable is True
    assert result.error_code == "RESOURCE_EXHAUSTED"
    assert result.reason == "PEER_UNAVAILABLE"
    assert why.value in result.message
    assert result.to_dict()["retryable"] is True


def test_grpcs_own_resource_exhausted_is_a_request_too_large_and_not_retryable() -> None:
    # What grpc answers for a message over the size limit: no engine detail.
    error = _error(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max")

    result = AuthorizationResult.no_answer(error)

    assert result.reason == "MALFORMED_REQUEST"
    assert result.retryable is False
    assert not result.allowed


def test_grpcs_concurrent_rpc_limit_is_a_busy_engine_and_retryable() -> None:
    # What grpc.aio.server(maximum_concurrent_rpcs=...) answers beyond its limit.
    error = _error(grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!")

    result = AuthorizationResult.no_answer(error)

    assert (result.reason, result.retryable, result.answered) == ("PEER_UNAVAILABLE", True, False)
    assert not result.allowed


def _status_with(info: error_details_pb2.ErrorInfo, *, message: str) -> status_pb2.Status:
    detail = any_pb2.Any()
    detail.Pack(info)
    return status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=message, details=[detail])


def test_a_refusal_from_another_domain_or_contradicting_its_call_is_not_the_engines() -> None:
    foreign = rpc_status.to_status(
        _status_with(
            error_details_pb2.ErrorInfo(reason="ADMISSION_QUEUE_FULL", domain="example.com"),
            message="busy",
        )
    )
    assert AuthorizationResult.no_answer(_as_sent(foreign)).retryable is False
    # The rich status says one message, the call another: not trusted.
    ours = rpc_status.to_status(
        _status_with(
            error_details_pb2.ErrorInfo(reason="ADMISSION_QUEUE_FULL", domain="govmesh.dev"),
            message="engine busy: queue full",
        )
    )
    contradicting = _error(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "other", tuple(ours.trailing_metadata)
    )
    assert AuthorizationResult.no_answer(contradicting).retryable is False
    garbage = _error(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "x", (("grpc-status-details-bin", b"\xff\x00junk"),)
    )
    result = AuthorizationResult.no_answer(garbage)
    assert result.retryable is False
    assert result.reason == "MALFORMED_REQUEST"


@pytest.mark.parametrize(
    ("code", "reason", "retryable"),
    [
        (grpc.StatusCode.UNAVAILABLE, "PEER_UNAVAILABLE", True),
        # The caller's time is spent and the engine may have decided already.
        (grpc.StatusCode.DEADLINE_EXCEEDED, "PEER_TIMEOUT", False),
        (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST", False),
        (grpc.StatusCode.INTERNAL, "PEER_UNAVAILABLE", False),
        (grpc.StatusCode.UNKNOWN, "PEER_UNAVAILABLE", False),
        (grpc.StatusCode.CANCELLED, "PEER_UNAVAILABLE", False),
        (grpc.StatusCode.PERMISSION_DENIED, "PEER_UNAVAILABLE", False),
    ],
)
def test_other_errors_are_unanswered_denies_retryable_when_the_engine_was_unreachable(
    code: grpc.StatusCode, reason: str, retryable: bool
) -> None:
    result = AuthorizationResult.no_answer(_error(code, "x"))

    assert (result.decision, result.reason, result.retryable) == ("DENY", reason, retryable)
    assert result.answered is False
    assert result.error_code == code.name
    assert not result.allowed


def test_an_error_that_is_not_grpcs_is_an_unanswered_deny_not_retried() -> None:
    result = AuthorizationResult.no_answer(RuntimeError("channel closed"))
    assert (result.decision, result.answered, result.retryable) == ("DENY", False, False)
