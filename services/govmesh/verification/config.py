"""Settings of the verification service."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from govmesh.runtime.settings import ServerSettings


class VerificationSettings(ServerSettings):
    """GOVMESH_* settings read by `govmesh serve verification`."""

    listen: str = "127.0.0.1:50053"
    trust_file: Path = Field(description="the trust TOML (GOVMESH_TRUST_FILE)")
    clock_skew_s: float = Field(default=5.0, ge=0.0, le=300.0)
