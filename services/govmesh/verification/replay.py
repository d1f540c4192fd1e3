"""The replay store in Postgres, shared by every verification replica.

Each proof nonce is inserted with `INSERT ... ON CONFLICT DO NOTHING
RETURNING`: the primary key makes the insert-if-absent atomic, so when two
replicas receive the same proof at the same moment exactly one insert returns
the row and the other sees it as a replay.

Inserts are group-committed: the nonces that arrive together are one
statement and one commit however many they are. Up to `max_in_flight`
batches commit at once, each on a connection of its own, so a nonce that
arrives while a commit waits on its WAL flush starts the next commit at once
instead of queueing behind it (Postgres flushes concurrent commits
together); only when every committer is busy do nonces wait, and then they
form the next, larger batch. Under load the database sees a few hundred
commits per second instead of thousands; at rest a nonce waits for exactly
one round trip. Concurrent batches that hold the same key are decided by
the primary key like two replicas are: one insert returns the row. The
queue and the committer slots are the shared core in
`govmesh.runtime.batching`; each slot keeps a connection of its own here.

A nonce counts as fresh only after its batch committed; any error, or no
answer in time, fails every nonce of the batch (the caller denies: an
unreachable store never means "fresh").

One clock decides both when a nonce may be forgotten and until when a proof
may be recorded: the database's. Replicas' clocks differ; if each deleted
expired nonces by its own clock, a replica running ahead would forget a nonce
that a replica running behind still accepts the proof for. So a nonce is
recorded only while `now()` in Postgres is before its expiry (after that the
proof is refused as expired, ProofWindowClosed), and expired rows are deleted,
in the background and in bounded chunks, only once `now()` in Postgres is past
their expiry by a margin (for steps of the database's clock). A replica's own
clock still checks the window first; it can only narrow it.

The store talks to Postgres through an asyncpg pool directly rather than
through SQLAlchemy: the insert is one fixed statement on the hot path of
every request, and the pool is created lazily, so a database that is down at
some moment fails the requests of that moment, not the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, NamedTuple

import asyncpg

from govmesh.runtime.batching import BatchQueue, Pending, fail
from govmesh.runtime.db import libpq_database_url
from govmesh.verification.core import (
    ProofWindowClosed,
    ReplayStoreTimeout,
    ReplayStoreUnavailable,
)

if TYPE_CHECKING:
    from govmesh.verification.metrics import VerificationMetrics

logger = logging.getLogger(__name__)

#: Rows counted exactly for the size metric; beyond, Postgres' own estimate is used.
SIZE_EXACT_UP_TO = 100_000
# A count that stops at the bound, or the planner's estimate past it: a
# scrape never costs a scan of a large table.
_SIZE = """
    SELECT CASE WHEN exact.n < $1 THEN exact.n
                ELSE GREATEST(exact.n, (SELECT reltuples::bigint FROM pg_class
                                        WHERE oid = 'verification_replay'::regclass))
           END
    FROM (SELECT count(*) AS n FROM (SELECT 1 FROM verification_replay LIMIT $1) AS s) AS exact
"""

# Each key with whether it was inserted and whether its window had closed by
# the database's clock (then it is not inserted). clock_timestamp(), not now():
# the moment the row is considered, however long the statement waited to start.
_INSERT = """
    WITH input AS (
        SELECT k, to_timestamp(e) AS expires_at, to_timestamp(e) <= clock_timestamp() AS closed
        FROM unnest($1::bytea[], $2::float8[]) AS t(k, e)
    ), inserted AS (
        INSERT INTO verification_replay (proof_key, expires_at)
        SELECT k, expires_at FROM input WHERE NOT closed
        ON CONFLICT (proof_key) DO NOTHING
        RETURNING proof_key
    )
    SELECT input.k, input.closed, inserted.proof_key IS NOT NULL AS fresh
    FROM input LEFT JOIN inserted ON inserted.proof_key = input.k
"""
_SEEN = "SELECT 1 FROM verification_replay WHERE proof_key = $1"
_CLEANUP = """
    DELETE FROM verification_replay WHERE proof_key IN (
        SELECT proof_key FROM verification_replay
        WHERE expires_at < now() - make_interval(secs => $1)
        LIMIT $2
    )
