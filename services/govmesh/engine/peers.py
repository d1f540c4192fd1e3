"""gRPC adapters for the engine's peers: stubs in, PeerTimeout/PeerUnavailable out."""

from __future__ import annotations

from typing import Any

import grpc

from govmesh.artifacts.answers import evaluate_answer_bound, verify_answer_bound
from govmesh.engine.batching import Batcher
from govmesh.engine.floor import StoreActivation
from govmesh.engine.protocols import PeerError, PeerRejected, PeerTimeout, PeerUnavailable
from govmesh.engine.streams import REJECTED_CALL, BatchStream
from govmesh.v1 import (
    lineage_pb2,
    lineage_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)

# Reconnect fast: a peer that comes back is used again within about a second.
# grpc.min_reconnect_backoff_ms is also the shortest time a connection attempt
# may take; a peer that accepts TCP and then hangs is therefore seen as a
# deadline miss (PEER_TIMEOUT), a refused connection as PEER_UNAVAILABLE.
CHANNEL_OPTIONS = [
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 2000),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
]


def open_channel(target: str) -> grpc.aio.Channel:
    """An insecure channel to a peer (mTLS arrives with its own settings)."""
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)


def peer_error(peer: str, error: grpc.aio.AioRpcError) -> PeerError:
    """Map a failed call to the engine's view of it."""
    if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return PeerTimeout(f"{peer}: deadline exceeded")
    text = f"{error.code().name}: {error.details() or ''}".strip()
    if error.code() in REJECTED_CALL:
        return PeerRejected(text)
    return PeerUnavailable(text)


def _timeout_ms(timeout: float) -> int:
    return max(1, min(int(timeout * 1000), 2**32 - 1))


