"""Real Postgres for tests: GOVMESH_TEST_DATABASE_URL, or an embedded pgserver.

Each test that needs a database gets a fresh one, migrated to head, and
dropped afterwards, so tests never see each other's rows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.engine import make_url

from govmesh.runtime.db import libpq_database_url, upgrade_database

T = TypeVar("T")

#: Databases dropped concurrently at the end of a session.
DROPS_AT_ONCE = 8


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even inside a running loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def database_url(server_url: str, name: str) -> str:
    """`server_url` with its database replaced by `name`."""
    return (
        make_url(libpq_database_url(server_url))
        .set(database=name)
        .render_as_string(hide_password=False)
    )


async def _admin(server_url: str, statement: str) -> None:
    conn = await asyncpg.connect(libpq_database_url(server_url))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


class DatabaseFactory:
    """Creates migrated databases on one server and drops them at the end."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self._created: list[str] = []

    def create(self, *, migrate: bool = True) -> str:
        """A new empty database (migrated to head unless told not to); returns its URL."""
        name = f"govmesh_t_{uuid.uuid4().hex[:16]}"
        run_sync(_admin(self.server_url, f'CREATE DATABASE "{name}"'))
        self._created.append(name)
        url = database_url(self.server_url, name)
        if migrate:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pool.submit(upgrade_database, url).result()
        return url

    def drop_all(self) -> None:
        """Drop every database this factory created, several at a time.

        Each DROP DATABASE waits for a checkpoint; concurrent ones share it,
        which makes dropping a session's few hundred databases about five
        times faster than one after another.
        """
        run_sync(self._drop(list(self._created)))
        self._created.clear()

    async def _drop(self, names: list[str]) -> None:
        at_once = asyncio.Semaphore(DROPS_AT_ONCE)

        async def drop(name: str) -> None:
            async with at_once:
                await _admin(self.server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        await asyncio.gather(*(drop(name) for name in names))


async def fetch(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    """Run a query on `url` (as the superuser the tests connect as)."""
    conn = await asyncpg.connect(libpq_database_url(url))
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def execute(url: str, *statements: str) -> None:
    """Run `statements` on `url` as the superuser, the one who can switch off the log's triggers."""
    conn = await asyncpg.connect(libpq_database_url(url))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


_LINEAGE_GUARDS = (
    ("lineage_entries", "lineage_entries_append_only"),
    ("lineage_checkpoints", "lineage_checkpoints_append_only"),
    ("lineage_cosignatures", "lineage_cosignatures_append_only"),
    ("lineage_head", "lineage_head_contiguous"),
)


async def roll_back_lineage(url: str, size: int) -> None:
    """What restoring an older backup does to the log: as it was at `size`, validly signed."""
    await execute(
        url,
        *(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}" for table, trigger in _LINEAGE_GUARDS),
        f"DELETE FROM lineage_cosignatures WHERE tree_size > {size:d}",
        f"DELETE FROM lineage_checkpoints WHERE tree_size > {size:d}",
        f"DELETE FROM lineage_entries WHERE idx >= {size:d}",
        "UPDATE lineage_head SET size = c.tree_size, root_hash = c.root_hash "
        f"FROM lineage_checkpoints c WHERE c.tree_size = {size:d}",
        *(
            f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {trigger}"
            for table, trigger in _LINEAGE_GUARDS
        ),
    )
