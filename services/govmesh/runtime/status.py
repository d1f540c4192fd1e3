"""The one table from error kinds to gRPC status codes, and how an edge reports an error.

A servicer reports every failure the same way: the kind of the GovmeshError
(govmesh.runtime.errors) picks the code from `STATUS_CODES`, the exception's
message is the status message, and a google.rpc.Status carries a
google.rpc.ErrorInfo with the class's stable reason, so that a caller tells
refusals apart without parsing text. An Exhausted error may add a
google.rpc.RetryInfo saying when to ask again.

Anything that is not a GovmeshError is a bug, not a refusal: the caller gets
INTERNAL with a generic message (a traceback could disclose internals), and
the server's log gets the traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from govmesh.runtime.errors import (
    ConfigurationError,
    Conflict,
    Exhausted,
    GovmeshError,
    IntegrityError,
    InvalidInput,
    NotFound,
    OutOfRange,
    PermissionRefused,
    PreconditionFailed,
    Unavailable,
)

logger = logging.getLogger(__name__)

#: The google.rpc.ErrorInfo domain of every govmesh error (the client reads it).
ERROR_DOMAIN: Final = "govmesh.dev"

#: The ErrorInfo reason and default message of an error that is not govmesh's own.
INTERNAL_REASON: Final = "INTERNAL"
INTERNAL_MESSAGE: Final = "internal error"

#: The one mapping from an error's kind to the gRPC status code an edge sends.
STATUS_CODES: Final[Mapping[type[GovmeshError], grpc.StatusCode]] = MappingProxyType(
    {
        InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
        OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
        NotFound: grpc.StatusCode.NOT_FOUND,
        PermissionRefused: grpc.StatusCode.PERMISSION_DENIED,
        Conflict: grpc.StatusCode.ABORTED,
        PreconditionFailed: grpc.StatusCode.FAILED_PRECONDITION,
        Unavailable: grpc.StatusCode.UNAVAILABLE,
        Exhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
        IntegrityError: grpc.StatusCode.DATA_LOSS,
        # A service whose own settings, files or peers are unusable cannot
        # answer until its operator acts; nothing the caller changes helps, so
        # not FAILED_PRECONDITION (which asks the caller to fix the state). A
        # caller treats it as it treats a service that is down.
        ConfigurationError: grpc.StatusCode.UNAVAILABLE,
    }
)


def kinds_of(error: type[BaseException]) -> list[type[GovmeshError]]:
    """The kinds `error` derives from, most specific first (exactly one, for a sound class)."""
    return [base for base in error.__mro__ if base in STATUS_CODES]


def status_code(error: BaseException) -> grpc.StatusCode:
    """The code an edge sends for `error`: its kind's, or INTERNAL for anything else."""
    kinds = kinds_of(type(error))
    return STATUS_CODES[kinds[0]] if kinds else grpc.StatusCode.INTERNAL


def to_rpc_status(
    error: BaseException,
    *,
    message: str | None = None,
    reason: str | None = None,
    metadata: Mapping[str, str] | None = None,
    retry_delay: float | None = None,
    internal_message: str = INTERNAL_MESSAGE,
) -> status_pb2.Status:
    """The google.rpc.Status an edge sends for `error`.

    `message` replaces the exception's text (for an edge that words the error
    for its callers), `reason` the class's reason (for a class whose
    instances differ), `metadata` goes into the ErrorInfo, and `retry_delay`
    (seconds) adds a RetryInfo. An error that is not a GovmeshError gets
    INTERNAL with `internal_message` and nothing else it asks for; its
    traceback is logged here, never sent.
    """
    if isinstance(error, GovmeshError):
        text = str(error) if message is None else message
        why = error.reason_code() if reason is None else reason
    else:
        logger.error("unexpected error answered as INTERNAL", exc_info=error)
        text, why, metadata, retry_delay = internal_message, INTERNAL_REASON, None, None
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=why, domain=ERROR_DOMAIN, metadata=metadata))
    details = [info]
    if retry_delay is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(max(retry_delay, 0.0) * 1e9))
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(retry)
    return status_pb2.Status(code=status_code(error).value[0], message=text, details=details)


async def abort_with(
    context: grpc.aio.ServicerContext[Any, Any],
    error: BaseException,
    *,
    message: str | None = None,
    internal_message: str = INTERNAL_MESSAGE,
) -> NoReturn:
    """End the call with the status of `error` (see `to_rpc_status` for the arguments).

    An edge with more to say (a reason per instance, metadata, a retry
    delay) sends `to_rpc_status(...)` with `context.abort_with_status`
    itself. An abort already under way (grpc's AbortError, caught on its
    way out by a handler's own `except`) is passed on unchanged.
    """
    if isinstance(error, grpc.aio.AbortError):
        raise error
    status = to_rpc_status(error, message=message, internal_message=internal_message)
    await context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("abort returned")  # pragma: no cover