class GrpcVerification:
    """The verification service over gRPC; batches travel on VerifyStream."""

    def __init__(self, channel: grpc.aio.Channel, *, streams: int = 2) -> None:
        self._stub = verification_pb2_grpc.VerificationStub(channel)
        self._stream: BatchStream[
            verification_pb2.VerifyBatchRequest, verification_pb2.VerifyBatchResponse
        ] = BatchStream(peer="verification", open_stream=self._stub.VerifyStream, streams=streams)

    def open(self) -> None:
        """Open the streams before the first batch needs them."""
        self._stream.open()

    async def close(self) -> None:
        """Close the streams; batches still waiting fail."""
        await self._stream.close()

    async def verify(
        self, request: verification_pb2.VerifyRequest, *, timeout: float
    ) -> verification_pb2.VerifyResponse:
        try:
            return await self._stub.Verify(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise peer_error("verification", exc) from None

    async def verify_batch(
        self, requests: list[verification_pb2.VerifyRequest], *, timeout: float
    ) -> list[verification_pb2.VerifyResponse]:
        answer = await self._stream.call(
            verification_pb2.VerifyBatchRequest(requests=requests, timeout_ms=_timeout_ms(timeout)),
            timeout,
        )
        if answer.error:
            # The peer answered on a healthy stream but could not handle this
            # batch as a whole: the batcher asks again in smaller batches, so
            # that one request cannot fail the others beside it.
            raise PeerRejected(f"verification: {answer.error}")
        return list(answer.responses)


class GrpcPolicy:
    """The policy authority over gRPC; batches travel on EvaluateStream."""

    def __init__(self, channel: grpc.aio.Channel, *, streams: int = 2) -> None:
        self._stub = policy_pb2_grpc.PolicyAuthorityStub(channel)
        self._stream: BatchStream[
            policy_pb2.EvaluateBatchRequest, policy_pb2.EvaluateBatchResponse
        ] = BatchStream(peer="policy", open_stream=self._stub.EvaluateStream, streams=streams)

    def open(self) -> None:
        """Open the streams before the first batch needs them."""
        self._stream.open()

    async def close(self) -> None:
        """Close the streams; batches still waiting fail."""
        await self._stream.close()

    async def evaluate(
        self, request: policy_pb2.EvaluateRequest, *, timeout: float
    ) -> policy_pb2.EvaluateResponse:
        try:
            return await self._stub.Evaluate(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise peer_error("policy", exc) from None

    async def evaluate_batch(
        self, requests: list[policy_pb2.EvaluateRequest], *, timeout: float
    ) -> list[policy_pb2.EvaluateResponse]:
        answer = await self._stream.call(
            policy_pb2.EvaluateBatchRequest(requests=requests, timeout_ms=_timeout_ms(timeout)),
            timeout,
        )
        if answer.error:
            # The peer answered on a healthy stream but could not handle this
            # batch as a whole: the batcher asks again in smaller batches, so
            # that one request cannot fail the others beside it.
            raise PeerRejected(f"policy: {answer.error}")
        return list(answer.responses)

    async def newest_activation(self, *, timeout: float) -> StoreActivation | None:
        """The newest activation in the policy store, as GetState reports it."""
        try:
            state = await self._stub.GetState(policy_pb2.GetStateRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise peer_error("policy", exc) from None
        if not state.HasField("current"):
            return None
        current = state.current
        return StoreActivation(
            epoch=current.epoch, active=current.active_version, statement=current.statement
        )


class BatchedVerification(Batcher[verification_pb2.VerifyRequest, verification_pb2.VerifyResponse]):
    """The verification peer, its calls from concurrent decisions sent as VerifyBatch."""

    def __init__(self, peer: GrpcVerification, **options: Any) -> None:
        super().__init__(
            name="verification",
            send=lambda requests, timeout: peer.verify_batch(requests, timeout=timeout),
            size=verification_pb2.VerifyRequest.ByteSize,
            answer_size=verify_answer_bound,
            **options,
        )

    async def verify(
        self, request: verification_pb2.VerifyRequest, *, timeout: float
    ) -> verification_pb2.VerifyResponse:
        return await self.submit(request, timeout=timeout)


class BatchedPolicy(Batcher[policy_pb2.EvaluateRequest, policy_pb2.EvaluateResponse]):
    """The policy peer, its calls from concurrent decisions sent as EvaluateBatch."""

    def __init__(self, peer: GrpcPolicy, **options: Any) -> None:
        super().__init__(
            name="policy",
            send=lambda requests, timeout: peer.evaluate_batch(requests, timeout=timeout),
            size=policy_pb2.EvaluateRequest.ByteSize,
            answer_size=evaluate_answer_bound,
            **options,
        )

    async def evaluate(
        self, request: policy_pb2.EvaluateRequest, *, timeout: float
    ) -> policy_pb2.EvaluateResponse:
        return await self.submit(request, timeout=timeout)


class GrpcLineage:
    """The lineage service over gRPC: batches on AppendStream, and single look-ups."""

    def __init__(self, channel: grpc.aio.Channel, *, streams: int = 2) -> None:
        self._stub = lineage_pb2_grpc.LineageStub(channel)
        self._stream: BatchStream[
            lineage_pb2.AppendBatchRequest, lineage_pb2.AppendBatchResponse
        ] = BatchStream(peer="lineage", open_stream=self._stub.AppendStream, streams=streams)

    def open(self) -> None:
        """Open the streams before the first batch needs them."""
        self._stream.open()

    async def close(self) -> None:
        """Close the streams; batches still waiting fail."""
        await self._stream.close()

    async def append_batch(
        self, requests: list[lineage_pb2.AppendRequest], *, timeout: float
    ) -> list[lineage_pb2.AppendResponse]:
        response = await self._stream.call(
            lineage_pb2.AppendBatchRequest(entries=requests), timeout
        )
        return list(response.results)

    async def get_entry(self, decision_id: str, *, timeout: float) -> bytes | None:
        try:
            response = await self._stub.GetEntry(
                lineage_pb2.GetEntryRequest(decision_id=decision_id), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise peer_error("lineage", exc) from None
        return response.entry


class SpoolLineage:
    """The lineage service as the deny spool reaches it: one unary AppendBatch per group.

    The spool reads a per-entry error from lineage as a refusal for good and
    moves that entry aside (engine/lineage.py). AppendBatch guarantees that
    reading: anything temporary (a database away, a commit that failed)
    fails the whole call. AppendStream does not: it answers a batch that
    failed as a whole with an error on each entry, which the spool would
    mistake for refusals. The spool is not the hot path, so it keeps the
    unary call.
    """

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = lineage_pb2_grpc.LineageStub(channel)
        self._lookups = GrpcLineage(channel)

    async def append_batch(
        self, requests: list[lineage_pb2.AppendRequest], *, timeout: float
    ) -> list[lineage_pb2.AppendResponse]:
        try:
            response = await self._stub.AppendBatch(
                lineage_pb2.AppendBatchRequest(entries=requests), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise peer_error("lineage", exc) from None
        return list(response.results)

    async def get_entry(self, decision_id: str, *, timeout: float) -> bytes | None:
        return await self._lookups.get_entry(decision_id, timeout=timeout)
