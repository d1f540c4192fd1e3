"""The verification service process: `govmesh serve verification`.

Start-up loads the trust configuration and checks that the replay store can
be read; either failing stops the process with a message. Once serving, the
trust files are watched (stat on every request, content every
GOVMESH_TRUST_POLL_INTERVAL_S, and on SIGHUP), and the replay store commits
nonces in batches and deletes expired ones in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time

import grpc

from govmesh.runtime.db import async_database_url
from govmesh.runtime.entry import run_service
from govmesh.runtime.errors import ConfigurationError
from govmesh.runtime.server import Health, serve
from govmesh.v1 import verification_pb2, verification_pb2_grpc
from govmesh.verification.config import VerificationSettings
from govmesh.verification.core import (
    ProofWindowClosed,
    ReplayStoreUnavailable,
    VerificationConfig,
    Verifier,
)
from govmesh.verification.metrics import VerificationMetrics
from govmesh.verification.replay import PostgresReplayStore
from govmesh.verification.servicer import VerificationServicer
from govmesh.verification.trustsource import TrustSource

logger = logging.getLogger(__name__)

SERVICE_NAME = verification_pb2.DESCRIPTOR.services_by_name["Verification"].full_name


class VerificationService:
    """Lifecycle of the verification service."""

    service_names = (SERVICE_NAME,)

    def __init__(
        self, settings: VerificationSettings, *, metrics: VerificationMetrics | None = None
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._servicer: VerificationServicer | None = None
        self._store: PostgresReplayStore | None = None
        self._trust: TrustSource | None = None
        self._poll: asyncio.Task[None] | None = None
        self._sighup = False

    async def start(self, health: Health) -> None:
        s = self._settings
        trust = self._trust = TrustSource(s.trust_file, cache_size=s.token_cache_size)
        if self._metrics is not None:
            self._metrics.watch_cache(trust.cache_counts)
        async_database_url(s.database_url)  # a URL that names no Postgres stops start-up here
        replay_timeout_s = s.replay_timeout_ms / 1000
        self._store = PostgresReplayStore(
            database_url=s.database_url,
            pool_size=s.database_pool_size,
            max_batch=s.replay_batch_max,
            linger_s=s.replay_linger_ms / 1000,
            flush_timeout_s=replay_timeout_s,
            cleanup_interval_s=s.replay_cleanup_interval_s,
            cleanup_margin_s=s.clock_skew_s,
            metrics=self._metrics,
        )
        try:
            await self._store.check()
        except ReplayStoreUnavailable as exc:
            raise ConfigurationError(
                f"cannot use the replay store: {exc}"
                "\n  (is GOVMESH_DATABASE_URL right, and did `govmesh db upgrade` run?)"
            ) from None
        await self._store.start()
        await self._warm_up(self._store)
        verifier = Verifier(
            trust=self._trust,
            replay=self._store,
            clock=time.time,
            config=VerificationConfig(
                clock_skew_s=s.clock_skew_s,
                proof_window_s=s.proof_window_s,
                replay_timeout_s=replay_timeout_s,
            ),
        )
        self._servicer = VerificationServicer(verifier=verifier, metrics=self._metrics)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        self._sighup = True
        self._poll = asyncio.create_task(self._poll_trust(), name="trust-poll")

    @staticmethod
    async def _warm_up(store: PostgresReplayStore) -> None:
        # Open the committer connection and prepare the insert before the
        # first caller pays for it under its own deadline: a random key no
        # proof can ever hash to, expiring in a second.
        try:
            # A clock behind the database's only makes the key expired on arrival.
            with contextlib.suppress(ProofWindowClosed):
                await store.remember(os.urandom(32), time.time() + 1, timeout=5.0)
            await store.seen(os.urandom(32), timeout=5.0)
        except ReplayStoreUnavailable as exc:
            raise ConfigurationError(f"cannot write to the replay store: {exc}") from None

    def _reload(self) -> None:
        assert self._trust is not None
        try:
            state = self._trust.refresh("SIGHUP")
        except Exception:
            logger.exception("trust reload on SIGHUP failed")
            return
        logger.info(
            "trust configuration checked on SIGHUP",
            extra={"generation": state.generation, "usable": state.error is None},
        )

    async def _poll_trust(self) -> None:
        assert self._trust is not None
        while True:
            await asyncio.sleep(self._settings.trust_poll_interval_s)
            try:
                self._trust.refresh("poll")
            except Exception:  # the poll is a backstop; it must keep running
                logger.exception("trust poll failed")

    def register(self, server: grpc.aio.Server) -> None:
        assert self._servicer is not None
        verification_pb2_grpc.add_VerificationServicer_to_server(self._servicer, server)

    def ready(self) -> bool:
        return self._servicer is not None

    async def close(self) -> None:
        if self._sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll
        if self._store is not None:
            await self._store.close()


async def run(settings: VerificationSettings) -> None:
    """Serve until stopped."""
    endpoint = settings.metrics_endpoint()
    metrics = VerificationMetrics(endpoint.registry) if endpoint else None
    await serve(
        VerificationService(settings, metrics=metrics),
        listen=settings.listen,
        grace_period_s=settings.grace_period_s,
        port_file=settings.port_file,
        metrics=endpoint,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m govmesh.verification`."""
    return run_service("verification", VerificationSettings, run, argv)
