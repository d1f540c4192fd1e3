"""The gRPC edge of the verification service: protobuf in, core result out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from govmesh.artifacts.answers import MAX_MESSAGE_TEXT_BYTES, clip, verify_answer_bound
from govmesh.artifacts.structs import struct_to_dict
from govmesh.runtime.status import abort_with
from govmesh.runtime.streams import BatchSizeError, answer_batches
from govmesh.v1 import common_pb2, verification_pb2, verification_pb2_grpc
from govmesh.verification.core import VerificationInput, VerificationResult, Verifier
from govmesh.verification.metrics import VerificationMetrics

logger = logging.getLogger(__name__)

#: Kept back from the caller's deadline to send the answer.
DEADLINE_MARGIN_S = 0.002
#: The most requests one VerifyBatch may carry.
MAX_BATCH = 1024
#: What a caller reads when verification fails in a way it did not mean to.
INTERNAL_MESSAGE = "verification failed"


def _timeout(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else max(0.0, remaining - DEADLINE_MARGIN_S)


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def to_input(request: verification_pb2.VerifyRequest) -> VerificationInput:
    """Translate the wire request; a context that is not JSON reaches core as None."""
    try:
        context = struct_to_dict(request.context)
    except (ValueError, TypeError):
        context = None
    return VerificationInput(
        request_digest=request.request_digest,
        action=request.action,
        resource=request.resource,
        context=context,
        mandate=request.mandate,
        proof=request.proof,
        attestation=request.attestation,
    )


def to_response(result: VerificationResult) -> verification_pb2.VerifyResponse:
    """Translate a core result to the wire answer, each detail and the message clipped.

    Clipped so that the answer of an unverified request stays within
    `verify_answer_bound` whatever its artifacts quote.
    """
    response = verification_pb2.VerifyResponse(
        request_digest=result.request_digest,
        verified=result.verified,
        reason=result.reason,
        trust_version=result.trust_version,
    )
    checks = response.checks
    for outcome in result.outcomes:
        if outcome.passed:
            checks.add(name=outcome.check.value, verdict=common_pb2.CHECK_PASSED)
        else:
            checks.add(
                name=outcome.check.value,
                verdict=common_pb2.CHECK_FAILED,
                reason=outcome.reason,
                detail=clip(outcome.detail),
            )
    claims = result.claims
    if claims is not None:
        response.claims.CopyFrom(
            verification_pb2.VerifiedClaims(
                issuer=claims.issuer,
                subject=claims.subject,
                mandate_id=claims.mandate_id,
                cnf_jkt=claims.cnf_jkt,
                env=_struct(dict(claims.env)),
                attribution=_struct(dict(claims.attribution)),
                mandate_expires_at=claims.mandate_expires_at,
                proof_id=claims.proof_id,
                attestor=claims.attestor,
                measurements=list(claims.measurements),
            )
        )
        response.message = "verified"
    else:
        response.message = clip(
            "; ".join(f"{c.name}: {c.detail}" for c in response.checks if c.detail),
            MAX_MESSAGE_TEXT_BYTES,
        )
    return response


class VerificationServicer(verification_pb2_grpc.VerificationServicer):
    """Answers Verify calls from the core verifier."""

    def __init__(self, *, verifier: Verifier, metrics: VerificationMetrics | None = None) -> None:
        self._verifier = verifier
        self._metrics = metrics

    async def Verify(
        self,
        request: verification_pb2.VerifyRequest,
        context: grpc.aio.ServicerContext[
            verification_pb2.VerifyRequest, verification_pb2.VerifyResponse
        ],
    ) -> verification_pb2.VerifyResponse:
        try:
            return await self._verify(request, _timeout(context))
        except Exception as exc:
            await abort_with(context, exc, internal_message=INTERNAL_MESSAGE)

    async def VerifyBatch(
        self,
        request: verification_pb2.VerifyBatchRequest,
        context: grpc.aio.ServicerContext[
            verification_pb2.VerifyBatchRequest, verification_pb2.VerifyBatchResponse
        ],
    ) -> verification_pb2.VerifyBatchResponse:
        if not 0 < len(request.requests) <= MAX_BATCH:
            await abort_with(context, BatchSizeError(MAX_BATCH, "requests"))
        try:
            responses = await self._verify_all(request.requests, _timeout(context))
        except Exception as exc:
            await abort_with(context, exc, internal_message=INTERNAL_MESSAGE)
        return verification_pb2.VerifyBatchResponse(responses=responses)

    async def VerifyStream(
        self,
        request_iterator: AsyncIterator[verification_pb2.VerifyBatchRequest],
        context: grpc.aio.ServicerContext[
            verification_pb2.VerifyBatchRequest, verification_pb2.VerifyBatchResponse
        ],
    ) -> AsyncIterator[verification_pb2.VerifyBatchResponse]:
        async def answer(
            request: verification_pb2.VerifyBatchRequest,
        ) -> verification_pb2.VerifyBatchResponse:
            response = verification_pb2.VerifyBatchResponse(sequence=request.sequence)
            if not 0 < len(request.requests) <= MAX_BATCH:
                response.error = str(BatchSizeError(MAX_BATCH, "requests"))
                return response
            # The caller's wait, as a unary call's deadline would bound it.
            timeout = max(0.0, request.timeout_ms / 1000 - DEADLINE_MARGIN_S)
            try:
                response.responses.extend(
                    await self._verify_all(
                        request.requests, timeout if request.timeout_ms else None
                    )
                )
            except Exception:
                logger.exception("verification batch failed")
                response.error = INTERNAL_MESSAGE
            return response

        async for response in answer_batches(request_iterator, answer):
            yield response

    async def _verify_all(
        self, requests: Any, timeout: float | None
    ) -> list[verification_pb2.VerifyResponse]:
        # Concurrently, so that the batch's replay nonces share commits.
        return list(await asyncio.gather(*(self._verify(r, timeout) for r in requests)))

    async def _verify(
        self, request: verification_pb2.VerifyRequest, timeout: float | None
    ) -> verification_pb2.VerifyResponse:
        result = await self._verifier.verify(to_input(request), timeout=timeout)
        if self._metrics is not None:
            self._metrics.verified(result)
        try:
            response = to_response(result)
        except (ValueError, TypeError, OverflowError, json_format.ParseError):
            # Claims that protobuf cannot carry (e.g. an integer beyond a
            # double's range) are not vouched for: the answer is a deny.
            return _internal_error(result.request_digest, "verified claims cannot be represented")
        if response.ByteSize() > verify_answer_bound(request):
            # Only claims can grow this large, and only past what any mandate
            # and attestation within the engine's limits can state: a deny,
            # rather than an answer that could fail the batch it travels in.
            return _internal_error(result.request_digest, "verified claims are too large")
        return response


def _internal_error(digest: str, detail: str) -> verification_pb2.VerifyResponse:
    return to_response(VerificationResult.internal_error(digest, detail))
