"""The lineage service process: `govmesh serve lineage`."""

from __future__ import annotations

import grpc
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from govmesh.lineage.config import LineageSettings
from govmesh.lineage.servicer import LineageServicer
from govmesh.lineage.store import LineageStore
from govmesh.runtime.db import create_db_engine
from govmesh.runtime.entry import run_service
from govmesh.runtime.errors import ConfigurationError
from govmesh.runtime.server import Health, serve
from govmesh.v1 import lineage_pb2, lineage_pb2_grpc

SERVICE_NAME = lineage_pb2.DESCRIPTOR.services_by_name["Lineage"].full_name


class LineageService:
    """Lifecycle of the lineage service."""

    service_names = (SERVICE_NAME,)

    def __init__(self, settings: LineageSettings) -> None:
        self._settings = settings
        self._engine: AsyncEngine | None = None
        self._servicer: LineageServicer | None = None

    async def start(self, health: Health) -> None:
        self._engine = create_db_engine(self._settings.database_url)
        try:
            async with self._engine.connect() as conn:
                await conn.execute(text("SELECT size FROM lineage_head"))
        except (SQLAlchemyError, OSError) as exc:
            raise ConfigurationError(
                f"cannot use the lineage database: {exc.__class__.__name__}: {exc}"
                "\n  (is GOVMESH_DATABASE_URL right, and did `govmesh db upgrade` run?)"
            ) from None
        self._servicer = LineageServicer(store=LineageStore(engine=self._engine))

    def register(self, server: grpc.aio.Server) -> None:
        assert self._servicer is not None
        lineage_pb2_grpc.add_LineageServicer_to_server(self._servicer, server)

    def ready(self) -> bool:
        return self._servicer is not None

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()


async def run(settings: LineageSettings) -> None:
    """Serve until stopped."""
    await serve(
        LineageService(settings),
        listen=settings.listen,
        grace_period_s=settings.grace_period_s,
        port_file=settings.port_file,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m govmesh.lineage`."""
    return run_service("lineage", LineageSettings, run, argv)
