"""What every client that owns one gRPC channel shares: closing it, also by `async with`."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import grpc


class ChannelClient:
    """A client over one channel it owns: `close()` closes it, and so does leaving `async with`."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
