"""Several engines on one port: their metrics ports, and SO_REUSEPORT only on request."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest

from govmesh.cli.up import engine_names, metrics_ports
from govmesh.engine.config import EngineSettings
from govmesh.runtime.server import Health, serve


def test_one_engine_keeps_its_name_and_the_four_metrics_ports() -> None:
    assert engine_names(1) == ["engine"]
    assert metrics_ports(None, 1) == {}
    assert metrics_ports(0, 1) == dict.fromkeys(["engine", "verification", "policy", "lineage"], 0)


def test_further_engines_take_the_metrics_ports_after_the_peers() -> None:
    # Ports well above the usual ones; taken ones would fail the probe.
    ports = metrics_ports(39464, 3)
    assert ports == {
        "engine-1": 39464,
        "verification": 39465,
        "policy": 39466,
        "lineage": 39467,
        "engine-2": 39468,
        "engine-3": 39469,
    }
    assert engine_names(2) == ["engine-1", "engine-2"]


def test_reuse_port_is_off_unless_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GOVMESH_KEYS_DIR", str(tmp_path))
    assert EngineSettings().reuse_port is False  # type: ignore[call-arg]
    monkeypatch.setenv("GOVMESH_REUSE_PORT", "1")
    assert EngineSettings().reuse_port is True  # type: ignore[call-arg]


class _Nothing:
    """A service with no servicers: the server alone, health and reflection."""

    service_names: Sequence[str] = ()

    async def start(self, health: Health) -> None:
        pass

    def register(self, server: grpc.aio.Server) -> None:
        pass

    def ready(self) -> bool:
        return True

    async def close(self) -> None:
        pass


async def _listening(port_file: Path, task: asyncio.Task[None]) -> str:
    for _ in range(200):
        if await asyncio.to_thread(port_file.is_file):
            return await asyncio.to_thread(port_file.read_text)
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    pytest.fail("the server did not start")


@pytest.mark.parametrize("reuse_port", [False, True])
async def test_a_second_server_on_a_taken_port_fails_unless_both_share_it(
    tmp_path: Path, reuse_port: bool
) -> None:
    stop = asyncio.Event()
    second: asyncio.Task[None] | None = None
    first = asyncio.create_task(
        serve(
            _Nothing(),
            listen="127.0.0.1:0",
            grace_period_s=0.1,
            port_file=str(tmp_path / "first.addr"),
            stop=stop,
            reuse_port=reuse_port,
        )
    )
    try:
        address = await _listening(tmp_path / "first.addr", first)
        second = asyncio.create_task(
            serve(
                _Nothing(),
                listen=address,
                grace_period_s=0.1,
                port_file=str(tmp_path / "second.addr"),
                stop=stop,
                reuse_port=reuse_port,
            )
        )
        if reuse_port:
            assert await _listening(tmp_path / "second.addr", second) == address
        else:
            with pytest.raises((OSError, RuntimeError)):
                await second
            assert not (tmp_path / "second.addr").exists()
    finally:
        stop.set()
        await asyncio.gather(first, *([second] if reuse_port and second else []))


def test_each_start_of_an_engine_logs_under_an_id_of_its_own() -> None:
    from govmesh.engine.server import instance_id

    # A configured name is kept, and each start adds a random part: a restart
    # counts from 0 again, which under the same id would read as a counter logged twice.
    first, second = instance_id("engine-a"), instance_id("engine-a")
    assert first != second
    assert first.startswith("engine-a/") and second.startswith("engine-a/")
    assert instance_id(None).startswith(socket.gethostname() + "/")


class _Waiting(_Nothing):
    """A service whose start waits for something that never comes (the policy epoch, say)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = False
        self.closed = False

    async def start(self, health: Health) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    async def close(self) -> None:
        self.closed = True


async def test_a_stop_while_the_service_is_still_starting_ends_serve_at_once(
    tmp_path: Path,
) -> None:
    service, stop = _Waiting(), asyncio.Event()
    serving = asyncio.create_task(
        serve(
            service,
            listen="127.0.0.1:0",
            grace_period_s=0.1,
            port_file=str(tmp_path / "addr"),
            stop=stop,
        )
    )
    await asyncio.wait_for(service.started.wait(), 10)
    stop.set()  # what SIGTERM does
    await asyncio.wait_for(serving, 5)

    assert service.cancelled and service.closed
    assert not (tmp_path / "addr").exists()  # it never listened
