"""The engine client: async first, with a thin synchronous wrapper."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Self

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry import propagate

from govmesh.artifacts.canonical import CanonicalizationError, request_digest
from govmesh.runtime.channel import ChannelClient
from govmesh.runtime.status import ERROR_DOMAIN
from govmesh.v1 import common_pb2, engine_pb2, engine_pb2_grpc

DEFAULT_TIMEOUT_S = 1.0

#: The ErrorInfo reasons of the engine's admission refusals (engine.servicer):
#: the engine was too busy to decide, and the same request may be sent again.
_BUSY_REASONS = frozenset({"ADMISSION_QUEUE_FULL", "ADMISSION_DEADLINE_TOO_SHORT"})

#: What grpc's server answers when it holds its maximum_concurrent_rpcs calls:
#: the engine refused the call before reading it, as busy as a full queue.
_SERVER_LIMIT_DETAILS = "Concurrent RPC limit exceeded!"

#: Codes after which asking again may get a decision: the engine was busy or
#: could not be reached. A DEADLINE_EXCEEDED is not among them: the caller's
#: own time is spent, and the engine may have decided the request already.
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


class Decision(StrEnum):
    """What the engine decided; a string, so that it compares and prints as "ALLOW" or "DENY"."""

    ALLOW = "ALLOW"
    DENY = "DENY"


@dataclass(frozen=True)
class AuthorizationResult:
    """The engine's answer, or a DENY standing in for no answer."""

    decision: Decision
    reason: str  # a DenyReason name; "DENY_REASON_UNSPECIFIED" with ALLOW
    decision_id: str = ""
    failed_checks: tuple[str, ...] = ()
    grant: str = ""
    lineage: common_pb2.LineageReceipt | None = None
    message: str = ""
    request_digest: str = ""
    answered: bool = field(default=True)  # False when the engine gave no answer
    #: The digest of the request this client sent; an answer for another does not allow.
    expected_digest: str = ""
    #: Without an answer: whether asking again may get one (the engine was busy
    #: or unreachable). A retry asks for a new decision, with a fresh proof
    #: unless the engine refused the request before deciding it; a grant is
    #: never reused or replayed.
    retryable: bool = False
    #: Without an answer: the gRPC status code name ("RESOURCE_EXHAUSTED", ...).
    error_code: str = ""
    #: Without an answer: the google.rpc.ErrorInfo reason govmesh sent with the
    #: error ("ADMISSION_QUEUE_FULL", ...), or "" when it sent none.
    error_reason: str = ""

    @property
    def allowed(self) -> bool:
        """True only for an answered ALLOW for this very request, with a grant and a receipt.

        The executing side still verifies the grant itself (govmesh.client.verify_grant)
        before it runs anything: this says what the engine answered, not more.
        """
        return (
            self.answered
            and self.decision is Decision.ALLOW
            and self.reason == "DENY_REASON_UNSPECIFIED"
            and bool(self.grant)
            and bool(self.decision_id)
            and self.lineage is not None
            and bool(self.expected_digest)
            and self.request_digest == self.expected_digest
        )

    @classmethod
    def from_response(
        cls, response: engine_pb2.AuthorizeResponse, *, expected_digest: str = ""
    ) -> AuthorizationResult:
        """Translate the wire answer; an unknown decision reads as DENY."""
        decision = Decision.ALLOW if response.decision == common_pb2.ALLOW else Decision.DENY
        try:
            reason = common_pb2.DenyReason.Name(response.reason)
        except ValueError:
            reason = "INTERNAL_ERROR"
        if decision is Decision.DENY and reason == "DENY_REASON_UNSPECIFIED":
            reason = "INTERNAL_ERROR"
        return cls(
            decision=decision,
            reason=reason,
            decision_id=response.decision_id,
            failed_checks=tuple(response.failed_checks),
            grant=response.grant if decision is Decision.ALLOW else "",
            lineage=response.lineage if response.HasField("lineage") else None,
            message=response.message,
            request_digest=response.request_digest,
            expected_digest=expected_digest,
        )

    @classmethod
    def no_answer(cls, error: grpc.aio.AioRpcError | Exception) -> AuthorizationResult:
        """The DENY a caller gets when the engine did not answer."""
        if not isinstance(error, grpc.aio.AioRpcError):
            return cls(
                decision=Decision.DENY,
                reason="PEER_UNAVAILABLE",
                message=f"no answer from the engine: {error}",
                answered=False,
            )
        code = error.code()
        error_reason = _error_reason(error)
        retryable = code in _RETRYABLE
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            reason = "PEER_TIMEOUT"
        elif code == grpc.StatusCode.RESOURCE_EXHAUSTED and (
            error_reason in _BUSY_REASONS or error.details() == _SERVER_LIMIT_DETAILS
        ):
            # The engine refused before deciding (busy): nothing was decided or
            # recorded, and the same request may be sent again.
            reason = "PEER_UNAVAILABLE"
            retryable = True
        elif code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
            # Without the engine's refusal reason, RESOURCE_EXHAUSTED is grpc's
            # own: a message over the size limit, which asking again won't fix.
            reason = "MALFORMED_REQUEST"
        else:
            reason = "PEER_UNAVAILABLE"
        return cls(
            decision=Decision.DENY,
            reason=reason,
            message=f"no answer from the engine: {code.name} {error.details() or ''}".strip(),
            answered=False,
            retryable=retryable,
            error_code=code.name,
            error_reason=error_reason,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (the CLI prints it)."""
        doc: dict[str, Any] = {
            "decision": str(self.decision),
            "reason": self.reason,
            "decision_id": self.decision_id,
            "failed_checks": list(self.failed_checks),
            "message": self.message,
            "request_digest": self.request_digest,
        }
        if self.grant:
            doc["grant"] = self.grant
        if self.lineage is not None:
            doc["lineage"] = {
                "index": self.lineage.index,
                "leaf_hash": self.lineage.leaf_hash.hex(),
                "tree_size": self.lineage.tree_size,
                "checkpoint": self.lineage.checkpoint,
            }
        if not self.answered:
            doc["answered"] = False
            doc["retryable"] = self.retryable
            doc["error_code"] = self.error_code
            if self.error_reason:
                doc["error_reason"] = self.error_reason
        return doc


def _error_reason(error: grpc.aio.AioRpcError) -> str:
    """The google.rpc.ErrorInfo reason govmesh attached to the error, or "" without one."""
    try:
        status = rpc_status.from_call(error)
    except (ValueError, DecodeError):
        return ""  # a status that contradicts the call's own is nobody's refusal
    if status is None:
        return ""
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Is(info.DESCRIPTOR) and detail.Unpack(info) and info.domain == ERROR_DOMAIN:
            reason: str = info.reason
            return reason
    return ""


class EngineClient(ChannelClient):
    """An async client of the AuthorizationEngine API."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float) -> None:
        super().__init__(channel)
        self._stub = engine_pb2_grpc.AuthorizationEngineStub(channel)
        self._timeout = timeout

    @classmethod
    async def connect(
        cls,
        target: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> Self:
        """Open a channel to the engine at `target` ("host:port")."""
        options = [("grpc.max_reconnect_backoff_ms", 1000)]
        if credentials is None:
            channel = grpc.aio.insecure_channel(target, options=options)
        else:
            channel = grpc.aio.secure_channel(target, credentials, options=options)
        return cls(channel, timeout=timeout)

    async def authorize(
        self,
        *,
        action: str,
        resource: str,
        mandate: str,
        proof: str,
        context: Mapping[str, Any] | None = None,
        attestation: str = "",
        timeout: float | None = None,
    ) -> AuthorizationResult:
        """Ask the engine; any failure to get an answer returns a DENY."""
        request = engine_pb2.AuthorizeRequest(
            action=action,
            resource=resource,
            mandate=mandate,
            proof=proof,
            attestation=attestation,
        )
        try:
            json_format.ParseDict(dict(context or {}), request.context)
        except (json_format.ParseError, TypeError, ValueError) as exc:
            return AuthorizationResult(
                decision=Decision.DENY,
                reason="MALFORMED_REQUEST",
                message=f"context is not JSON: {exc}",
                answered=False,
            )
        return await self.authorize_request(request, timeout=timeout)

    async def authorize_request(
        self, request: engine_pb2.AuthorizeRequest, *, timeout: float | None = None
    ) -> AuthorizationResult:
        """Send a prepared AuthorizeRequest; any failure returns a DENY."""
        try:
            expected = request_digest(
                request.action, request.resource, json_format.MessageToDict(request.context)
            )
        except (CanonicalizationError, ValueError, TypeError) as exc:
            return AuthorizationResult(
                decision=Decision.DENY,
                reason="MALFORMED_REQUEST",
                message=f"context has no canonical form: {exc}",
                answered=False,
            )
        try:
            # The caller's current OpenTelemetry trace (if any) continues in the
            # engine, and the decision's lineage entry names it.
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            response = await self._stub.Authorize(
                request, timeout=timeout or self._timeout, metadata=tuple(carrier.items()) or None
            )
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, RuntimeError) as exc:
            return AuthorizationResult.no_answer(exc)
        return AuthorizationResult.from_response(response, expected_digest=expected)


class SyncEngineClient:
    """A blocking wrapper over EngineClient, for code without an event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: EngineClient) -> None:
        self._loop = loop
        self._client = client

    @classmethod
    def connect(cls, target: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> SyncEngineClient:
        """Open a channel on a private event loop."""
        loop = asyncio.new_event_loop()
        client = loop.run_until_complete(EngineClient.connect(target, timeout=timeout))
        return cls(loop, client)

    def authorize(self, **kwargs: Any) -> AuthorizationResult:
        """Same arguments as EngineClient.authorize."""
        return self._loop.run_until_complete(self._client.authorize(**kwargs))

    def close(self) -> None:
        """Close the channel and the private loop."""
        self._loop.run_until_complete(self._client.close())
        self._loop.close()

    def __enter__(self) -> SyncEngineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
