"""Batches share transport, not fate: hostile requests never fail the valid ones beside them.

Over the real mesh: engine, verification, policy and lineage processes on a
real Postgres.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from govmesh.cli.devsetup import DEV_ISSUER, DEV_SUBJECT
from govmesh.client import EngineClient
from govmesh.engine.peers import BatchedVerification, GrpcVerification, open_channel
from govmesh.engine.protocols import PeerUnavailable
from govmesh.engine.requests import MAX_ARTIFACT_CHARS, MAX_CONTEXT_BYTES
from govmesh.v1 import verification_pb2, verification_pb2_grpc
from tests.integration.conftest import Mesh

#: JSON carries it as one byte, repr quotes it as four ('\x7f').
WIDE = "\x7f"

#: Batches as large as the engine makes them: one call in flight, and time for
#: many decisions to queue behind it. Deadlines for a busy machine.
BATCHING = {
    "GOVMESH_PEER_MAX_IN_FLIGHT": "1",
    "GOVMESH_PEER_LINGER_MS": "20",
    "GOVMESH_VERIFICATION_TIMEOUT_MS": "20000",
    "GOVMESH_POLICY_TIMEOUT_MS": "20000",
    "GOVMESH_LINEAGE_TIMEOUT_MS": "20000",
    "GOVMESH_DECISION_BUDGET_MS": "40000",
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unsigned_mandate(**claims: Any) -> str:
    """A mandate nobody signed, with JSON written raw (WIDE stays one byte)."""
    header = {"alg": "EdDSA", "typ": "govmesh-mandate+jwt", "kid": "issuer"}
    payload = {
        "iss": DEV_ISSUER,
        "sub": DEV_SUBJECT,
        "aud": "govmesh",
        "iat": int(time.time()),
        "nbf": int(time.time()),
        "exp": int(time.time()) + 600,
        "jti": "junk",
        "scope": [{"action": "payments.transfer", "resource": "account:acme/*"}],
        "env": {},
        "cnf": {"jkt": "junk"},
        **claims,
    }
    parts = [_b64(json.dumps(part, ensure_ascii=False).encode()) for part in (header, payload)]
    return ".".join([*parts, _b64(bytes(64))])


def hostile_request(mesh: Mesh) -> dict[str, Any]:
    """An unsigned mandate and a context at the engine's limits, built to maximize answers.

    Its issuer and audience are quoted by verification, its one context key
    (reserved, so refused) by policy's evaluation error: each four bytes for one.
    """
    pad = (MAX_ARTIFACT_CHARS - 1200) * 3 // 8
    mandate = unsigned_mandate(iss=WIDE * pad, aud=WIDE * pad)
    assert len(mandate) <= MAX_ARTIFACT_CHARS
    context = {"__" + WIDE * (MAX_CONTEXT_BYTES - 64): 1}
    return mesh.request(context=context, mandate=mandate)


async def test_hostile_requests_sharing_batches_never_fail_a_valid_one(
    start_mesh: Callable[..., Mesh],
) -> None:
    mesh = start_mesh(engine_env=BATCHING)
    hostile = [hostile_request(mesh) for _ in range(120)]
    valid = [mesh.request(context={"amount": n}) for n in range(1, 31)]
    # Interleaved, so that every batch mixes them.
    requests = [(False, h) for h in hostile]
    for n, request in enumerate(valid):
        requests.insert(n * 5, (True, request))

    async with await EngineClient.connect(mesh.engine.address, timeout=60) as engine:
        results = await asyncio.gather(*(engine.authorize(**r) for _, r in requests))

    answered = list(zip((v for v, _ in requests), results, strict=True))
    denied_valid = [(r.reason, r.message) for v, r in answered if v and not r.allowed]
    assert denied_valid == []
    assert all(r.decision == "DENY" for v, r in answered if not v)
    assert {r.reason for v, r in answered if not v} == {"INVALID_VERIFICATION"}


class _OversizedAnswers(verification_pb2_grpc.VerificationServicer):
    """A verification peer whose answer to one marked request is larger than a message holds."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    async def Verify(
        self, request: verification_pb2.VerifyRequest, context: Any
    ) -> verification_pb2.VerifyResponse:
        # One request a call gets what it would get in a batch of one.
        batch = verification_pb2.VerifyBatchRequest(requests=[request])
        return (await self.VerifyBatch(batch, context)).responses[0]

    async def VerifyBatch(
        self, request: verification_pb2.VerifyBatchRequest, context: Any
    ) -> verification_pb2.VerifyBatchResponse:
        self.batches.append(len(request.requests))
        return verification_pb2.VerifyBatchResponse(
            sequence=request.sequence,
            responses=[
                verification_pb2.VerifyResponse(
                    request_digest=r.request_digest,
                    message="x" * (5 * 1024 * 1024) if r.action == "poison" else "",
                )
                for r in request.requests
            ],
        )

    async def VerifyStream(
        self, request_iterator: AsyncIterator[verification_pb2.VerifyBatchRequest], context: Any
    ) -> AsyncIterator[verification_pb2.VerifyBatchResponse]:
        # The engine's transport: the oversized answer breaks the stream the
        # other batches share, which must not fail them.
        async for request in request_iterator:
            yield await self.VerifyBatch(request, context)


async def test_a_batch_whose_answer_is_too_large_is_resent_in_halves_over_grpc() -> None:
    # Whatever bound a peer promises, the engine does not rely on it alone: a
    # batch answer the channel refuses (RESOURCE_EXHAUSTED) is asked again in
    # halves, and only the request whose answer cannot travel fails.
    peer = _OversizedAnswers()
    server = grpc.aio.server()
    verification_pb2_grpc.add_VerificationServicer_to_server(peer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = open_channel(f"127.0.0.1:{port}")
    batcher = BatchedVerification(GrpcVerification(channel), max_in_flight=1)
    batcher.start()
    try:
        blocker = asyncio.ensure_future(
            batcher.verify(verification_pb2.VerifyRequest(request_digest="first"), timeout=20)
        )
        await asyncio.sleep(0)  # the rest queue behind it and travel as one batch
        actions = ["ok"] * 20
        actions[7] = "poison"
        answers = await asyncio.gather(
            blocker,
            *(
                batcher.verify(
                    verification_pb2.VerifyRequest(request_digest=str(n), action=action),
                    timeout=20,
                )
                for n, action in enumerate(actions)
            ),
            return_exceptions=True,
        )
    finally:
        await batcher.close()
        await channel.close()
        await server.stop(None)

    assert isinstance(answers[8], PeerUnavailable)
    assert "RESOURCE_EXHAUSTED" in str(answers[8])
    others = [a for n, a in enumerate(answers) if n != 8]
    assert [getattr(a, "request_digest", a) for a in others] == ["first"] + [
        str(n) for n in range(20) if n != 7
    ]
    assert 20 in peer.batches  # they did share a batch first
