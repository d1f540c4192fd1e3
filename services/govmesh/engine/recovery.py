"""Back as soon as a peer is: health checks while its circuit breaker is open.

An open breaker refuses every call to its peer for its cool-down, and a
peer that came back meanwhile (a restart, a stall that ended) would still
see valid requests denied PEER_UNAVAILABLE until the cool-down ran out. So
while a breaker is open, the peer's standard gRPC health service is asked
every `interval_s`; the first SERVING answer ends the cool-down
(`CircuitBreaker.peer_answered`), and the next call is the probe. The
probe's answer, checked like any other, is still what closes the breaker:
a health answer never lets more than that one call through, and never
supplies an answer to a decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from govmesh.engine.breaker import BreakerState, CircuitBreaker

logger = logging.getLogger(__name__)

#: Asks a peer whether it serves; True for SERVING, within the given seconds.
HealthCheck = Callable[[float], Awaitable[bool]]

#: How often an open breaker's peer is asked, and how long each answer may take.
INTERVAL_S = 0.1
TIMEOUT_S = 0.25


def health_check(channel: grpc.aio.Channel) -> HealthCheck:
    """The peer's overall health ("" service: SERVING only when it can answer)."""
    stub = health_pb2_grpc.HealthStub(channel)

    async def check(timeout_s: float) -> bool:
        try:
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    return check


class RecoveryWatch:
    """One health-checking task per open breaker, ended when the peer answers."""

    def __init__(
        self,
        checks: Mapping[str, HealthCheck],
        *,
        interval_s: float = INTERVAL_S,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self._checks = dict(checks)
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._breakers: Mapping[str, CircuitBreaker] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def attach(self, breakers: Mapping[str, CircuitBreaker]) -> None:
        """The breakers to watch (the engine's, once it exists)."""
        self._breakers = breakers

    def on_change(self, peer: str, old: BreakerState, new: BreakerState) -> None:
        """A breaker's on_change hook: an opened breaker gets a watcher."""
        if new is not BreakerState.OPEN or peer not in self._checks:
            return
        running = self._tasks.get(peer)
        if running is None or running.done():
            self._tasks[peer] = asyncio.get_running_loop().create_task(
                self._watch(peer), name=f"{peer}-recovery"
            )

    async def _watch(self, peer: str) -> None:
        breaker = self._breakers.get(peer)
        if breaker is None:
            return
        check = self._checks[peer]
        while breaker.state is BreakerState.OPEN:
            await asyncio.sleep(self._interval_s)
            if breaker.state is not BreakerState.OPEN:
                return
            try:
                serving = await check(self._timeout_s)
            except Exception:  # a check that breaks is a peer not seen answering
                logger.debug("health check of %s failed", peer, exc_info=True)
                serving = False
            if serving and breaker.state is BreakerState.OPEN:
                logger.info("%s answers its health check: the next call probes it", peer)
                breaker.peer_answered()
                # The probe decides now; if it fails, the breaker opens
                # again and a new watcher starts.
                return

    async def close(self) -> None:
        """Stop every watcher."""
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
