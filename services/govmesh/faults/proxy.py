"""A fault-injecting TCP proxy in front of one peer.

The engine is pointed at the proxy instead of the peer, and the harness
switches its mode while load runs:

- `pass`: bytes go through as they come;
- `delay`: every chunk the peer sends back is held `delay_s` before it is
  forwarded, in order (a pipeline, not a queue: a peer that answers in 1 ms
  answers in `delay_s` + 1 ms, however many calls are in flight). Requests
  still reach the peer at once, so the peer does the work (a lineage append
  commits) and only its answer is late, the hardest case for the engine;
- `blackhole`: connections are accepted and read, nothing is forwarded.

Nothing here runs in production: it is the network a peer's deadline is for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any, Literal

logger = logging.getLogger(__name__)

Mode = Literal["pass", "delay", "blackhole"]
_CHUNK = 64 * 1024


class FaultProxy:
    """Listens on 127.0.0.1 (a free port) and forwards to `upstream` ("host:port")."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self._upstream = (host, int(port))
        self.mode: Mode = "pass"
        self.delay_s = 0.0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.address = ""

    async def start(self, port: int = 0) -> str:
        """Start listening; returns the proxy's address."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        sock = self._server.sockets[0]
        self.address = f"127.0.0.1:{sock.getsockname()[1]}"
        return self.address

    def set_mode(self, mode: Mode, delay_s: float = 0.0) -> None:
        """Switch the mode; it applies to bytes read from now on, on every connection."""
        self.mode, self.delay_s = mode, delay_s

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            peer_r, peer_w = await asyncio.open_connection(*self._upstream)
        except OSError:
            # The peer is down: so is the proxy's side of the connection.
            client_w.close()
            return
        self._spawn(self._pipe(client_r, peer_w, delayed=False, closes=client_w))
        self._spawn(self._pipe(peer_r, client_w, delayed=True, closes=peer_w))

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        *,
        delayed: bool,
        closes: asyncio.StreamWriter,
    ) -> None:
        loop = asyncio.get_running_loop()
        held: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def forward() -> None:
            # Chunks leave in order, each at its own arrival time + delay.
            while (item := await held.get()) is not None:
                due, data = item
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                sink.write(data)
                await sink.drain()

        forwarder = asyncio.ensure_future(forward())
        try:
            while data := await source.read(_CHUNK):
                if self.mode == "blackhole":
                    continue
                delay = self.delay_s if (delayed and self.mode == "delay") else 0.0
                held.put_nowait((loop.time() + delay, data))
            held.put_nowait(None)
            await forwarder
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            forwarder.cancel()
            for writer in (sink, closes):
                writer.close()
