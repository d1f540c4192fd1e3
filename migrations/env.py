"""Alembic environment: online migrations through an async (asyncpg) engine."""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from govmesh.runtime.db import async_database_url


def _url() -> str:
    url = context.config.attributes.get("database_url") or os.environ.get("GOVMESH_DATABASE_URL")
    if not url:
        raise SystemExit("GOVMESH_DATABASE_URL is not set")
    return async_database_url(str(url))


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_async_engine(_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("govmesh migrations run online only")
asyncio.run(_run_async())
