"""VerifyBatch and EvaluateBatch on the real services: in order, each answer its own."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from google.protobuf import json_format

from govmesh.artifacts.canonical import request_digest
from govmesh.v1 import (
    common_pb2,
    policy_pb2,
    policy_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)
from tests.integration.conftest import Mesh


def _verify_request(
    mesh: Mesh, amount: int, mandate: str | None = None
) -> verification_pb2.VerifyRequest:
    fields = mesh.request(context={"amount": amount}, mandate=mandate)
    request = verification_pb2.VerifyRequest(
        request_digest=request_digest(fields["action"], fields["resource"], fields["context"]),
        action=fields["action"],
        resource=fields["resource"],
        mandate=fields["mandate"],
        proof=fields["proof"],
    )
    json_format.ParseDict(fields["context"], request.context)
    return request


async def test_verify_batch_answers_each_request_in_order(start_mesh: Callable[..., Mesh]) -> None:
    mesh = start_mesh()
    forged = mesh.mandate()[:-4] + "AAAA"
    requests = [
        _verify_request(mesh, 1),
        _verify_request(mesh, 2, mandate=forged),
        _verify_request(mesh, 3),
    ]
    async with grpc.aio.insecure_channel(mesh.verification.address) as channel:
        stub = verification_pb2_grpc.VerificationStub(channel)
        answer = await stub.VerifyBatch(
            verification_pb2.VerifyBatchRequest(requests=requests), timeout=10
        )
        with pytest.raises(grpc.aio.AioRpcError) as empty:
            await stub.VerifyBatch(verification_pb2.VerifyBatchRequest(), timeout=10)

    assert [r.request_digest for r in answer.responses] == [r.request_digest for r in requests]
    assert [r.verified for r in answer.responses] == [True, False, True]
    assert answer.responses[1].reason == common_pb2.INVALID_VERIFICATION
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_evaluate_batch_answers_under_one_bundle_in_order(
    start_mesh: Callable[..., Mesh],
) -> None:
    mesh = start_mesh()
    requests = []
    for n, amount in enumerate((250, 5000, 999)):
        request = policy_pb2.EvaluateRequest(
            request_digest=f"digest-{n}",
            principal="spiffe://govmesh.dev/agent/demo",
            issuer="https://issuer.govmesh.dev",
            action="payments.transfer",
            resource="account:acme/treasury",
        )
        json_format.ParseDict(
            {"request": {"amount": amount}, "env": {}, "attribution": {}}, request.context
        )
        requests.append(request)
    async with grpc.aio.insecure_channel(mesh.policy.address) as channel:
        stub = policy_pb2_grpc.PolicyAuthorityStub(channel)
        answer = await stub.EvaluateBatch(
            policy_pb2.EvaluateBatchRequest(requests=requests), timeout=10
        )

    assert [r.request_digest for r in answer.responses] == ["digest-0", "digest-1", "digest-2"]
    assert [r.decision for r in answer.responses] == [
        common_pb2.ALLOW,
        common_pb2.DENY,
        common_pb2.ALLOW,
    ]
    assert len({(r.bundle.version, r.bundle.epoch) for r in answer.responses}) == 1
