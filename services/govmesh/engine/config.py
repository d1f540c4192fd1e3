"""Settings of the authorization engine."""

from __future__ import annotations

from pathlib import Path

import platformdirs
from pydantic import Field, model_validator

from govmesh.engine.core import DecisionConfig
from govmesh.runtime.settings import ServerSettings


def _default_spool() -> Path:
    return platformdirs.user_state_path("govmesh") / "engine-spool"


class EngineSettings(ServerSettings):
    """GOVMESH_* settings read by `govmesh serve engine`.

    The defaults keep a decision under 250 ms even when a peer hangs: each
    peer gets its own deadline, and the whole decision, lineage append
    included, never runs past the budget. They are sized to the measured
    tail of a 2-core machine running the whole mesh (README, Performance):
    at 8 closed-loop callers the slowest of 12,200 answers took 74 ms
    (verification), 66 ms (policy) and 102 ms (lineage), each a stall in
    which the machine did not run the process, not work it did. Shorter
    deadlines turned those stalls into denies of valid requests.
    """

    listen: str = "127.0.0.1:50051"
    verification_target: str = "127.0.0.1:50053"
    policy_target: str = "127.0.0.1:50052"
    lineage_target: str = "127.0.0.1:50054"

    verification_timeout_ms: float = Field(default=100.0, gt=0, le=60_000)
    policy_timeout_ms: float = Field(default=100.0, gt=0, le=60_000)
    lineage_timeout_ms: float = Field(default=120.0, gt=0, le=60_000)
    decision_budget_ms: float = Field(default=250.0, gt=0, le=120_000)

    keys_dir: Path = Field(description="govmesh's signing keys; the engine reads engine.jwk.json")
    grant_ttl_s: int = Field(default=30, ge=1, le=60)
    grant_issuer: str = "govmesh"
    grant_audience: str = "govmesh-executor"

    spool_dir: Path = Field(default_factory=_default_spool)
    spool_retry_s: float = Field(default=1.0, gt=0, le=300)
    spool_timeout_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="how long a deny may wait to be durable in the spool before it is answered",
    )
    engine_id: str | None = Field(
        default=None, description="defaults to host name and a random suffix"
    )

    # Concurrent decisions share peer calls: at most this many requests per
    # batch call, and this many batch calls in flight per peer.
    peer_batch_max: int = Field(default=128, ge=1, le=1024)
    peer_max_in_flight: int = Field(default=4, ge=1, le=64)
    peer_linger_ms: float = Field(default=0.0, ge=0, le=100)
    lineage_batch_max: int = Field(default=256, ge=1, le=4096)
    lineage_max_in_flight: int = Field(default=8, ge=1, le=64)
    lineage_linger_ms: float = Field(default=1.0, ge=0, le=100)

    def decision_config(self) -> DecisionConfig:
        """The deadlines of one decision, in seconds, as the engine's core takes them."""
        return DecisionConfig(
            verification_timeout=self.verification_timeout_ms / 1000,
            policy_timeout=self.policy_timeout_ms / 1000,
            lineage_timeout=self.lineage_timeout_ms / 1000,
            budget=self.decision_budget_ms / 1000,
            spool_timeout=self.spool_timeout_s,
        )

    @model_validator(mode="after")
    def _budget_covers_a_peer(self) -> EngineSettings:
        shortest = min(self.verification_timeout_ms, self.policy_timeout_ms)
        if self.decision_budget_ms < shortest:
            raise ValueError("decision_budget_ms is shorter than every peer timeout")
        return self
