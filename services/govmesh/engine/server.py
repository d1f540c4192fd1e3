"""The engine process: `govmesh serve engine`.

Start-up: read the grant key (and the policy-admin keys, when the trust file
is given), connect to the peers, learn the newest activated policy epoch
(floor.py), then serve. Health is SERVING once that epoch is known: until
then every decision denies, so a load balancer should not send any.

With GOVMESH_REUSE_PORT several engine processes listen on one address and
the kernel, not a health check, picks which one a connection reaches; so such
an engine joins the address only once the epoch is known, and exits if it
cannot learn it within SHARED_PORT_FLOOR_WAIT_S (its supervisor starts it
again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid

import grpc

from govmesh.artifacts.keys import load_private_jwk
from govmesh.artifacts.signing import load_admin_keys
from govmesh.engine.admission import Admission
from govmesh.engine.breaker import BreakerState
from govmesh.engine.config import EngineSettings
from govmesh.engine.consistency import EpochTracker
from govmesh.engine.core import Engine
from govmesh.engine.floor import PolicyFloor
from govmesh.engine.grants import Ed25519GrantSigner
from govmesh.engine.lineage import BatchingLineage, FileSpool
from govmesh.engine.metrics import EngineMetrics
from govmesh.engine.peers import (
    BatchedPolicy,
    BatchedVerification,
    GrpcLineage,
    GrpcPolicy,
    GrpcVerification,
    SpoolLineage,
    open_channel,
)
from govmesh.engine.recovery import RecoveryWatch, health_check
from govmesh.engine.servicer import SERVICE_NAME, EngineServicer, add_to_server
from govmesh.runtime.entry import run_service
from govmesh.runtime.errors import Unavailable
from govmesh.runtime.server import Health, serve

ENGINE_KEY_FILE = "engine.jwk.json"
CONNECT_TIMEOUT_S = 5.0
#: How long one request for the newest policy epoch may take.
FLOOR_TIMEOUT_S = 2.0
#: How long an engine sharing its port waits for the newest policy epoch
#: before it gives up starting.
SHARED_PORT_FLOOR_WAIT_S = 30.0

logger = logging.getLogger(__name__)


def instance_id(name: str | None) -> str:
    """The engine id of this start: its name (default: the host name) and a random part.

    Each start counts its decisions from 0 again. Under the id of an earlier
    start, those counters would read in lineage as counters logged twice;
    under an id of its own, each start's counter runs gapless from 0.
    """
    return f"{name or socket.gethostname()}/{uuid.uuid4().hex[:12]}"


class EngineNotReady(Unavailable):
    """An engine sharing its port could not learn the newest policy epoch in time."""


class EngineService:
    """Lifecycle of the engine: channels to its peers, the batcher, the spool."""

    service_names = (SERVICE_NAME,)

    def __init__(self, settings: EngineSettings, *, metrics: EngineMetrics | None = None) -> None:
        self._settings = settings
        self._metrics = metrics
        self._channels: list[grpc.aio.Channel] = []
        self._batcher: BatchingLineage | None = None
        self._verification: BatchedVerification | None = None
        self._policy: BatchedPolicy | None = None
        self._drainer: asyncio.Task[None] | None = None
        self._servicer: EngineServicer | None = None
        self._spool: FileSpool | None = None
        self._transport: SpoolLineage | None = None
        self._transports: list[GrpcVerification | GrpcPolicy | GrpcLineage] = []
        self._floor: PolicyFloor | None = None
        self._floor_task: asyncio.Task[None] | None = None
        self._health: Health | None = None
        self._recovery: RecoveryWatch | None = None
        self._engine: Engine | None = None

    async def start(self, health: Health) -> None:
        s = self._settings
        self._health = health
        key = load_private_jwk(s.keys_dir / ENGINE_KEY_FILE)
        admin_keys = load_admin_keys(s.trust_file) if s.trust_file is not None else None
        if admin_keys is None:
            logger.warning(
                "GOVMESH_TRUST_FILE is not set: the newest policy epoch is taken from the "
                "policy service without checking its admin signature"
            )
        spool = self._spool = FileSpool(s.spool_dir)
        metrics = self._metrics
        if metrics is not None:
            metrics.watch_spool(lambda: spool.depth + spool.unwritten, spool.oldest)
        verification, policy, lineage = (
            open_channel(t) for t in (s.verification_target, s.policy_target, s.lineage_target)
        )
        self._channels = [verification, policy, lineage]
        self._recovery = RecoveryWatch(
            {
                "verification": health_check(verification),
                "policy": health_check(policy),
                "lineage": health_check(lineage),
            }
        )
        await self._connect(self._channels)
        transport = GrpcLineage(lineage)
        spool_transport = self._transport = SpoolLineage(lineage)
        verification_transport, policy_transport = (
            GrpcVerification(verification),
            GrpcPolicy(policy),
        )
        self._transports = [verification_transport, policy_transport, transport]
        for peer in self._transports:
            peer.open()
        self._batcher = BatchingLineage(
            transport=transport,
            max_batch=s.lineage_batch_max,
            linger_s=s.lineage_linger_ms / 1000,
            max_in_flight=s.lineage_max_in_flight,
            expected=self._decisions_before_lineage,
            metrics=metrics.peer("lineage") if metrics else None,
        )
        self._batcher.start()
        self._verification = BatchedVerification(
            verification_transport,
            max_batch=s.peer_batch_max,
            max_in_flight=s.peer_max_in_flight,
            linger_s=s.peer_linger_ms / 1000,
            metrics=metrics.peer("verification") if metrics else None,
        )
        self._verification.start()
        self._policy = BatchedPolicy(
            policy_transport,
            max_batch=s.peer_batch_max,
            max_in_flight=s.peer_max_in_flight,
            linger_s=s.peer_linger_ms / 1000,
            metrics=metrics.peer("policy") if metrics else None,
        )
        self._policy.start()
        epochs = EpochTracker()
        self._floor = PolicyFloor(
            source=policy_transport,
            epochs=epochs,
            admin_keys=admin_keys,
            timeout_s=FLOOR_TIMEOUT_S,
            on_known=self._floor_known,
        )
        if not await self._floor.refresh():
            logger.warning("not serving until the newest policy epoch is known")
        self._floor_task = asyncio.create_task(
            self._floor.run(interval_s=s.policy_floor_interval_s), name="policy-floor"
        )
        self._drainer = asyncio.create_task(
            spool.run(spool_transport, interval_s=s.spool_retry_s), name="spool-drainer"
        )
        engine = Engine(
            verification=self._verification,
            policy=self._policy,
            lineage=self._batcher,
            spool=spool,
            grants=Ed25519GrantSigner(
                key=key,
                issuer=s.grant_issuer,
                audience=s.grant_audience,
                ttl_s=s.grant_ttl_s,
                clock=time.time,
            ),
            config=s.decision_config(),
            engine_id=instance_id(s.engine_id),
            epochs=epochs,
            on_breaker_change=self._on_breaker_change,
        )
        self._engine = engine
        self._recovery.attach(engine.breakers)
        self._servicer = EngineServicer(
            engine=engine,
            admission=Admission(
                max_concurrent=s.admission_max_concurrent,
                max_queue=s.admission_queue_max,
                budget_s=s.decision_budget_ms / 1000,
                monotonic=time.monotonic,
            ),
            metrics=metrics,
        )
        if s.reuse_port:
            await self._await_floor(s.policy_floor_interval_s)

    def _decisions_before_lineage(self) -> int:
        return 0 if self._engine is None else self._engine.before_lineage

    def _on_breaker_change(self, peer: str, old: BreakerState, new: BreakerState) -> None:
        if self._metrics is not None:
            self._metrics.on_breaker_change(peer, old, new)
        if self._recovery is not None:
            self._recovery.on_change(peer, old, new)

    async def _await_floor(self, interval_s: float) -> None:
        # Its health says NOT_SERVING until the floor is known, but on a shared
        # port nobody can ask this process alone: connections the kernel hands
        # it would all be denied. So it does not listen until it can decide.
        floor = self._floor
        assert floor is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHARED_PORT_FLOOR_WAIT_S
        while not floor.known:
            if loop.time() >= deadline:
                raise EngineNotReady(
                    f"the newest policy epoch is still unknown after "
                    f"{SHARED_PORT_FLOOR_WAIT_S:.0f} s; not joining the shared port"
                )
            await asyncio.sleep(min(interval_s, 0.1))

    @staticmethod
    async def _connect(channels: list[grpc.aio.Channel]) -> None:
        # Connect before serving so the first decisions do not spend their
        # deadlines on handshakes. Peers that are down are not fatal: the
        # engine serves, and denies, until they come up.
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await asyncio.gather(*(channel.channel_ready() for channel in channels))
        except TimeoutError:
            logger.warning("not every peer is reachable yet; deciding DENY until they are")

    def register(self, server: grpc.aio.Server) -> None:
        assert self._servicer is not None
        add_to_server(self._servicer, server)

    async def _floor_known(self) -> None:
        # Called once, when the floor becomes known after start-up.
        if self._servicer is not None and self._health is not None:
            await self._health.set_serving(True)

    def ready(self) -> bool:
        return self._servicer is not None and self._floor is not None and self._floor.known

    async def close(self) -> None:
        if self._servicer is not None:
            # Decisions whose callers are gone still finish recording, on the
            # batchers and the spool that are closed only after them.
            s = self._settings
            await self._servicer.drain(
                timeout=max(s.decision_budget_ms, s.decision_budget_max_ms) / 1000
                + s.spool_timeout_s
                + 1.0
            )
        if self._spool is not None:
            await self._spool.flush()
            if self._spool.unwritten and self._transport is not None:
                # The disk refused them: lineage is their last way out.
                with contextlib.suppress(Exception):
                    await self._spool.drain(self._transport)
            if self._spool.unwritten:
                logger.error(
                    "stopping with denies neither the disk nor lineage took: they are lost",
                    extra={"entries": self._spool.unwritten},
                )
        if self._recovery is not None:
            await self._recovery.close()
        for task in (self._drainer, self._floor_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for batcher in (self._batcher, self._verification, self._policy):
            if batcher is not None:
                await batcher.close()
        for peer in self._transports:
            await peer.close()
        for channel in self._channels:
            await channel.close()


async def run(settings: EngineSettings) -> None:
    """Serve until stopped."""
    endpoint = settings.metrics_endpoint()
    await serve(
        EngineService(settings, metrics=EngineMetrics(endpoint.registry) if endpoint else None),
        listen=settings.listen,
        grace_period_s=settings.grace_period_s,
        port_file=settings.port_file,
        maximum_concurrent_rpcs=settings.maximum_concurrent_rpcs(),
        metrics=endpoint,
        reuse_port=settings.reuse_port,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m govmesh.engine`."""
    return run_service("engine", EngineSettings, run, argv)
