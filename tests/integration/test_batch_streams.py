"""BatchStream against a real grpc.aio peer that misbehaves: each batch gets its answer or fails."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from govmesh.engine.protocols import PeerTimeout, PeerUnavailable
from govmesh.engine.streams import BatchStream
from govmesh.v1 import verification_pb2

Req = verification_pb2.VerifyBatchRequest
Resp = verification_pb2.VerifyBatchResponse
METHOD = "/test.Peer/Stream"

#: How the fake peer answers the requests of one stream.
Behaviour = Callable[[AsyncIterator[Req]], AsyncIterator[Resp]]


def _answer(request: Req, sequence: int | None = None) -> Resp:
    # Each answer names the requests it answers through their digests.
    answer = Resp(sequence=request.sequence if sequence is None else sequence)
    for r in request.requests:
        answer.responses.add(request_digest=r.request_digest)
    return answer


def _batch(*digests: str) -> Req:
    return Req(requests=[verification_pb2.VerifyRequest(request_digest=d) for d in digests])


class Peer:
    def __init__(self) -> None:
        self.behaviour: Behaviour = self.in_order
        self.streams = 0

    @staticmethod
    async def in_order(requests: AsyncIterator[Req]) -> AsyncIterator[Resp]:
        async for request in requests:
            yield _answer(request)

    async def handle(self, requests: AsyncIterator[Req], context: Any) -> AsyncIterator[Resp]:
        self.streams += 1
        async for answer in self.behaviour(requests):
            yield answer


@pytest.fixture
async def peer() -> AsyncIterator[tuple[Peer, Callable[[], Any]]]:
    state = Peer()
    server = grpc.aio.server()
    handler: grpc.RpcMethodHandler[Req, Resp] = grpc.stream_stream_rpc_method_handler(
        state.handle,
        request_deserializer=Req.FromString,
        response_serializer=Resp.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Peer", {"Stream": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        open_stream = channel.stream_stream(
            METHOD, request_serializer=Req.SerializeToString, response_deserializer=Resp.FromString
        )
        yield state, open_stream
    await server.stop(None)


def _digests(answer: Resp) -> list[str]:
    return [r.request_digest for r in answer.responses]


async def test_answers_out_of_order_reach_the_batch_they_answer(
    peer: tuple[Peer, Callable[[], Any]],
) -> None:
    state, open_stream = peer

    async def reversed_pairs(requests: AsyncIterator[Req]) -> AsyncIterator[Resp]:
        held: list[Req] = []
        async for request in requests:
            held.append(request)
            if len(held) == 2:
                for r in reversed(held):
                    yield _answer(r)
                held.clear()

    state.behaviour = reversed_pairs
    stream: BatchStream[Req, Resp] = BatchStream(peer="peer", open_stream=open_stream, streams=1)
    first, second = await asyncio.gather(
        stream.call(_batch("a1", "a2"), 5.0), stream.call(_batch("b1"), 5.0)
    )
    await stream.close()
    assert _digests(first) == ["a1", "a2"]
    assert _digests(second) == ["b1"]
    assert state.streams == 1  # both batches on one long-lived stream


async def test_an_answer_to_a_batch_never_sent_fails_the_stream_not_a_wrong_caller(
    peer: tuple[Peer, Callable[[], Any]],
) -> None:
    state, open_stream = peer

    async def misnumbered(requests: AsyncIterator[Req]) -> AsyncIterator[Resp]:
        async for request in requests:
            yield _answer(request, sequence=request.sequence + 1000)

    state.behaviour = misnumbered
    stream: BatchStream[Req, Resp] = BatchStream(peer="peer", open_stream=open_stream, streams=1)
    with pytest.raises(PeerUnavailable, match="not sent"):
        await stream.call(_batch("a"), 5.0)
    # The next batch opens a fresh stream, and a well-behaved peer answers it.
    state.behaviour = Peer.in_order
    assert _digests(await stream.call(_batch("b"), 5.0)) == ["b"]
    assert state.streams == 2
    await stream.close()


async def test_a_peer_that_does_not_answer_is_a_timeout_for_that_batch_alone(
    peer: tuple[Peer, Callable[[], Any]],
) -> None:
    state, open_stream = peer

    async def ignores_a(requests: AsyncIterator[Req]) -> AsyncIterator[Resp]:
        async for request in requests:
            if request.requests[0].request_digest != "a":
                yield _answer(request)

    state.behaviour = ignores_a
    stream: BatchStream[Req, Resp] = BatchStream(peer="peer", open_stream=open_stream, streams=1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    silent = asyncio.ensure_future(stream.call(_batch("a"), 0.3))
    answered = await stream.call(_batch("b"), 5.0)
    with pytest.raises(PeerTimeout):
        await silent
    assert _digests(answered) == ["b"]
    assert loop.time() - started < 2.0
    assert state.streams == 1
    await stream.close()


async def test_a_stream_the_peer_ends_fails_what_it_carried_and_the_next_batch_goes_through(
    peer: tuple[Peer, Callable[[], Any]],
) -> None:
    state, open_stream = peer

    async def hangs_up(requests: AsyncIterator[Req]) -> AsyncIterator[Resp]:
        async for _ in requests:
            return
        yield Resp()  # pragma: no cover - makes this an async generator

    state.behaviour = hangs_up
    stream: BatchStream[Req, Resp] = BatchStream(peer="peer", open_stream=open_stream, streams=1)
    with pytest.raises(PeerUnavailable):
        await stream.call(_batch("a"), 5.0)
    state.behaviour = Peer.in_order
    assert _digests(await stream.call(_batch("b"), 5.0)) == ["b"]
    await stream.close()


async def test_a_closed_stream_refuses_new_batches_and_fails_waiting_ones(
    peer: tuple[Peer, Callable[[], Any]],
) -> None:
    state, open_stream = peer

    async def never(requests: AsyncIterator[Req]) -> AsyncIterator[Resp]:
        async for _ in requests:
            pass
        return
        yield Resp()  # pragma: no cover - makes this an async generator

    state.behaviour = never
    stream: BatchStream[Req, Resp] = BatchStream(peer="peer", open_stream=open_stream, streams=1)
    waiting = asyncio.ensure_future(stream.call(_batch("a"), 5.0))
    await asyncio.sleep(0.2)
    await stream.close()
    with pytest.raises(PeerUnavailable):
        await waiting
    with pytest.raises(PeerUnavailable, match="stopping"):
        await stream.call(_batch("b"), 5.0)


async def test_streams_are_replaced_after_their_age_without_losing_answers(
    peer: tuple[Peer, Callable[[], Any]],
) -> None:
    state, open_stream = peer
    now = [0.0]
    stream: BatchStream[Req, Resp] = BatchStream(
        peer="peer", open_stream=open_stream, streams=1, max_age_s=10.0, monotonic=lambda: now[0]
    )
    assert _digests(await stream.call(_batch("a"), 5.0)) == ["a"]
    now[0] = 11.0
    assert _digests(await stream.call(_batch("b"), 5.0)) == ["b"]
    assert state.streams == 2
    await stream.close()


async def test_streams_opened_ahead_carry_the_first_batches(
    peer: tuple[Peer, Callable[[], Any]],
) -> None:
    state, open_stream = peer
    stream: BatchStream[Req, Resp] = BatchStream(peer="peer", open_stream=open_stream, streams=2)
    stream.open()
    for _ in range(50):
        if state.streams == 2:
            break
        await asyncio.sleep(0.02)
    assert state.streams == 2  # the peer saw both streams before any batch
    answers = await asyncio.gather(*(stream.call(_batch(f"d{n}"), 5.0) for n in range(4)))
    assert [_digests(a) for a in answers] == [["d0"], ["d1"], ["d2"], ["d3"]]
    assert state.streams == 2
    await stream.close()
