"""Settings of the verification service."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from govmesh.runtime.settings import ServerSettings


class VerificationSettings(ServerSettings):
    """GOVMESH_* settings read by `govmesh serve verification`."""

    listen: str = "127.0.0.1:50053"
    trust_file: Path = Field(description="the trust TOML (GOVMESH_TRUST_FILE)")
    database_url: str = Field(
        description="the Postgres of the replay store, shared by every replica"
        " (GOVMESH_DATABASE_URL)"
    )

    clock_skew_s: float = Field(
        default=5.0, ge=0.0, le=300.0, description="tolerance on exp, nbf and iat"
    )
    proof_window_s: float = Field(
        default=60.0, gt=0.0, le=3600.0, description="how old a proof's iat may be"
    )
    token_cache_size: int = Field(
        default=10_000,
        ge=0,
        le=10_000_000,
        description="verified mandates and attestations remembered (0 disables the cache)",
    )
    trust_poll_interval_s: float = Field(
        default=5.0,
        gt=0.0,
        le=3600.0,
        description="how often the trust files are re-read by content (stat: per request)",
    )

    replay_timeout_ms: float = Field(
        default=1000.0,
        gt=0.0,
        le=60_000.0,
        description="longest wait for the replay store, within the caller's deadline",
    )
    replay_batch_max: int = Field(default=1024, ge=1, le=100_000)
    replay_linger_ms: float = Field(
        default=0.0, ge=0.0, le=100.0, description="extra wait to grow a replay batch"
    )
    replay_cleanup_interval_s: float = Field(default=30.0, gt=0.0, le=86_400.0)
    database_pool_size: int = Field(default=5, ge=1, le=100)
