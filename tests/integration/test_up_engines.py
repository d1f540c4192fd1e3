"""`govmesh up --engines 2`: two engine processes on one port, each supervised and counted apart.

Real processes throughout, as in test_up_supervision.py. A gRPC channel is one
connection, which the kernel hands to one of the engines sharing the port:
so each caller here opens a connection of its own (grpc shares one between
channels to the same target unless told not to), enough of them that both
engines are all but sure to get some.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from govmesh.cli.devsetup import DevSetup
from govmesh.client import EngineClient
from tests.integration.test_up import _free_port, _govmesh, _start_up
from tests.integration.test_up_supervision import DEADLINES, RECOVERY_S, Caller, _kill
from tests.support.commands import GOVMESH
from tests.support.database import DatabaseFactory, fetch, run_sync
from tests.support.processes import ServiceProcess

#: Connections per round; all on one engine by chance has odds of 2 in 2**CONNECTIONS.
CONNECTIONS = 16
PER_CONNECTION = 5


@pytest.fixture
def mesh_env(up_env: dict[str, str], databases: DatabaseFactory) -> dict[str, str]:
    return {**up_env, **DEADLINES, "GOVMESH_DATABASE_URL": databases.create()}


def _engines(up: subprocess.Popen[bytes]) -> dict[str, psutil.Process]:
    """The running engine processes under `govmesh up`, by the name each was started with."""
    found = {}
    for child in psutil.Process(up.pid).children(recursive=True):
        try:
            if "govmesh.engine" in child.cmdline():
                found[child.environ()["GOVMESH_ENGINE_ID"]] = child
        except psutil.NoSuchProcess:
            continue
    return found


def _wait_for_restart(
    up: subprocess.Popen[bytes], name: str, old_pid: int
) -> dict[str, psutil.Process]:
    """The engines once `name` runs again in a process other than `old_pid`."""
    deadline = time.monotonic() + RECOVERY_S
    while time.monotonic() < deadline:
        found = _engines(up)
        if name in found and found[name].pid != old_pid and len(found) == 2:
            return found
        time.sleep(0.1)
    return _engines(up)


def _name(engine_id: str) -> str:
    """The engine's name: its id without the random part each start adds."""
    name, part = engine_id.rsplit("/", 1)
    assert re.fullmatch(r"[0-9a-f]{12}", part), engine_id
    return name


async def _round(env: dict[str, str], port: int) -> list[bool]:
    """CONNECTIONS callers on fresh connections, PER_CONNECTION decisions each: allowed or not."""
    setup = DevSetup(Path(env["GOVMESH_DATA_DIR"]) / "dev")
    mandate = _govmesh("mandate", "issue", env=env).stdout.strip()

    async def one_connection() -> list[bool]:
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        client = EngineClient(channel, timeout=10)
        try:
            caller = Caller(client, setup, mandate)
            return [(await caller.ask()).result.allowed for _ in range(PER_CONNECTION)]
        finally:
            await client.close()

    answers = await asyncio.gather(*(one_connection() for _ in range(CONNECTIONS)))
    return [allowed for batch in answers for allowed in batch]


def _counters(database_url: str) -> dict[str, list[int]]:
    """Each engine id in lineage and the counters it logged, in log order."""
    rows = run_sync(fetch(database_url, "SELECT entry FROM lineage_entries ORDER BY idx"))
    counters: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        engine = json.loads(bytes(row["entry"]))["engine"]
        counters[engine["id"]].append(engine["seq"])
    return dict(counters)


def _assert_gapless(counters: dict[str, list[int]]) -> None:
    for engine_id, seqs in counters.items():
        assert sorted(seqs) == list(range(len(seqs))), f"{engine_id}: {sorted(seqs)}"


async def test_two_engines_share_the_port_and_each_logs_its_own_gapless_counter(
    mesh_env: dict[str, str], tmp_path: Path
) -> None:
    data = Path(mesh_env["GOVMESH_DATA_DIR"])
    port = _free_port()
    log = tmp_path / "up.log"
    up = _start_up(mesh_env, port, log, "--engines", "2")
    try:
        engines = _engines(up)
        allowed = await _round(mesh_env, port)
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(60)
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text

    assert all(allowed), f"{allowed.count(False)} of {len(allowed)} not allowed"
    # Two processes, each named for its slot, each logging under its name and a fresh part.
    assert len(engines) == 2, engines
    assert {name.rsplit("-", 1)[1] for name in engines} == {"1", "2"}
    counters = _counters(mesh_env["GOVMESH_DATABASE_URL"])
    assert len(counters) == 2, counters.keys()
    assert {_name(engine_id) for engine_id in counters} == set(engines), counters.keys()
    _assert_gapless(counters)
    assert sum(len(seqs) for seqs in counters.values()) == len(allowed)
    # Each its own spool, metrics port and supervised name.
    assert (data / "spool").is_dir() and (data / "spool-2").is_dir()
    urls = dict(re.findall(r"metrics: (engine-\d) +(http://\S+/metrics)", text))
    assert sorted(urls) == ["engine-1", "engine-2"], text
    assert len(set(urls.values())) == 2
    assert "govmesh is up: engine at 127.0.0.1:" in text and "(2 engine processes)" in text


