"""Knowing when the log grew: for `Tail` streams.

Commits made by this process wake waiters at once; commits made by other
lineage replicas arrive through Postgres LISTEN/NOTIFY. Waiters also wake on
a timeout and re-read the log, so a lost notification only delays them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from govmesh.lineage.store import CHANNEL, LogStore

logger = logging.getLogger(__name__)


class CommitWatch:
    """The largest committed size seen, and a way to wait for a larger one."""

    def __init__(self, size: int = 0) -> None:
        self.size = size
        self._changed = asyncio.Condition()
        self._listener: Any = None
        self._task: asyncio.Task[None] | None = None

    def committed(self, size: int) -> None:
        """Record a commit (callable from sync code on the event loop)."""
        if size > self.size:
            self.size = size
            asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_beyond(self, size: int, timeout: float) -> bool:
        """Wait until the committed size exceeds `size`; False on timeout."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(lambda: self.size > size), timeout)
        return self.size > size

    async def listen(self, store: LogStore) -> None:
        """Follow commits of other writers until closed; retries on connection loss."""
        self._task = asyncio.create_task(self._listen(store), name="lineage-listen")

    async def _listen(self, store: LogStore) -> None:
        while True:
            try:
                conn = await store.listen()
                lost = asyncio.Event()
                try:
                    conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                    await conn.add_listener(CHANNEL, self._on_notify)
                    await lost.wait()
                finally:
                    with contextlib.suppress(Exception):
                        await conn.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.info("lineage listen connection lost", extra={"error": repr(exc)})
            await asyncio.sleep(1.0)

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError):
            self.committed(int(payload))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
