"""The verification service's Prometheus metrics.

Check outcomes are counted at the gRPC edge from the core's result; the
token cache and the replay store are read where they keep their own
counts, so verifying a request costs one increment per check and nothing
else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from govmesh.artifacts.checks import REQUIRED_CHECKS
from govmesh.runtime.metrics import (
    LATENCY_BUCKETS,
    LoopCounter,
    LoopCounterFamily,
    LoopHistogramFamily,
    reason_label,
)
from govmesh.verification.core import VerificationResult

#: The `outcome` label of a check that passed; a failed one is labelled with its deny reason.
PASSED = "passed"


class _CacheCollector(Collector):
    """Hits, misses and size of the verified-token cache, read at scrape time."""

    def __init__(self, counts: Callable[[], tuple[int, int, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        hits, misses, entries = self._counts()
        yield CounterMetricFamily(
            "govmesh_verification_token_cache_hits",
            "Mandates and attestations whose signature check was answered by the cache.",
            value=hits,
        )
        yield CounterMetricFamily(
            "govmesh_verification_token_cache_misses",
            "Mandates and attestations looked up in the cache and not found there.",
            value=misses,
        )
        yield GaugeMetricFamily(
            "govmesh_verification_token_cache_entries",
            "Verified tokens in the cache.",
            value=entries,
        )


class VerificationMetrics:
    """Every metric of one verification process, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self.checks = LoopCounterFamily(
            "govmesh_verification_checks",
            "Check verdicts: outcome is `passed` or the deny reason of the failure.",
            ["check", "outcome"],
            registry,
        )
        self.replay_commit_seconds = LoopHistogramFamily(
            "govmesh_verification_replay_commit_seconds",
            "Duration of one group commit of proof nonces to the replay store.",
            [],
            registry,
            buckets=LATENCY_BUCKETS,
        )
        #: The child to observe each commit's duration in.
        self.replay_commit = self.replay_commit_seconds.labels()
        self.replay_nonces = Gauge(
            "govmesh_verification_replay_nonces",
            "Proof nonces in the replay store (exact up to a bound, then Postgres' estimate).",
            registry=registry,
        )
        self._children: dict[tuple[str, int], LoopCounter] = {}
        for check in REQUIRED_CHECKS:
            self._children[(check.value, 0)] = self.checks.labels(check.value, PASSED)

    def verified(self, result: VerificationResult) -> None:
        """Count the verdict of every check of one result."""
        children = self._children
        for outcome in result.outcomes:
            key = (outcome.check.value, int(outcome.reason))
            child = children.get(key)
            if child is None:
                child = children[key] = self.checks.labels(key[0], reason_label(key[1]))
            child.inc()

    def watch_cache(self, counts: Callable[[], tuple[int, int, int]]) -> None:
        """Export the token cache's (hits, misses, entries), read at scrape time."""
        self._registry.register(_CacheCollector(counts))
