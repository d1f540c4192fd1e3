"""Settings of the lineage service."""

from __future__ import annotations

from pydantic import Field

from govmesh.runtime.settings import ServerSettings


class LineageSettings(ServerSettings):
    """GOVMESH_* settings read by `govmesh serve lineage`."""

    listen: str = "127.0.0.1:50054"
    database_url: str = Field(description="the Postgres holding the log (GOVMESH_DATABASE_URL)")
