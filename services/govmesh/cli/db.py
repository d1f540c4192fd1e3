"""`govmesh db upgrade`: Alembic migrations to head."""

from __future__ import annotations

import argparse
import os
from typing import Any

from govmesh.runtime.db import upgrade_database
from govmesh.runtime.errors import ConfigurationError
from govmesh.runtime.logs import configure_logging


def _upgrade(args: argparse.Namespace) -> int:
    url = args.database_url or os.environ.get("GOVMESH_DATABASE_URL")
    if not url:
        raise ConfigurationError("set GOVMESH_DATABASE_URL or pass --database-url")
    configure_logging(service="db", fmt="text")
    try:
        upgrade_database(url)
    except OSError as exc:
        raise ConfigurationError(f"cannot reach the database: {exc}") from None
    print("database is at head")
    return 0


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser("db", help="database schema")
    sub = parser.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    upgrade = sub.add_parser("upgrade", help="run the migrations to head")
    upgrade.add_argument("--database-url", help="defaults to GOVMESH_DATABASE_URL")
    upgrade.set_defaults(func=_upgrade)
