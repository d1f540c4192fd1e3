"""Peer calls of concurrent decisions travel in batches, and a batch cannot mix up answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from govmesh.engine.batching import ANSWER_FRAMING_BYTES, Batcher
from govmesh.engine.protocols import PeerError, PeerRejected, PeerTimeout, PeerUnavailable
from govmesh.v1 import common_pb2, engine_pb2, verification_pb2
from tests.unit.engine_fakes import (
    FakeVerification,
    authorize_request,
    build_engine,
    passing_verification,
)


@dataclass
class BatchVerification:
    """A verification peer reached through a Batcher, as the engine's server wires it."""

    reverse: bool = False
    batches: list[int] = field(default_factory=list)

    async def send(
        self, requests: list[verification_pb2.VerifyRequest], timeout: float
    ) -> list[verification_pb2.VerifyResponse]:
        self.batches.append(len(requests))
        await asyncio.sleep(0.005)  # a round trip, during which more decisions queue up
        answers = [passing_verification(r) for r in requests]
        return answers[::-1] if self.reverse else answers


async def _decide_concurrently(
    peer: BatchVerification, count: int
) -> list[engine_pb2.AuthorizeResponse]:
    batcher: Batcher[verification_pb2.VerifyRequest, verification_pb2.VerifyResponse] = Batcher(
        name="verification", send=peer.send, max_batch=64, max_in_flight=2
    )
    batcher.start()

    class Adapter(FakeVerification):
        async def verify(
            self, request: verification_pb2.VerifyRequest, *, timeout: float
        ) -> verification_pb2.VerifyResponse:
            return await batcher.submit(request, timeout=timeout)

    h = build_engine(verification=Adapter())
    try:
        requests = [authorize_request(context={"amount": n}) for n in range(count)]
        responses = await asyncio.gather(*(h.engine.authorize(r) for r in requests))
    finally:
        await batcher.close()
    return list(responses)


async def test_concurrent_decisions_share_verification_calls() -> None:
    peer = BatchVerification()
    responses = await _decide_concurrently(peer, 100)

    assert [r.decision for r in responses] == [common_pb2.ALLOW] * 100
    assert sum(peer.batches) == 100
    assert len(peer.batches) < 20
    assert max(peer.batches) > 1


async def test_a_batch_answered_out_of_order_never_allows_anyone() -> None:
    peer = BatchVerification(reverse=True)
    responses = await _decide_concurrently(peer, 40)

    # Reversed, a batch hands each member another's answer, except the middle
    # one of an odd-sized batch, which gets its own.
    own_answers = sum(size % 2 for size in peer.batches)
    allowed = [r for r in responses if r.decision == common_pb2.ALLOW]
    refused = [r for r in responses if r.reason == common_pb2.INCONSISTENT_ANSWERS]
    assert max(peer.batches) > 1
    assert len(allowed) == own_answers
    assert len(refused) == 40 - own_answers


async def test_a_batcher_that_is_not_running_refuses_at_once() -> None:
    async def send(requests: list[int], timeout: float) -> list[int]:
        return requests

    batcher: Batcher[int, int] = Batcher(name="test", send=send)
    with pytest.raises(PeerUnavailable, match="not running"):
        await batcher.submit(1, timeout=1)


async def test_requests_wait_for_a_slot_and_join_the_next_batch() -> None:
    sizes: list[int] = []
    release = asyncio.Event()

    async def send(requests: list[int], timeout: float) -> list[int]:
        sizes.append(len(requests))
        await release.wait()
        return [r * 2 for r in requests]

    batcher: Batcher[int, int] = Batcher(name="test", send=send, max_in_flight=1)
    batcher.start()
    try:
        first = asyncio.ensure_future(batcher.submit(1, timeout=5))
        await asyncio.sleep(0.01)  # the first batch is in flight, holding the only slot
        rest = [asyncio.ensure_future(batcher.submit(n, timeout=5)) for n in range(2, 12)]
        await asyncio.sleep(0.01)
        release.set()
        answers = await asyncio.gather(first, *rest)
    finally:
        await batcher.close()

    assert answers == [n * 2 for n in range(1, 12)]
    assert sizes == [1, 10]


async def test_a_batch_never_carries_more_bytes_than_a_peer_accepts() -> None:
    sizes: list[int] = []

    async def send(requests: list[bytes], timeout: float) -> list[int]:
        sizes.append(sum(len(r) for r in requests))
        await asyncio.sleep(0.001)
        return [len(r) for r in requests]

    batcher: Batcher[bytes, int] = Batcher(
        name="test", send=send, size=len, max_batch_bytes=1000, max_in_flight=1
    )
    batcher.start()
    try:
        blocker = asyncio.ensure_future(batcher.submit(b"x", timeout=5))
        await asyncio.sleep(0)
        answers = await asyncio.gather(
            blocker, *(batcher.submit(b"y" * 300, timeout=5) for _ in range(10))
        )
    finally:
        await batcher.close()

    assert answers == [1] + [300] * 10
    assert max(sizes) <= 1000
    # A request larger than the limit still travels, alone.


