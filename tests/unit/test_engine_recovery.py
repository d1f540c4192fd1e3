"""Health checks while a breaker is open: the peer is probed as soon as it answers again."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health, health_pb2

from govmesh.engine.breaker import BreakerState, CircuitBreaker, Permit
from govmesh.engine.recovery import RecoveryWatch, health_check


class Peer:
    """A health check that answers as told, counting the questions."""

    def __init__(self) -> None:
        self.serving = False
        self.asked = 0
        self.error: Exception | None = None

    async def __call__(self, timeout_s: float) -> bool:
        self.asked += 1
        if self.error is not None:
            raise self.error
        return self.serving


def watched(peer: Peer, cool_down_s: float = 3600.0) -> tuple[RecoveryWatch, CircuitBreaker]:
    watch = RecoveryWatch({"policy": peer}, interval_s=0.01, timeout_s=0.01)
    b = CircuitBreaker(
        peer="policy",
        failure_threshold=1,
        cool_down_s=cool_down_s,
        monotonic=asyncio.get_running_loop().time,
        on_change=watch.on_change,
    )
    watch.attach({"policy": b})
    return watch, b


def open_it(b: CircuitBreaker) -> None:
    permit = b.admit()
    assert permit is not None
    b.failed(permit)
    assert b.state is BreakerState.OPEN


async def wait_until_asked(peer: Peer, times: int) -> None:
    for _ in range(1000):
        if peer.asked >= times:
            return
        await asyncio.sleep(0.005)
    pytest.fail(f"asked {peer.asked} times, not {times}")


async def probe_of(b: CircuitBreaker) -> Permit:
    for _ in range(1000):
        permit = b.admit()
        if permit is not None:
            return permit
        await asyncio.sleep(0.005)
    pytest.fail("the breaker never let a probe through")


async def test_an_open_breaker_probes_as_soon_as_its_peer_answers_not_after_an_hour() -> None:
    peer = Peer()
    watch, b = watched(peer)
    open_it(b)
    await wait_until_asked(peer, 3)
    assert b.admit() is None  # not serving yet: still refused

    peer.serving = True
    probe = await probe_of(b)
    assert probe.probe
    b.succeeded(probe)
    assert b.state is BreakerState.CLOSED
    asked = peer.asked
    await asyncio.sleep(0.1)
    assert peer.asked == asked  # closed: nobody asks any more
    await watch.close()


async def test_a_failed_probe_starts_watching_again() -> None:
    peer = Peer()
    peer.serving = True
    watch, b = watched(peer)
    open_it(b)
    probe = await probe_of(b)
    peer.serving = False
    b.failed(probe)  # the peer said SERVING, but the real call failed
    assert b.state is BreakerState.OPEN
    assert b.admit() is None
    asked = peer.asked
    await wait_until_asked(peer, asked + 2)
    assert b.admit() is None
    await watch.close()


async def test_a_health_check_that_raises_is_a_peer_not_seen_answering() -> None:
    peer = Peer()
    peer.error = RuntimeError("broken")
    watch, b = watched(peer)
    open_it(b)
    await wait_until_asked(peer, 3)
    assert b.admit() is None
    await watch.close()


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (health_pb2.HealthCheckResponse.SERVING, True),
        (health_pb2.HealthCheckResponse.NOT_SERVING, False),
    ],
)
async def test_the_grpc_health_check_reads_the_overall_status(status: int, expected: bool) -> None:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    from grpc_health.v1 import health_pb2_grpc

    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    await servicer.set("", status)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await health_check(channel)(5.0) is expected
        # Nobody there: not serving, not an exception.
        async with grpc.aio.insecure_channel("127.0.0.1:1") as channel:
            assert await health_check(channel)(0.5) is False
    finally:
        await server.stop(None)
