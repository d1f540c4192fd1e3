"""Settings of the policy authority."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from govmesh.runtime.db import state_file_for
from govmesh.runtime.settings import ServerSettings


class PolicySettings(ServerSettings):
    """GOVMESH_* settings read by `govmesh serve policy`."""

    listen: str = "127.0.0.1:50052"
    database_url: str = Field(description="the Postgres holding the bundles (GOVMESH_DATABASE_URL)")
    trust_file: Path = Field(
        description="trust TOML whose [policy] admin_jwks names the trusted policy-admin keys "
        "(GOVMESH_TRUST_FILE)"
    )
    keys_dir: Path | None = Field(
        default=None,
        description="govmesh's signing keys; policy-admin.jwk.json signs GOVMESH_POLICY_PATH "
        "(GOVMESH_KEYS_DIR)",
    )
    policy_path: Path | None = Field(
        default=None,
        description="a .cedar file or folder signed and activated at start unless already "
        "active (GOVMESH_POLICY_PATH)",
    )
    refresh_interval_s: float = Field(
        default=5.0,
        gt=0.0,
        le=3600.0,
        description="how often to check the store for a new epoch, whatever NOTIFY says; "
        "an epoch the store has not confirmed for 3 intervals is no longer served",
    )
    shadow_flush_interval_s: float = Field(default=0.5, gt=0.0, le=60.0)
    policy_state_file: Path | None = Field(
        default=None,
        description="the state file recording this replica's epoch floor (the newest policy "
        "epoch it verified), to refuse a store rolled back below it, across restarts too; on a "
        "volume that outlives the process (default: one file per database under the user's "
        "state folder)",
    )

    def state_file(self) -> Path:
        """GOVMESH_POLICY_STATE_FILE, or the default file for this database."""
        if self.policy_state_file is not None:
            return self.policy_state_file
        return state_file_for(self.database_url, "policy", "epoch")
