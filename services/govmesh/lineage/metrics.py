"""The lineage service's Prometheus metrics.

The tree size and the checkpoint's age are read from the sequencer at
scrape time; the entries no witness has cosigned yet are refreshed in the
background (one indexed query) when the log accepts cosignatures.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Gauge

from govmesh.runtime.metrics import LATENCY_BUCKETS, SIZE_BUCKETS, LoopHistogramFamily


class LineageMetrics:
    """Every metric of one lineage process, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.append_seconds_family = LoopHistogramFamily(
            "govmesh_lineage_append_seconds",
            "Time from receiving an append call to its receipts (check, queue, group commit).",
            [],
            registry,
            buckets=LATENCY_BUCKETS,
        )
        self.append_seconds = self.append_seconds_family.labels()
        self.commit_entries_family = LoopHistogramFamily(
            "govmesh_lineage_commit_entries",
            "Entries committed together under one signed checkpoint (group commit size).",
            [],
            registry,
            buckets=SIZE_BUCKETS,
        )
        self.commit_entries = self.commit_entries_family.labels()
        self.commit_seconds_family = LoopHistogramFamily(
            "govmesh_lineage_commit_seconds",
            "Duration of one group commit: sign, insert, commit, record the signed tree.",
            [],
            registry,
            buckets=LATENCY_BUCKETS,
        )
        self.commit_seconds = self.commit_seconds_family.labels()
        self.tree_size = Gauge(
            "govmesh_lineage_tree_size",
            "Entries in the log as of the newest checkpoint this process signed or verified.",
            registry=registry,
        )
        self.checkpoint_age_seconds = Gauge(
            "govmesh_lineage_checkpoint_age_seconds",
            "Seconds since this process last signed a checkpoint (or verified the head at start).",
            registry=registry,
        )
        self.unwitnessed_entries = Gauge(
            "govmesh_lineage_unwitnessed_entries",
            "Entries beyond the largest checkpoint a trusted witness cosigned.",
            registry=registry,
        )

    def watch(
        self,
        tree_size: Callable[[], int],
        checkpoint_time: Callable[[], float],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Read the tree size and the newest checkpoint's time (epoch seconds) at scrape time."""
        self.tree_size.set_function(lambda: float(tree_size()))
        self.checkpoint_age_seconds.set_function(lambda: max(0.0, clock() - checkpoint_time()))
