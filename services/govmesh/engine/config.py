"""Settings of the authorization engine."""

from __future__ import annotations

from pathlib import Path

import platformdirs
from pydantic import Field, model_validator

from govmesh.engine.core import DecisionConfig
from govmesh.runtime.settings import ServerSettings


def _default_spool() -> Path:
    return platformdirs.user_state_path("govmesh") / "engine-spool"


#: Decisions at once. With every decision in flight, each takes about
#: limit / throughput (Little's law), which must stay well inside the peer
#: deadlines (100/100/120 ms, budget 250 ms). Measured on the 2-core
#: reference machine with `govmesh bench --set GOVMESH_ADMISSION_MAX_CONCURRENT=N`
#: at 64 callers: 8 gave 294 decisions/s at 3.75 ms CPU each, 16 gave 411,
#: 24 gave 526 at 2.38 ms, 32 gave 593 at 2.17 ms, all with no valid request
#: denied; at 64 the peers missed their deadlines and 2,358 of 2,700 valid
#: requests were denied. 24 keeps batches large and stays well below that edge.
ADMISSION_MAX_CONCURRENT = 24
#: The budget a caller that can wait may get: the deadlines above, stretched
#: eightfold at most (verification and policy 800 ms, lineage 960 ms). The
#: short deadlines hold for a caller in a hurry; a caller that waits gets
#: through a stall of the machine instead of a DENY PEER_TIMEOUT. On the
#: 2-core reference machine running the test suite, single peers stalled for
#: more than 100 ms with one request in flight, and for more than 400 ms
#: (lineage) under a flood; this covers twice that.
DECISION_BUDGET_MAX_MS = 2000.0
#: Requests waiting for a slot: a few seconds of work at 300-700 decisions/s,
#: each holding at most its request (under 64 KiB) meanwhile.
ADMISSION_QUEUE_MAX = 1024
#: Calls the gRPC server accepts beyond admission's bounds: health checks,
#: reflection, and calls on their way to being refused.
RPC_HEADROOM = 64


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
    decision_budget_max_ms: float = Field(
        default=DECISION_BUDGET_MAX_MS,
        gt=0,
        le=120_000,
        description="the longest budget a caller whose own deadline allows it gets: the peer "
        "timeouts and the budget above stretch in proportion, up to this, for a caller that "
        "can wait (never below decision_budget_ms; GOVMESH_DECISION_BUDGET_MAX_MS)",
    )

    keys_dir: Path = Field(description="govmesh's signing keys; the engine reads engine.jwk.json")
    trust_file: Path | None = Field(
        default=None,
        description="trust TOML whose [policy] admin_jwks lets the engine check the signed "
        "activation of the newest policy epoch itself (GOVMESH_TRUST_FILE)",
    )
    policy_floor_interval_s: float = Field(
        default=1.0,
        gt=0.0,
        le=60.0,
        description="how often the engine asks the policy service for the newest activated "
        "epoch, below which it refuses every policy answer",
    )
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
    breaker_failures: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="consecutive failed calls to a peer after which its circuit breaker opens "
        "and its calls are refused at once (DENY PEER_UNAVAILABLE)",
    )
    breaker_cool_down_ms: float = Field(
        default=1000.0,
        gt=0,
        le=600_000,
        description="how long an open breaker refuses calls before one probe call is let through",
    )
    engine_id: str | None = Field(
        default=None,
        description="the engine's name in lineage (default: the host name); each start adds"
        " a random part, since each start counts its decisions from 0",
    )
    reuse_port: bool = Field(
        default=False,
        description="share the listen address with other engine processes that set it too "
        "(SO_REUSEPORT; `govmesh up --engines N` sets it): the kernel spreads connections "
        "over them. Each such engine joins the address only once it knows the newest policy "
        "epoch. Admission limits, the epoch floor and the lineage counter are each process's "
        "own (GOVMESH_REUSE_PORT)",
    )

    # Concurrent decisions share peer calls: at most this many requests per
    # batch call, and this many batch calls in flight per peer. An append
    # lingers for company only while other decisions are on their way to
    # lineage (Engine.before_lineage).
    peer_batch_max: int = Field(default=128, ge=1, le=1024)
    peer_max_in_flight: int = Field(default=4, ge=1, le=64)
    peer_linger_ms: float = Field(default=0.0, ge=0, le=100)
    lineage_batch_max: int = Field(default=256, ge=1, le=4096)
    lineage_max_in_flight: int = Field(default=8, ge=1, le=64)
    lineage_linger_ms: float = Field(default=1.0, ge=0, le=100)

    # Admission: at most this many decisions at once (their budgets running);
    # the rest wait in line, at most admission_queue_max of them, before
    # their budgets start. Past that, or when a caller's deadline cannot
    # cover the wait, a request is refused at once with RESOURCE_EXHAUSTED.
    admission_max_concurrent: int = Field(default=ADMISSION_MAX_CONCURRENT, ge=1, le=4096)
    admission_queue_max: int = Field(default=ADMISSION_QUEUE_MAX, ge=0, le=65_536)

    def maximum_concurrent_rpcs(self) -> int:
        """The gRPC server's own bound: every admitted or waiting call, and room for probes.

        Calls beyond it get grpc's bare RESOURCE_EXHAUSTED before reaching
        admission, so it sits above admission's own bounds and only stops
        work that would otherwise pile up unbounded below them.
        """
        return self.admission_max_concurrent + self.admission_queue_max + RPC_HEADROOM

    def decision_config(self) -> DecisionConfig:
        """The deadlines of one decision, in seconds, as the engine's core takes them."""
        return DecisionConfig(
            verification_timeout_s=self.verification_timeout_ms / 1000,
            policy_timeout_s=self.policy_timeout_ms / 1000,
            lineage_timeout_s=self.lineage_timeout_ms / 1000,
            budget_s=self.decision_budget_ms / 1000,
            budget_max_s=self.decision_budget_max_ms / 1000,
            spool_timeout_s=self.spool_timeout_s,
            breaker_failures=self.breaker_failures,
            breaker_cool_down_s=self.breaker_cool_down_ms / 1000,
        )

    @model_validator(mode="after")
    def _budget_covers_a_peer(self) -> EngineSettings:
        shortest = min(self.verification_timeout_ms, self.policy_timeout_ms)
        if self.decision_budget_ms < shortest:
            raise ValueError("decision_budget_ms is shorter than every peer timeout")
        return self
