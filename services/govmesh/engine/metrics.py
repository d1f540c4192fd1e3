"""The engine's Prometheus metrics, in the default registry.

Only the series live here; serving them over HTTP is left to the process
that exposes the registry.
"""

from __future__ import annotations

from prometheus_client import Gauge

from govmesh.engine.breaker import BreakerState

PEER_BREAKER_STATE = Gauge(
    "govmesh_engine_peer_breaker_state",
    "Circuit breaker of each peer: 0 closed, 1 half-open, 2 open (calls refused at once).",
    ["peer"],
)


def export_breaker_state(peer: str, old: BreakerState, new: BreakerState) -> None:
    """A breaker state hook (CircuitBreaker on_change) that sets the gauge."""
    PEER_BREAKER_STATE.labels(peer=peer).set(int(new))
