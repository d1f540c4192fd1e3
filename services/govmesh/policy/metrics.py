"""The policy authority's Prometheus metrics.

The epoch, the bundles in force and readiness are read from the authority
at scrape time: only the current bundle versions are ever exported, so the
version label has one value at a time.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from govmesh.policy.authority import Answer, Authority
from govmesh.runtime.metrics import LATENCY_BUCKETS, LoopCounterFamily, LoopHistogramFamily


class _StateCollector(Collector):
    def __init__(self, authority: Authority) -> None:
        self._authority = authority

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snapshot = self._authority.snapshot
        yield GaugeMetricFamily(
            "govmesh_policy_ready",
            "1 while this replica has a valid bundle to answer with, else 0.",
            value=1 if snapshot is not None else 0,
        )
        yield GaugeMetricFamily(
            "govmesh_policy_epoch",
            "The policy epoch this replica answers under (0 when it answers nothing).",
            value=snapshot.epoch if snapshot is not None else 0,
        )
        info = GaugeMetricFamily(
            "govmesh_policy_bundle_info",
            "The bundles in force: active and shadow versions (shadow empty when none).",
            labels=["active", "shadow"],
        )
        if snapshot is not None:
            shadow = snapshot.shadow.version if snapshot.shadow is not None else ""
            info.add_metric([snapshot.active.version, shadow], 1)
        yield info


class PolicyMetrics:
    """Every metric of one policy process, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self.evaluation_seconds = LoopHistogramFamily(
            "govmesh_policy_evaluation_seconds",
            "Duration of one evaluation (active bundle, and shadow when there is one).",
            [],
            registry,
            buckets=LATENCY_BUCKETS,
        )
        self.shadow_evaluations = LoopCounterFamily(
            "govmesh_policy_shadow_evaluations",
            "Requests also evaluated under a shadow bundle.",
            [],
            registry,
        )
        self.shadow_disagreements = LoopCounterFamily(
            "govmesh_policy_shadow_disagreements",
            "Shadow evaluations whose decision differed from the active bundle's.",
            [],
            registry,
        )
        self._evaluation = self.evaluation_seconds.labels()
        self._shadowed = self.shadow_evaluations.labels()
        self._disagreed = self.shadow_disagreements.labels()

    def evaluated(self, answer: Answer, seconds: float) -> None:
        """Record one evaluation."""
        self._evaluation.observe(seconds)
        if answer.shadow is not None:
            self._shadowed.inc()
            if answer.shadow.allowed != answer.active.allowed:
                self._disagreed.inc()

    def watch(self, authority: Authority) -> None:
        """Export the authority's epoch, bundles and readiness, read at scrape time."""
        self._registry.register(_StateCollector(authority))
