"""The server side of a batch stream: many batch calls over one long-lived RPC.

A unary call costs grpc.aio about as much CPU on each side as a peer spends
on a small batch's work; a message on an open stream costs a fraction of
that. The engine therefore sends its batches to each peer over streams
(`VerifyStream`, `EvaluateStream`, `AppendStream`): each request carries a
sequence number chosen by the client and each response echoes it. Batches
are answered concurrently, as each completes, so a slow batch holds up no
other.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from govmesh.runtime.errors import InvalidInput

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class BatchSizeError(InvalidInput):
    """A batch with no items, or with more than its RPC takes."""

    def __init__(self, limit: int, items: str) -> None:
        super().__init__(f"a batch holds 1..{limit} {items}")


async def answer_batches(
    requests: AsyncIterator[Req], answer: Callable[[Req], Awaitable[Resp]]
) -> AsyncIterator[Resp]:
    """Yield `answer(request)` for each request as it completes.

    `answer` must not raise: a batch that cannot be answered is answered with
    its error, in the response's own terms. When the client half-closes, the
    batches still in progress are answered before the stream ends; when the
    call ends (cancelled, deadline, connection lost) they are cancelled.
    """
    answers: asyncio.Queue[Resp | None] = asyncio.Queue()
    pending: set[asyncio.Task[None]] = set()

    async def run(request: Req) -> None:
        await answers.put(await answer(request))

    async def read() -> None:
        try:
            async for request in requests:
                task = asyncio.create_task(run(request))
                pending.add(task)
                task.add_done_callback(pending.discard)
            while pending:
                await asyncio.gather(*list(pending))
        finally:
            await answers.put(None)

    reader = asyncio.create_task(read())
    try:
        while (response := await answers.get()) is not None:
            yield response
        await reader
    finally:
        reader.cancel()
        for task in list(pending):
            task.cancel()
