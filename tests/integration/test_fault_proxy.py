"""The fault suite's TCP proxy: what each mode does to a real connection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from govmesh.faults.proxy import FaultProxy


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1024):
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    fault = FaultProxy(f"127.0.0.1:{port}")
    await fault.start()
    yield fault
    await fault.close()
    server.close()


async def _round_trip(address: str, payload: bytes, timeout: float) -> bytes:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), timeout)
    finally:
        writer.close()


async def test_pass_forwards_both_ways(proxy: FaultProxy) -> None:
    assert await _round_trip(proxy.address, b"ping", 5.0) == b"ping"


async def test_delay_holds_every_answer_at_least_the_delay(proxy: FaultProxy) -> None:
    proxy.set_mode("delay", 0.3)
    started = time.monotonic()

    assert await _round_trip(proxy.address, b"late", 5.0) == b"late"
    assert time.monotonic() - started >= 0.3


async def test_blackhole_forwards_nothing(proxy: FaultProxy) -> None:
    proxy.set_mode("blackhole")

    with pytest.raises(TimeoutError):
        await _round_trip(proxy.address, b"lost", 0.5)

    proxy.set_mode("pass")  # new bytes flow again
    assert await _round_trip(proxy.address, b"back", 5.0) == b"back"