async def test_one_engine_killed_the_other_answers_and_it_comes_back_as_a_new_counter(
    mesh_env: dict[str, str], tmp_path: Path
) -> None:
    port = _free_port()
    log = tmp_path / "up.log"
    up = _start_up(mesh_env, port, log, "--engines", "2")
    try:
        before = _engines(up)
        victim = next(name for name in before if name.endswith("-2"))
        survivor = next(name for name in before if name != victim)
        # Both log decisions first (16 connections: the kernel gives each engine some).
        first = await _round(mesh_env, port)
        _kill(before[victim])

        # New connections reach the one left, which decides as before.
        while_down = await _round(mesh_env, port)

        after = await asyncio.to_thread(_wait_for_restart, up, victim, before[victim].pid)
        back = await _round(mesh_env, port)
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(60)
    text = log.read_text()
    assert code == 0, text

    for answers in (first, while_down, back):
        assert all(answers), f"{answers.count(False)} of {len(answers)} not allowed"
    assert "engine-2 exited with code -9" in text
    assert "engine-2 restarted" in text
    # The survivor kept its process and its id; engine-2 came back under a new one,
    # its counter from 0 again, so nothing reads as a counter logged twice.
    assert after[survivor].pid == before[survivor].pid
    assert after[victim].pid != before[victim].pid
    counters = _counters(mesh_env["GOVMESH_DATABASE_URL"])
    by_name: dict[str, list[str]] = defaultdict(list)
    for engine_id in counters:
        by_name[_name(engine_id)].append(engine_id)
    assert len(by_name[survivor]) == 1, counters.keys()
    assert len(by_name[victim]) == 2, counters.keys()
    assert set(by_name) == {survivor, victim}
    _assert_gapless(counters)


@contextlib.contextmanager
def _held_port() -> Iterator[int]:
    """A port held by something else, with SO_REUSEPORT as a second mesh's engines would."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_engines_refuse_a_taken_engine_port_before_starting_anything(
    up_env: dict[str, str], tmp_path: Path
) -> None:
    with _held_port() as port:
        result = subprocess.run(
            [GOVMESH, "up", "--engine-port", str(port), "--engines", "2", "--no-metrics"],
            env=up_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"the engine port 127.0.0.1:{port} is taken" in result.stderr
    assert not (tmp_path / "data" / "pg").exists()


def test_an_engine_sharing_its_port_listens_only_once_it_knows_the_newest_epoch(
    services: Callable[..., ServiceProcess],
    dev_setup: DevSetup,
    database_url: str,
    tmp_path: Path,
) -> None:
    policy_address = f"127.0.0.1:{_free_port()}"  # nothing listens there yet
    port_file = tmp_path / "engine.addr"
    engine, log = _engine_waiting_for_the_epoch(dev_setup, tmp_path, policy_address)
    try:
        # Past its first try for the epoch (after the peers' connect timeout),
        # where an engine alone on its port would start listening.
        time.sleep(2)
        # Without the epoch it would deny whatever the kernel hands it: not on the port yet.
        assert engine.poll() is None, log.read_text()
        assert not port_file.exists(), log.read_text()

        services(
            "policy",
            {
                "GOVMESH_LISTEN": policy_address,
                "GOVMESH_DATABASE_URL": database_url,
                "GOVMESH_TRUST_FILE": str(dev_setup.trust_file),
                "GOVMESH_KEYS_DIR": str(dev_setup.keys_dir),
                "GOVMESH_POLICY_PATH": str(dev_setup.policies),
                "GOVMESH_POLICY_STATE_FILE": str(tmp_path / "policy-epoch.json"),
            },
        )
        deadline = time.monotonic() + 20
        while not port_file.is_file():
            assert time.monotonic() < deadline, log.read_text()
            assert engine.poll() is None, log.read_text()
            time.sleep(0.05)
        # Listening means ready: health is SERVING from the first call.
        with grpc.insecure_channel(port_file.read_text()) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        engine.send_signal(signal.SIGTERM)
        engine.wait(30)


def test_an_engine_waiting_for_the_newest_epoch_stops_at_once_on_sigterm(
    dev_setup: DevSetup, tmp_path: Path
) -> None:
    # No policy service: no epoch, ever.
    engine, log = _engine_waiting_for_the_epoch(dev_setup, tmp_path, f"127.0.0.1:{_free_port()}")
    try:
        engine.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = engine.wait(25)  # the wait for the epoch alone lasts 30 s
        elapsed = time.monotonic() - started
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()

    assert code == 0, log.read_text()
    assert elapsed < 10, f"stopped after {elapsed:.1f} s"
    assert "stopped before serving" in log.read_text()
    assert "Traceback" not in log.read_text()


def _engine_waiting_for_the_epoch(
    dev_setup: DevSetup, tmp_path: Path, policy_address: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """An engine process on a shared port, once it says it waits for the newest policy epoch."""
    log = tmp_path / "engine.log"
    env = {
        **os.environ,
        "GOVMESH_LISTEN": "127.0.0.1:0",
        "GOVMESH_PORT_FILE": str(tmp_path / "engine.addr"),
        "GOVMESH_REUSE_PORT": "1",
        "GOVMESH_KEYS_DIR": str(dev_setup.keys_dir),
        "GOVMESH_TRUST_FILE": str(dev_setup.trust_file),
        "GOVMESH_SPOOL_DIR": str(tmp_path / "spool"),
        "GOVMESH_VERIFICATION_TARGET": "127.0.0.1:1",
        "GOVMESH_POLICY_TARGET": policy_address,
        "GOVMESH_LINEAGE_TARGET": "127.0.0.1:1",
        "GOVMESH_POLICY_FLOOR_INTERVAL_S": "0.2",
        "GOVMESH_LOG_FORMAT": "text",
    }
    with log.open("wb") as out:
        engine = subprocess.Popen(
            [sys.executable, "-m", "govmesh.engine"], env=env, stdout=out, stderr=out
        )
    deadline = time.monotonic() + 30
    while "not serving until the newest policy epoch is known" not in log.read_text():
        if time.monotonic() >= deadline or engine.poll() is not None:
            engine.kill()
            engine.wait()
            pytest.fail(log.read_text())
        time.sleep(0.05)
    return engine, log
