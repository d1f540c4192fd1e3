"""The engine's Prometheus metrics.

Children are bound once, when the metrics are built (every decision and
reason, every outcome of a peer call), so recording on the decision path is
a dict look-up and an increment, never a label look-up. Admission and the
per-peer circuit breakers report through `admission_queue_depth`,
`admission_refusals` and `breaker_state`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge

from govmesh.artifacts.checks import REASON_PRECEDENCE
from govmesh.runtime.metrics import (
    LATENCY_BUCKETS,
    NO_REASON,
    SIZE_BUCKETS,
    LoopCounter,
    LoopCounterFamily,
    LoopHistogram,
    LoopHistogramFamily,
    reason_label,
)
from govmesh.v1 import common_pb2

#: The peers an engine calls, as the `peer` label names them.
PEERS = ("verification", "policy", "lineage")
#: Outcomes of one (batch) call to a peer.
CALL_OUTCOMES = ("ok", "timeout", "unavailable")
#: Values of govmesh_engine_peer_breaker_state.
BREAKER_CLOSED, BREAKER_HALF_OPEN, BREAKER_OPEN = 0, 1, 2


class PeerCallMetrics:
    """The bound children of one peer: what a batcher records per batch call."""

    __slots__ = ("_batch", "_outcomes", "_seconds")

    def __init__(self, metrics: EngineMetrics, peer: str) -> None:
        self._seconds = metrics.peer_call_seconds.labels(peer)
        self._batch = metrics.peer_batch_size.labels(peer)
        self._outcomes = {o: metrics.peer_calls.labels(peer, o) for o in CALL_OUTCOMES}

    def sent(self, size: int, seconds: float, outcome: str) -> None:
        """One batch call of `size` requests took `seconds` and ended in `outcome`."""
        self._batch.observe(size)
        self._seconds.observe(seconds)
        self._outcomes[outcome].inc()


class EngineMetrics:
    """Every metric of one engine process, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = LoopCounterFamily(
            "govmesh_engine_decisions",
            "Decisions answered, by decision and primary deny reason (none for ALLOW).",
            ["decision", "reason"],
            registry,
        )
        self.decision_seconds = LoopHistogramFamily(
            "govmesh_engine_decision_seconds",
            "Time from receiving an Authorize call to its answer, by decision.",
            ["decision"],
            registry,
            buckets=LATENCY_BUCKETS,
        )
        self.peer_call_seconds = LoopHistogramFamily(
            "govmesh_engine_peer_call_seconds",
            "Duration of one (batch) call to a peer, whatever its outcome.",
            ["peer"],
            registry,
            buckets=LATENCY_BUCKETS,
        )
        self.peer_calls = LoopCounterFamily(
            "govmesh_engine_peer_calls",
            "(Batch) calls to a peer by outcome: ok, timeout (deadline exceeded), unavailable.",
            ["peer", "outcome"],
            registry,
        )
        self.peer_batch_size = LoopHistogramFamily(
            "govmesh_engine_peer_batch_size",
            "Requests carried by one batch call to a peer.",
            ["peer"],
            registry,
            buckets=SIZE_BUCKETS,
        )
        self.breaker_state = Gauge(
            "govmesh_engine_peer_breaker_state",
            "Circuit breaker of a peer: 0 closed, 1 half-open, 2 open.",
            ["peer"],
            registry=registry,
        )
        self.admission_queue_depth = Gauge(
            "govmesh_engine_admission_queue_depth",
            "Authorize calls waiting for admission.",
            registry=registry,
        )
        self.admission_refusals = LoopCounterFamily(
            "govmesh_engine_admission_refusals",
            "Authorize calls refused at admission (RESOURCE_EXHAUSTED), by reason.",
            ["reason"],
            registry,
        )
        self.spool_entries = Gauge(
            "govmesh_engine_spool_entries",
            "Denies in the local spool waiting for lineage.",
            registry=registry,
        )
        self.spool_oldest_age_seconds = Gauge(
            "govmesh_engine_spool_oldest_age_seconds",
            "Age of the oldest group of denies in the spool (0 when it is empty).",
            registry=registry,
        )
        # Bound once: every (decision, reason) pair an engine can answer.
        self._decided: dict[tuple[int, int], tuple[LoopCounter, LoopHistogram]] = {}
        allow = self.decision_seconds.labels("ALLOW")
        deny = self.decision_seconds.labels("DENY")
        self._decided[(common_pb2.ALLOW, common_pb2.DENY_REASON_UNSPECIFIED)] = (
            self.decisions.labels("ALLOW", NO_REASON),
            allow,
        )
        for reason in REASON_PRECEDENCE:
            self._decided[(common_pb2.DENY, reason)] = (
                self.decisions.labels("DENY", reason_label(reason)),
                deny,
            )
        self._odd = (self.decisions.labels("DENY", "UNKNOWN"), deny)
        for peer in PEERS:
            self.breaker_state.labels(peer).set(BREAKER_CLOSED)

    def decided(self, decision: int, reason: int, seconds: float) -> None:
        """Count one answered decision and its latency."""
        counter, latency = self._decided.get((decision, reason), self._odd)
        counter.inc()
        latency.observe(seconds)

    def peer(self, name: str) -> PeerCallMetrics:
        """The bound children of peer `name`, for its batcher."""
        return PeerCallMetrics(self, name)

    def breaker(self, peer: str) -> Gauge:
        """The breaker state gauge of `peer`: `.set(BREAKER_OPEN)` and so on."""
        return self.breaker_state.labels(peer)

    def on_breaker_change(self, peer: str, old: int, new: int) -> None:
        """A circuit breaker's on_change hook: the gauge follows each change of state."""
        self.breaker(peer).set(int(new))

    def refusal(self, reason: str) -> LoopCounter:
        """The refusal counter for `reason` (a short fixed word, e.g. "queue_full")."""
        return self.admission_refusals.labels(reason)

    def watch_spool(self, entries: Callable[[], int], oldest: Callable[[], Path | None]) -> None:
        """Read the spool's depth and the age of its oldest group at scrape time."""
        self.spool_entries.set_function(lambda: float(entries()))
        self.spool_oldest_age_seconds.set_function(lambda: _age(oldest()))


def _age(path: Path | None) -> float:
    # Spool groups are named <time_ns>-<random>.spool, so the name is their age.
    if path is None:
        return 0.0
    try:
        written = int(path.name.split("-", 1)[0]) / 1e9
    except ValueError:
        return 0.0
    return max(0.0, time.time() - written)
