"""Settings of the lineage service."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from govmesh.lineage.keys import DEFAULT_ORIGIN
from govmesh.lineage.notes import NoteError, check_key_name
from govmesh.runtime.db import state_file_for
from govmesh.runtime.settings import ServerSettings


class LineageSettings(ServerSettings):
    """GOVMESH_* settings read by `govmesh serve lineage`."""

    listen: str = "127.0.0.1:50054"
    database_url: str = Field(description="the Postgres holding the log (GOVMESH_DATABASE_URL)")
    keys_dir: Path = Field(
        description="holds lineage.jwk.json, the checkpoint key (GOVMESH_KEYS_DIR)"
    )
    lineage_origin: str = Field(
        default=DEFAULT_ORIGIN,
        description="checkpoint origin line and log key name (GOVMESH_LINEAGE_ORIGIN)",
    )
    lineage_commit_max: int = Field(
        default=2048, ge=1, le=16384, description="most entries committed in one transaction"
    )
    lineage_commit_linger_ms: float = Field(
        default=0.0, ge=0.0, le=50.0, description="wait this long for company before a commit"
    )
    lineage_witnesses: str = Field(
        default="",
        description="witness verifier keys (or files of them) whose cosignatures are accepted",
    )
    lineage_pool_size: int = Field(default=8, ge=2, le=64)
    lineage_state_file: Path | None = Field(
        default=None,
        description="where this lineage process records the newest tree it signed, to refuse "
        "a database rolled back behind it, across restarts too; on a volume that outlives the "
        "process, one per lineage process (default: one file per database under the user's "
        "state folder)",
    )

    def state_file(self) -> Path:
        """GOVMESH_LINEAGE_STATE_FILE, or the default file for this database."""
        if self.lineage_state_file is not None:
            return self.lineage_state_file
        return state_file_for(self.database_url, "lineage", "signed")

    @field_validator("lineage_origin")
    @classmethod
    def _origin(cls, value: str) -> str:
        try:
            return check_key_name(value)
        except NoteError as exc:
            raise ValueError(str(exc)) from None
