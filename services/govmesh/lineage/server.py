"""The lineage service process: `govmesh serve lineage`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging

import grpc

from govmesh.lineage.config import LineageSettings
from govmesh.lineage.floor import StateFile
from govmesh.lineage.keys import load_log_signer, parse_vkeys
from govmesh.lineage.metrics import LineageMetrics
from govmesh.lineage.notes import COSIGNATURE_V1
from govmesh.lineage.sequencer import Sequencer
from govmesh.lineage.servicer import LineageServicer
from govmesh.lineage.store import LogCorrupted, LogStore
from govmesh.lineage.watch import CommitWatch
from govmesh.runtime.entry import run_service
from govmesh.runtime.errors import ConfigurationError
from govmesh.runtime.server import Health, serve
from govmesh.v1 import lineage_pb2, lineage_pb2_grpc

SERVICE_NAME = lineage_pb2.DESCRIPTOR.services_by_name["Lineage"].full_name
#: How often the entries no witness has cosigned are counted again (with metrics on).
UNWITNESSED_INTERVAL_S = 15.0

logger = logging.getLogger(__name__)


class LineageService:
    """Lifecycle of the lineage service: database, signing key, sequencer, watch."""

    service_names = (SERVICE_NAME,)

    def __init__(self, settings: LineageSettings, *, metrics: LineageMetrics | None = None) -> None:
        self._settings = settings
        self._metrics = metrics
        self._witnessed: asyncio.Task[None] | None = None
        self._store: LogStore | None = None
        self._sequencer: Sequencer | None = None
        self._watch: CommitWatch | None = None
        self._servicer: LineageServicer | None = None

    async def start(self, health: Health) -> None:
        s = self._settings
        signer = load_log_signer(s.keys_dir, s.lineage_origin)
        witnesses = parse_vkeys(s.lineage_witnesses, sig_type=COSIGNATURE_V1)
        try:
            self._store = await LogStore.open(s.database_url, max_size=s.lineage_pool_size)
            size, _ = await self._store.head()
        except Exception as exc:
            raise ConfigurationError(
                f"cannot use the lineage database: {exc.__class__.__name__}: {exc}"
                "\n  (is GOVMESH_DATABASE_URL right, and did `govmesh db upgrade` run?)"
            ) from None
        self._sequencer = Sequencer(
            store=self._store,
            signer=signer,
            origin=s.lineage_origin,
            state_file=StateFile(s.state_file()),
            max_batch=s.lineage_commit_max,
            linger_s=s.lineage_commit_linger_ms / 1000,
            metrics=self._metrics,
        )
        try:
            await self._sequencer.start()
        except LogCorrupted as exc:
            raise ConfigurationError(
                f"the lineage log cannot be trusted: {exc}"
                "\n  (run `govmesh lineage verify --database-url ...` to find what changed)"
            ) from None
        self._watch = CommitWatch(size)
        self._sequencer.on_commit(self._watch.committed)
        await self._watch.listen(self._store)
        self._servicer = LineageServicer(
            store=self._store,
            sequencer=self._sequencer,
            watch=self._watch,
            witnesses=witnesses,
            metrics=self._metrics,
        )
        if self._metrics is not None:
            sequencer = self._sequencer
            self._metrics.watch(lambda: self._tree_size(), lambda: sequencer.trusted_at)
            if witnesses:
                self._witnessed = asyncio.create_task(
                    self._count_unwitnessed(self._metrics, self._store), name="unwitnessed"
                )
        # Everything loaded so far lives as long as the process: keep it out of
        # the collector's full passes, whose pauses would land on appends.
        gc.freeze()

    def _tree_size(self) -> int:
        trusted = self._sequencer.trusted if self._sequencer is not None else None
        return trusted.size if trusted is not None else 0

    async def _count_unwitnessed(self, metrics: LineageMetrics, store: LogStore) -> None:
        while True:
            try:
                witnessed = await store.latest_checkpoint(witnessed=True)
                covered = witnessed.tree_size if witnessed is not None else 0
                metrics.unwitnessed_entries.set(max(0, self._tree_size() - covered))
            except Exception as exc:  # a metric must not stop the service
                logger.warning("cannot count unwitnessed entries: %r", exc)
            await asyncio.sleep(UNWITNESSED_INTERVAL_S)

    def register(self, server: grpc.aio.Server) -> None:
        assert self._servicer is not None
        lineage_pb2_grpc.add_LineageServicer_to_server(self._servicer, server)

    def ready(self) -> bool:
        return self._servicer is not None

    async def close(self) -> None:
        if self._witnessed is not None:
            self._witnessed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._witnessed
        if self._sequencer is not None:
            await self._sequencer.close()
        if self._watch is not None:
            await self._watch.close()
        if self._store is not None:
            await self._store.close()


async def run(settings: LineageSettings) -> None:
    """Serve until stopped."""
    endpoint = settings.metrics_endpoint()
    await serve(
        LineageService(settings, metrics=LineageMetrics(endpoint.registry) if endpoint else None),
        listen=settings.listen,
        grace_period_s=settings.grace_period_s,
        port_file=settings.port_file,
        metrics=endpoint,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m govmesh.lineage`."""
    return run_service("lineage", LineageSettings, run, argv)
