"""The policy authority process: `govmesh serve policy`.

Start-up: read the trusted policy-admin keys from the trust file, open the
store, read this replica's epoch floor (the newest epoch it verified before)
from its state file, sign and activate GOVMESH_POLICY_PATH when it is set and
not already the active bundle, load the newest epoch, then follow the store
(LISTEN/NOTIFY plus a periodic check). Health is SERVING exactly while a valid bundle is
loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from govmesh.artifacts.keys import load_private_jwk
from govmesh.artifacts.signing import SignatureRejected, load_admin_keys
from govmesh.policy.authority import Authority
from govmesh.policy.bundle import BundleRejected, read_bundle_source
from govmesh.policy.config import PolicySettings
from govmesh.policy.floor import EpochFloor
from govmesh.policy.metrics import PolicyMetrics
from govmesh.policy.servicer import PolicyServicer
from govmesh.policy.shadow import ShadowRecorder
from govmesh.policy.store import EpochListener, PolicyStore, StoreError
from govmesh.runtime.db import create_db_engine
from govmesh.runtime.entry import run_service
from govmesh.runtime.errors import ConfigurationError
from govmesh.runtime.server import Health, serve
from govmesh.v1 import policy_pb2, policy_pb2_grpc

logger = logging.getLogger(__name__)

SERVICE_NAME = policy_pb2.DESCRIPTOR.services_by_name["PolicyAuthority"].full_name
ADMIN_KEY_FILE = "policy-admin.jwk.json"


class PolicyService:
    """Lifecycle of the policy authority."""

    service_names = (SERVICE_NAME,)

    def __init__(self, settings: PolicySettings, *, metrics: PolicyMetrics | None = None) -> None:
        self._settings = settings
        self._metrics = metrics
        self._engine: AsyncEngine | None = None
        self._authority: Authority | None = None
        self._servicer: PolicyServicer | None = None
        self._health: Health | None = None
        self._reported = False
        self._tasks: list[asyncio.Task[None]] = []
        self._recorder: ShadowRecorder | None = None

    async def _on_ready(self, ready: bool) -> None:
        health = self._health
        if health is None:
            return
        if self._reported and not health.serving:
            return  # the server is stopping: NOT_SERVING stays
        self._reported = ready
        await health.set_serving(ready)

    async def start(self, health: Health) -> None:
        settings = self._settings
        self._health = health
        admin_keys = load_admin_keys(settings.trust_file)
        self._engine = create_db_engine(settings.database_url)
        try:
            async with self._engine.connect() as conn:
                await conn.execute(text("SELECT 1 FROM policy_epochs LIMIT 1"))
        except (SQLAlchemyError, OSError) as exc:
            raise ConfigurationError(
                f"cannot use the policy database: {exc.__class__.__name__}: {exc}"
                "\n  (is GOVMESH_DATABASE_URL right, and did `govmesh db upgrade` run?)"
            ) from None
        store = PolicyStore(self._engine)
        self._recorder = ShadowRecorder(store)
        authority = Authority(
            store=store,
            admin_keys=admin_keys,
            floor=EpochFloor(settings.state_file()),
            recorder=self._recorder,
            on_ready=self._on_ready,
        )
        self._authority = authority
        if self._metrics is not None:
            self._metrics.watch(authority)
        if settings.policy_path is not None:
            await self._bootstrap(authority)
        await authority.refresh()
        if not authority.ready:
            logger.warning("not serving until a policy bundle is activated: %s", authority.problem)
        listener = EpochListener(settings.database_url, authority.wake)
        self._tasks = [
            asyncio.create_task(
                authority.run(listener=listener, interval_s=settings.refresh_interval_s)
            ),
            asyncio.create_task(self._recorder.run(settings.shadow_flush_interval_s)),
        ]
        self._servicer = PolicyServicer(authority=authority, store=store, metrics=self._metrics)

    async def _bootstrap(self, authority: Authority) -> None:
        settings = self._settings
        assert settings.policy_path is not None
        if settings.keys_dir is None:
            raise ConfigurationError(
                "GOVMESH_POLICY_PATH is set but GOVMESH_KEYS_DIR is not: "
                f"the policies are signed with {ADMIN_KEY_FILE} from there"
            )
        key = load_private_jwk(settings.keys_dir / ADMIN_KEY_FILE)
        try:
            source = read_bundle_source(settings.policy_path)
            await authority.bootstrap(source, key)
        except (BundleRejected, SignatureRejected, StoreError) as exc:
            raise ConfigurationError(
                f"the policies at {settings.policy_path} were refused: {exc}"
            ) from None

    def register(self, server: grpc.aio.Server) -> None:
        assert self._servicer is not None
        policy_pb2_grpc.add_PolicyAuthorityServicer_to_server(self._servicer, server)

    def ready(self) -> bool:
        ready = self._authority is not None and self._authority.ready
        self._reported = ready
        return ready

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._recorder is not None:
            with contextlib.suppress(Exception):
                await self._recorder.flush()
        if self._engine is not None:
            await self._engine.dispose()


async def run(settings: PolicySettings) -> None:
    """Serve until stopped."""
    endpoint = settings.metrics_endpoint()
    await serve(
        PolicyService(settings, metrics=PolicyMetrics(endpoint.registry) if endpoint else None),
        listen=settings.listen,
        grace_period_s=settings.grace_period_s,
        port_file=settings.port_file,
        metrics=endpoint,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m govmesh.policy`."""
    return run_service("policy", PolicySettings, run, argv)
