"""The gRPC edge of the verification service."""

from __future__ import annotations

import grpc
from google.protobuf import json_format, struct_pb2

from govmesh.v1 import common_pb2, verification_pb2, verification_pb2_grpc
from govmesh.verification.core import VerificationInput, VerificationResult, Verifier


def _struct(value: object) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    if isinstance(value, dict):
        json_format.ParseDict(value, message)
    return message


def to_response(digest: str, result: VerificationResult) -> verification_pb2.VerifyResponse:
    """Translate a core result to the wire answer."""
    response = verification_pb2.VerifyResponse(
        request_digest=digest,
        verified=result.verified,
        reason=result.reason,  # type: ignore[arg-type]
    )
    for outcome in result.outcomes:
        response.checks.append(
            common_pb2.CheckResult(
                name=outcome.check.value,
                verdict=common_pb2.CHECK_PASSED if outcome.passed else common_pb2.CHECK_FAILED,
                reason=outcome.reason,  # type: ignore[arg-type]
                detail=outcome.detail,
            )
        )
    claims = result.claims
    if result.verified:
        cnf = claims.get("cnf")
        response.claims.CopyFrom(
            verification_pb2.VerifiedClaims(
                issuer=str(claims.get("iss", "")),
                subject=str(claims.get("sub", "")),
                mandate_id=str(claims.get("jti", "")),
                cnf_jkt=str(cnf.get("jkt", "")) if isinstance(cnf, dict) else "",
                env=_struct({}),
                attribution=_struct(claims.get("att", {})),
                mandate_expires_at=int(claims.get("exp", 0)),
            )
        )
    failed = [o.detail for o in result.outcomes if not o.passed and o.detail]
    response.message = "; ".join(dict.fromkeys(failed))
    return response


class VerificationServicer(verification_pb2_grpc.VerificationServicer):
    """Answers Verify calls from the core verifier."""

    def __init__(self, *, verifier: Verifier) -> None:
        self._verifier = verifier

    async def Verify(
        self,
        request: verification_pb2.VerifyRequest,
        context: grpc.aio.ServicerContext[
            verification_pb2.VerifyRequest, verification_pb2.VerifyResponse
        ],
    ) -> verification_pb2.VerifyResponse:
        result = self._verifier.verify(
            VerificationInput(
                request_digest=request.request_digest,
                action=request.action,
                resource=request.resource,
                mandate=request.mandate,
                proof=request.proof,
                attestation=request.attestation,
            )
        )
        return to_response(request.request_digest, result)