"""


class _Nonce(NamedTuple):
    key: bytes
    expires_at: float


class PostgresReplayStore:
    """ReplayStore on the verification_replay table, with group commit."""

    def __init__(
        self,
        *,
        database_url: str,
        pool_size: int = 4,
        max_batch: int = 1024,
        max_in_flight: int = 4,
        linger_s: float = 0.0,
        flush_timeout_s: float = 1.0,
        cleanup_interval_s: float = 30.0,
        cleanup_margin_s: float = 5.0,
        cleanup_chunk: int = 5000,
        metrics: VerificationMetrics | None = None,
    ) -> None:
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be >= 1")
        self._dsn = libpq_database_url(database_url)
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        # One connection per committer slot: checking one out of the pool for
        # every batch would double the CPU cost of a commit.
        self._committers: list[asyncpg.Connection | None] = [None] * max_in_flight
        self._batches: BatchQueue[_Nonce, bool] = BatchQueue(
            name="the replay store",
            flush=self._commit,
            error=ReplayStoreUnavailable,
            max_items=max_batch,
            linger_s=linger_s,
            max_in_flight=max_in_flight,
        )
        self._flush_timeout_s = flush_timeout_s
        self._cleanup_interval_s = cleanup_interval_s
        self._cleanup_margin_s = cleanup_margin_s
        self._cleanup_chunk = cleanup_chunk
        self._cleanup_task: asyncio.Task[None] | None = None
        self._metrics = metrics
        #: Counters for the logs and the benchmark.
        self.batches = 0
        self.inserted = 0

    async def start(self) -> None:
        """Start the committer and the cleanup task."""
        self._batches.start()
        self._cleanup_task = asyncio.create_task(self._cleanup_loop(), name="replay-cleanup")

    async def close(self) -> None:
        """Stop the background tasks; nonces still waiting fail (their requests deny)."""
        await self._batches.stop()
        if self._cleanup_task is not None:
            self._cleanup_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cleanup_task
        for slot in range(len(self._committers)):
            await self._drop_committer(slot)
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self.batches:
            logger.info(
                "replay store: %d nonces committed in %d batches (%.1f per commit)",
                self.inserted,
                self.batches,
                self.inserted / self.batches,
            )

    async def _connections(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self._dsn, min_size=1, max_size=self._pool_size
                    )
        return self._pool

    async def _committer_connection(self, slot: int) -> asyncpg.Connection:
        connection = self._committers[slot]
        if connection is None or connection.is_closed():
            connection = self._committers[slot] = await asyncpg.connect(self._dsn)
        return connection

    async def _drop_committer(self, slot: int) -> None:
        connection, self._committers[slot] = self._committers[slot], None
        if connection is not None and not connection.is_closed():
            connection.terminate()

    async def check(self) -> None:
        """Raise ReplayStoreUnavailable unless the table can be read (start-up check)."""
        try:
            async with asyncio.timeout(self._flush_timeout_s * 5):
                pool = await self._connections()
                await pool.fetchval("SELECT count(*) FROM verification_replay LIMIT 1")
        except Exception as exc:
            raise ReplayStoreUnavailable(f"{exc.__class__.__name__}: {exc}") from None

    async def remember(self, key: bytes, expires_at: float, *, timeout: float) -> bool:
        """Insert `key` unless present; True when this call inserted it.

        Raises ProofWindowClosed when `expires_at` has passed by the
        database's clock: a key the cleanup may already have deleted is
        never fresh again.
        """
        future = self._batches.submit(_Nonce(key, expires_at))
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise ReplayStoreTimeout(f"no commit within {timeout * 1000:.0f} ms") from None

    async def seen(self, key: bytes, *, timeout: float) -> bool:
        """Whether `key` is recorded (a read only: nothing is burned)."""
        try:
            async with asyncio.timeout(timeout):
                pool = await self._connections()
                row = await pool.fetchval(_SEEN, key)
        except TimeoutError:
            raise ReplayStoreTimeout(f"no answer within {timeout * 1000:.0f} ms") from None
        except Exception as exc:
            raise ReplayStoreUnavailable(f"{exc.__class__.__name__}: {exc}") from None
        return row is not None

    async def cleanup(self) -> int:
        """Delete the rows that expired by the database's clock, past the margin; how many."""
        deleted = 0
        while True:
            pool = await self._connections()
            status = await pool.execute(_CLEANUP, self._cleanup_margin_s, self._cleanup_chunk)
            count = int(status.split()[-1])  # "DELETE <n>"
            deleted += count
            if count < self._cleanup_chunk:
                return deleted

    # -- group commit -------------------------------------------------------------

    async def _commit(self, batch: list[Pending[_Nonce, bool]], slot: int) -> None:
        """Insert one batch on the committer connection of `slot`; answer each nonce."""
        waiting = [w for w in batch if not w.future.done()]
        if not waiting:
            return
        unique: dict[bytes, float] = {}
        for pending in waiting:
            unique.setdefault(pending.item.key, pending.item.expires_at)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._flush_timeout_s):
                connection = await self._committer_connection(slot)
                rows = await connection.fetch(_INSERT, list(unique), list(unique.values()))
                inserted = {bytes(row["k"]) for row in rows if row["fresh"]}
                closed = {bytes(row["k"]) for row in rows if row["closed"]}
            if self._metrics is not None:
                self._metrics.replay_commit.observe(time.perf_counter() - started)
        except TimeoutError:
            await self._drop_committer(slot)  # its state is unknown after a cancelled statement
            fail(waiting, ReplayStoreTimeout("the commit did not finish in time"))
            return
        except Exception as exc:
            await self._drop_committer(slot)
            logger.warning("replay store commit failed", extra={"error": repr(exc)})
            fail(waiting, ReplayStoreUnavailable(f"{exc.__class__.__name__}: {exc}"))
            return
        self.batches += 1
        self.inserted += len(inserted)
        first: set[bytes] = set()
        for pending in waiting:
            if pending.future.done():
                continue
            key = pending.item.key
            if key in closed:
                pending.future.set_exception(
                    ProofWindowClosed("the replay store's clock is past the proof's window")
                )
                continue
            # Within one batch the first request with a key gets the insert;
            # a second one with the same key is a replay of it.
            fresh = key in inserted and key not in first
            first.add(key)
            pending.future.set_result(fresh)

    async def size(self) -> int:
        """Nonces in the store: exact up to SIZE_EXACT_UP_TO, Postgres' estimate beyond."""
        pool = await self._connections()
        return int(await pool.fetchval(_SIZE, SIZE_EXACT_UP_TO))

    async def _measure(self) -> None:
        if self._metrics is None:
            return
        try:
            self._metrics.replay_nonces.set(await self.size())
        except Exception as exc:
            logger.warning("replay store size unknown", extra={"error": repr(exc)})

    async def _cleanup_loop(self) -> None:
        while True:
            await self._measure()
            await asyncio.sleep(self._cleanup_interval_s)
            try:
                deleted = await self.cleanup()
            except Exception as exc:
                logger.warning("replay store cleanup failed", extra={"error": repr(exc)})
                continue
            if deleted:
                logger.info("expired proof nonces deleted", extra={"count": deleted})
