"""Recording shadow evaluations: counters per epoch, and every disagreement.

Evaluation never waits for the store: observations are kept in memory and
written in batches. When the store is away for long, disagreements beyond
`capacity` are dropped and counted as dropped, so the report says so.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from govmesh.policy.store import PolicyStore, ShadowCounts, ShadowRecord

logger = logging.getLogger(__name__)


class ShadowRecorder:
    """Buffers shadow observations and writes them to the store."""

    def __init__(self, store: PolicyStore, *, capacity: int = 10_000) -> None:
        self._store = store
        self._capacity = capacity
        self._records: list[ShadowRecord] = []
        self._counts: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])

    def observe(self, epoch: int, disagreement: ShadowRecord | None) -> None:
        """Count one shadow evaluation at `epoch`; keep the disagreement, if any."""
        counts = self._counts[epoch]
        counts[0] += 1
        if disagreement is None:
            return
        counts[1] += 1
        if len(self._records) < self._capacity:
            self._records.append(disagreement)
        else:
            counts[2] += 1

    @property
    def pending(self) -> int:
        return len(self._records) + len(self._counts)

    async def flush(self) -> None:
        """Write what was observed since the last flush; keep it for later if the store fails."""
        if not self._records and not self._counts:
            return
        records, self._records = self._records, []
        counts, self._counts = self._counts, defaultdict(lambda: [0, 0, 0])
        try:
            await self._store.record_shadow(
                records, {epoch: ShadowCounts(*c) for epoch, c in counts.items()}
            )
        except Exception as exc:  # the store is away: keep the observations, bounded
            logger.warning("cannot record shadow evaluations yet: %s", exc)
            for epoch, (evaluated, disagreed, dropped) in counts.items():
                mine = self._counts[epoch]
                mine[0] += evaluated
                mine[1] += disagreed
                mine[2] += dropped
            room = max(0, self._capacity - len(self._records))
            for record in records[room:]:
                self._counts[record.epoch][2] += 1
            self._records = records[:room] + self._records

    async def run(self, interval_s: float = 0.5) -> None:
        """Flush every `interval_s` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            await self.flush()
