"""Settings of the policy authority."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from govmesh.runtime.settings import ServerSettings


class PolicySettings(ServerSettings):
    """GOVMESH_* settings read by `govmesh serve policy`."""

    listen: str = "127.0.0.1:50052"
    policy_path: Path = Field(description="a .cedar file or a folder of them (GOVMESH_POLICY_PATH)")
