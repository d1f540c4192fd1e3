"""Postgres access: SQLAlchemy 2 async engines on asyncpg, Alembic migrations."""

from __future__ import annotations

import hashlib
import logging
from importlib import resources
from pathlib import Path

import platformdirs
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from govmesh.runtime.errors import ConfigurationError, Unavailable

logger = logging.getLogger(__name__)


class DatabaseUrlError(ConfigurationError, ValueError):
    """A GOVMESH_DATABASE_URL that does not name a Postgres database."""


class DatabaseUnavailable(Unavailable):
    """Postgres did not answer or failed the statement; the same call may succeed later.

    An edge raises it in place of the driver's own error, whose text could
    disclose the database's address or schema.
    """


def async_database_url(url: str) -> str:
    """Normalize a Postgres URL to the SQLAlchemy asyncpg dialect.

    Accepts postgres://, postgresql://, postgresql+asyncpg:// and
    postgresql+psycopg:// forms, with a host or a `?host=/socket/dir`.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseUrlError(f"not a database URL: {url!r}") from exc
    if parsed.get_backend_name() not in ("postgres", "postgresql"):
        raise DatabaseUrlError(f"govmesh needs Postgres, got {parsed.get_backend_name()!r}")
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def libpq_database_url(url: str) -> str:
    """The same database as a plain postgresql:// URL (for asyncpg.connect and psql)."""
    parsed = make_url(async_database_url(url))
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def create_db_engine(url: str, *, pool_size: int = 10, max_overflow: int = 10) -> AsyncEngine:
    """An async engine for `url`; connections are checked before use."""
    return create_async_engine(
        async_database_url(url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
    )


def migrations_dir() -> Path:
    """The Alembic script directory, in a source checkout or an installed wheel."""
    checkout = Path(__file__).resolve().parents[3] / "migrations"
    if (checkout / "env.py").is_file():
        return checkout
    installed = Path(str(resources.files("govmesh") / "migrations"))
    if (installed / "env.py").is_file():
        return installed
    raise FileNotFoundError("govmesh migrations not found")


def upgrade_database(url: str, revision: str = "heads") -> None:
    """Run the Alembic migrations up to `revision` (every branch head by default).

    Synchronous: env.py runs its own event loop. From async code call it in a
    thread (`await asyncio.to_thread(upgrade_database, url)`).
    """
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["database_url"] = async_database_url(url)
    command.upgrade(config, revision)
    logger.info("database upgraded", extra={"revision": revision})


def state_file_for(url: str, folder: str, prefix: str) -> Path:
    """A default state file for the database at `url`, under the user's state folder.

    One file per database (named by a hash of its URL without the password), so
    that one machine can run processes of several stores without mixing up what
    each one recorded.
    """
    database = make_url(libpq_database_url(url)).set(password=None)
    key = hashlib.sha256(database.render_as_string().encode()).hexdigest()[:16]
    return platformdirs.user_state_path("govmesh") / folder / f"{prefix}-{key}.json"
