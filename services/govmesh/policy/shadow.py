"""Recording shadow evaluations: counters per epoch, and every disagreement.

Evaluation never waits for the store: observations are kept in memory and
written in batches. When the store is away for long, disagreements beyond
`capacity` are dropped and counted as dropped, so the report says so.

A write can also fail because of what is written (a record with no stored
form, counters for an epoch the store no longer has). The store then still
answers, so the batch is written in parts: each epoch's counters alone, the
records by halves, until what the store refuses is alone. That is dropped
(a record is counted as dropped) and everything else is written: no single
request can stop the report.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence

from govmesh.policy.store import PolicyStore, ShadowCounts, ShadowRecord

logger = logging.getLogger(__name__)


def _brief(exc: BaseException) -> str:
    # SQLAlchemy's message carries the statement and every parameter: keep the cause only.
    return f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


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
        """Write what was observed since the last flush.

        1. Write everything in one transaction: done.
        2. The store does not answer: keep it all for later (bounded).
        3. The store answers, so it refused something written: write the
           counters and the records in parts, dropping only what it refuses.
        """
        if not self._records and not self._counts:
            return
        records, self._records = self._records, []
        counts, self._counts = self._counts, defaultdict(lambda: [0, 0, 0])
        # 1. All at once.
        try:
            await self._store.record_shadow(
                records, {epoch: ShadowCounts(*c) for epoch, c in counts.items()}
            )
            return
        except Exception as exc:
            failure = exc
        # 2. The store is away.
        if not await self._store_answers():
            logger.warning("cannot record shadow evaluations yet: %s", _brief(failure))
            self._keep(records, counts)
            return
        # 3. Something written was refused.
        logger.warning("the store refused shadow evaluations; writing them in parts")
        for epoch, count in counts.items():
            try:
                await self._store.record_shadow([], {epoch: ShadowCounts(*count)})
            except Exception as exc:
                if not await self._store_answers():
                    self._keep([], {epoch: count})
                    continue
                logger.error(
                    "dropped the shadow counters of epoch %d %s: %s", epoch, count, _brief(exc)
                )
        await self._write(records)

    async def _write(self, records: Sequence[ShadowRecord]) -> None:
        if not records:
            return
        try:
            await self._store.record_shadow(records, {})
            return
        except Exception as exc:
            if not await self._store_answers():
                self._keep(records, {})
                return
            if len(records) == 1:
                record = records[0]
                self._counts[record.epoch][2] += 1
                logger.error(
                    "dropped a shadow disagreement the store refuses (epoch %d, decision %r): %s",
                    record.epoch,
                    record.decision_id,
                    _brief(exc),
                )
                return
        half = len(records) // 2
        await self._write(records[:half])
        await self._write(records[half:])

    async def _store_answers(self) -> bool:
        try:
            await self._store.ping()
        except Exception:
            return False
        return True

    def _keep(self, records: Sequence[ShadowRecord], counts: dict[int, list[int]]) -> None:
        """Keep observations for the next flush; records beyond capacity count as dropped."""
        for epoch, (evaluated, disagreed, dropped) in counts.items():
            mine = self._counts[epoch]
            mine[0] += evaluated
            mine[1] += disagreed
            mine[2] += dropped
        room = max(0, self._capacity - len(self._records))
        for record in records[room:]:
            self._counts[record.epoch][2] += 1
        self._records = [*records[:room], *self._records]

    async def run(self, interval_s: float = 0.5) -> None:
        """Flush every `interval_s` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            await self.flush()