async def test_closing_fails_the_callers_of_batches_in_flight() -> None:
    async def send(requests: list[int], timeout: float) -> list[int]:
        await asyncio.sleep(3600)
        return requests

    batcher: Batcher[int, int] = Batcher(name="test", send=send)
    batcher.start()
    caller = asyncio.ensure_future(batcher.submit(1, timeout=3600))
    await asyncio.sleep(0.01)
    await batcher.close()

    with pytest.raises(PeerUnavailable, match="stopping"):
        await asyncio.wait_for(caller, 2)


async def test_a_batch_never_brings_back_more_answer_bytes_than_a_message_holds() -> None:
    # Small requests whose answers may be large: the batch is cut by the
    # bound of its answers, not by the size of its requests.
    sizes: list[int] = []

    async def send(requests: list[int], timeout: float) -> list[int]:
        sizes.append(len(requests))
        await asyncio.sleep(0.001)
        return requests

    batcher: Batcher[int, int] = Batcher(
        name="test",
        send=send,
        size=lambda r: 1,
        answer_size=lambda r: 100,
        max_answer_bytes=1000,
        max_in_flight=1,
    )
    batcher.start()
    try:
        blocker = asyncio.ensure_future(batcher.submit(0, timeout=5))
        await asyncio.sleep(0)
        answers = await asyncio.gather(
            blocker, *(batcher.submit(n, timeout=5) for n in range(1, 40))
        )
    finally:
        await batcher.close()

    assert answers == list(range(40))
    assert max(sizes) * (100 + ANSWER_FRAMING_BYTES) <= 1000
    assert max(sizes) > 1


def _rejecting_poison(
    calls: list[list[int]], error: PeerError
) -> Callable[[list[int], float], Awaitable[list[int]]]:
    async def send(requests: list[int], timeout: float) -> list[int]:
        calls.append(list(requests))
        await asyncio.sleep(0.001)
        if -1 in requests:
            raise error
        return [r * 2 for r in requests]

    return send


async def _submit_all(batcher: Batcher[int, int], requests: list[int]) -> list[object]:
    batcher.start()
    try:
        blocker = asyncio.ensure_future(batcher.submit(0, timeout=5))
        await asyncio.sleep(0)  # the rest queue up behind it and travel together
        return await asyncio.gather(
            blocker, *(batcher.submit(r, timeout=5) for r in requests), return_exceptions=True
        )
    finally:
        await batcher.close()


async def test_a_batch_refused_as_a_whole_is_sent_again_in_halves() -> None:
    calls: list[list[int]] = []
    batcher: Batcher[int, int] = Batcher(
        name="test",
        send=_rejecting_poison(calls, PeerRejected("RESOURCE_EXHAUSTED: too large")),
        max_in_flight=1,
    )
    requests = [1, 2, 3, -1, 4, 5, 6, 7, 8]

    answers = await _submit_all(batcher, requests)

    # Every member but the one that caused the refusal is answered; it fails alone.
    assert answers[0] == 0
    assert answers[1:4] == [2, 4, 6]
    assert isinstance(answers[4], PeerUnavailable)
    assert answers[5:] == [8, 10, 12, 14, 16]
    assert [-1] in calls
    assert len(calls) <= 2 * len(requests)


@pytest.mark.parametrize("error", [PeerUnavailable("UNAVAILABLE"), PeerTimeout("late")])
async def test_a_peer_that_is_down_or_late_is_not_asked_again(error: PeerError) -> None:
    calls: list[list[int]] = []
    batcher: Batcher[int, int] = Batcher(
        name="test", send=_rejecting_poison(calls, error), max_in_flight=1
    )

    answers = await _submit_all(batcher, [1, 2, -1, 3])

    assert answers[0] == 0
    assert all(a is error for a in answers[1:])
    assert calls == [[0], [1, 2, -1, 3]]


async def test_halves_are_sent_only_within_their_members_deadlines() -> None:
    starts: list[float] = []

    async def send(requests: list[int], timeout: float) -> list[int]:
        starts.append(time.monotonic())
        await asyncio.sleep(0.03)
        raise PeerRejected("INTERNAL: always")

    batcher: Batcher[int, int] = Batcher(name="test", send=send, max_in_flight=1)
    batcher.start()
    started = time.monotonic()
    try:
        answers = await asyncio.gather(
            *(batcher.submit(n, timeout=0.1) for n in range(64)), return_exceptions=True
        )
    finally:
        await batcher.close()

    assert all(isinstance(a, PeerUnavailable) for a in answers)
    # A batch of 64 would take six rounds of halving; the deadline allows about three.
    assert max(starts) < started + 0.1 + 0.05  # the deadlines, and scheduling
    assert len(starts) < 2 * 64 - 1
