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


async def test_verify_stream_answers_each_batch_under_its_sequence(
    start_mesh: Callable[..., Mesh],
) -> None:
    mesh = start_mesh()
    forged = mesh.mandate()[:-4] + "AAAA"
    first = [_verify_request(mesh, 1), _verify_request(mesh, 2, mandate=forged)]
    second = [_verify_request(mesh, 3)]
    async with grpc.aio.insecure_channel(mesh.verification.address) as channel:
        call = verification_pb2_grpc.VerificationStub(channel).VerifyStream(timeout=10)
        for sequence, batch in ((7, first), (8, second), (9, [])):
            await call.write(
                verification_pb2.VerifyBatchRequest(
                    requests=batch, sequence=sequence, timeout_ms=5000
                )
            )
        await call.done_writing()
        answers = {a.sequence: a async for a in call}

    assert sorted(answers) == [7, 8, 9]
    assert [r.request_digest for r in answers[7].responses] == [r.request_digest for r in first]
    assert [r.verified for r in answers[7].responses] == [True, False]
    assert [r.request_digest for r in answers[8].responses] == [second[0].request_digest]
    assert answers[8].responses[0].verified
    # A batch the service will not take is an answered error, not a broken stream.
    assert "1..1024" in answers[9].error and not answers[9].responses


async def test_evaluate_stream_answers_each_batch_under_its_sequence(
    start_mesh: Callable[..., Mesh],
) -> None:
    mesh = start_mesh()
    batches = []
    for amount in (250, 5000):
        request = policy_pb2.EvaluateRequest(
            request_digest=f"digest-{amount}",
            principal="spiffe://govmesh.dev/agent/demo",
            issuer="https://issuer.govmesh.dev",
            action="payments.transfer",
            resource="account:acme/treasury",
        )
        request.context.update({"request": {"amount": amount}, "env": {}, "attribution": {}})
        batches.append([request])
    async with grpc.aio.insecure_channel(mesh.policy.address) as channel:
        call = policy_pb2_grpc.PolicyAuthorityStub(channel).EvaluateStream(timeout=10)
        for sequence, batch in enumerate(batches, start=1):
            await call.write(policy_pb2.EvaluateBatchRequest(requests=batch, sequence=sequence))
        await call.done_writing()
        answers = {a.sequence: a async for a in call}

    assert [answers[1].responses[0].request_digest, answers[2].responses[0].request_digest] == [
        "digest-250",
        "digest-5000",
    ]
    assert answers[1].responses[0].decision == common_pb2.ALLOW
    assert answers[2].responses[0].decision == common_pb2.DENY
    assert not answers[1].error and not answers[2].error
