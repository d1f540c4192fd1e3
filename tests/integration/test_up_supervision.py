"""`govmesh up` supervises: services killed outright come back, and no ALLOW slips through.

Real processes throughout: `govmesh up`, its four services, Postgres. Each test
SIGKILLs a part of the mesh and asks the engine, as a caller would, while it is
down and until it is back.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from govmesh.cli.devsetup import DevSetup
from govmesh.client import EngineClient, Initiator
from govmesh.client.engine import AuthorizationResult
from tests.integration.test_up import _free_port, _govmesh, _start_up
from tests.support.database import DatabaseFactory

ACTION = "payments.transfer"
RESOURCE = "account:acme/treasury"
CONTEXT = {"amount": 250}

# Deadlines with room for a machine shared by many test runs, so that a slow
# answer under load is not mistaken for a peer that is down.
DEADLINES = {
    "GOVMESH_DECISION_BUDGET_MS": "1000",
    "GOVMESH_VERIFICATION_TIMEOUT_MS": "500",
    "GOVMESH_POLICY_TIMEOUT_MS": "500",
    "GOVMESH_LINEAGE_TIMEOUT_MS": "800",
    # The bound the denies below are held to, however long their callers can wait.
    "GOVMESH_DECISION_BUDGET_MAX_MS": "1000",
}
BUDGET_S = 1.0
#: On top of the budget: a deny that lineage could not take is made durable
#: in the spool before it is answered.
MARGIN_S = 1.0
RECOVERY_S = 30.0


@dataclass
class Asked:
    result: AuthorizationResult
    seconds: float


class Caller:
    """A caller of the engine with the development agent's key and a mandate."""

    def __init__(self, client: EngineClient, setup: DevSetup, mandate: str) -> None:
        self._client = client
        self._agent = Initiator(setup.dev_key("agent"))
        self._mandate = mandate

    async def ask(self) -> Asked:
        proof = self._agent.proof(self._mandate, ACTION, RESOURCE, CONTEXT)
        started = time.monotonic()
        result = await self._client.authorize(
            action=ACTION,
            resource=RESOURCE,
            context=CONTEXT,
            mandate=self._mandate,
            proof=proof,
            timeout=10,
        )
        return Asked(result, time.monotonic() - started)

    async def until_allowed(self, within: float) -> list[Asked]:
        """Ask until an ALLOW; every answer, the ALLOW last. Fails after `within` seconds."""
        answers: list[Asked] = []
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            answers.append(await self.ask())
            if answers[-1].result.allowed:
                return answers
            await asyncio.sleep(0.05)
        last = answers[-1].result if answers else None
        pytest.fail(f"no ALLOW within {within} s; last answer: {last}")


def _find(up: psutil.Process, name: str) -> psutil.Process | None:
    """The running process of one service under `govmesh up`, if there is one now."""
    for child in up.children(recursive=True):
        try:
            if f"govmesh.{name}" in child.cmdline() and child.is_running():
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def _service(up: psutil.Process, name: str) -> psutil.Process:
    deadline = time.monotonic() + RECOVERY_S
    while time.monotonic() < deadline:
        found = _find(up, name)
        if found is not None:
            return found
        time.sleep(0.05)
    pytest.fail(f"no {name} process under govmesh up")


def _kill(process: psutil.Process) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(10)


def _assert_denied_within_budget(answers: list[Asked], reasons: set[str]) -> None:
    for asked in answers:
        assert asked.result.answered, asked.result
        assert asked.result.decision == "DENY", asked.result
        assert asked.result.reason in reasons, asked.result
        assert asked.seconds < BUDGET_S + MARGIN_S, f"a deny took {asked.seconds:.2f} s"


async def _caller(env: dict[str, str], data: Path, port: int) -> tuple[Caller, EngineClient]:
    mandate = _govmesh("mandate", "issue", env=env).stdout.strip()
    client = await EngineClient.connect(f"127.0.0.1:{port}", timeout=10)
    return Caller(client, DevSetup(data / "dev"), mandate), client


@pytest.fixture
def mesh_env(up_env: dict[str, str]) -> dict[str, str]:
    return {**up_env, **DEADLINES}


async def test_each_service_killed_is_restarted_on_its_address_and_allow_comes_back_on_its_own(
    mesh_env: dict[str, str], tmp_path: Path, databases: DatabaseFactory
) -> None:
    mesh_env["GOVMESH_DATABASE_URL"] = databases.create()
    data = Path(mesh_env["GOVMESH_DATA_DIR"])
    port = _free_port()
    log = tmp_path / "up.log"
    up = _start_up(mesh_env, port, log)
    caller, client = await _caller(mesh_env, data, port)
    try:
        await caller.until_allowed(RECOVERY_S)
        for name, reasons in (
            ("verification", {"PEER_UNAVAILABLE"}),
            ("policy", {"PEER_UNAVAILABLE"}),
            ("lineage", {"LINEAGE_UNAVAILABLE"}),
        ):
            address = (data / "run" / f"{name}.addr").read_text()
            before = _service(psutil.Process(up.pid), name)
            _kill(before)

            answers = await caller.until_allowed(RECOVERY_S)

            # While it was down: DENY with the peer's reason, within the budget, never ALLOW.
            denied = answers[:-1]
            assert denied, f"no decision saw {name} down"
            _assert_denied_within_budget(denied, reasons)
            # Back on its own, as a new process on the same address.
            after = _service(psutil.Process(up.pid), name)
            assert after.pid != before.pid
            assert (data / "run" / f"{name}.addr").read_text() == address
            text = log.read_text()
            assert f"{name} exited with code -9" in text
            assert f"{name} restarted" in text

        # The engine itself: while it is down callers get no answer, which the
        # client reads as a DENY; it comes back on the port callers know.
        before = _service(psutil.Process(up.pid), "engine")
        _kill(before)
        answers = await caller.until_allowed(RECOVERY_S)
        for asked in answers[:-1]:
            assert asked.result.decision == "DENY", asked.result
            assert not asked.result.allowed
            assert asked.result.grant == ""
        after = _service(psutil.Process(up.pid), "engine")
        assert after.pid != before.pid
        assert answers[-1].result.allowed
        text = log.read_text()
        assert "engine exited with code -9" in text
        assert "engine restarted" in text
    finally:
        await client.close()
        up.send_signal(signal.SIGTERM)
        code = up.wait(60)
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text()


def test_a_service_that_keeps_crashing_stops_the_mesh_with_a_clear_message(
    up_env: dict[str, str], tmp_path: Path, databases: DatabaseFactory
) -> None:
    up_env["GOVMESH_DATABASE_URL"] = databases.create()
    log = tmp_path / "up.log"
    up = _start_up(up_env, _free_port(), log, "--max-restarts", "2", "--restart-window", "120")
    supervisor = psutil.Process(up.pid)
    seen = {p.pid: p for p in supervisor.children(recursive=True)}
    killed: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while up.poll() is None and time.monotonic() < deadline:
            try:
                seen.update({p.pid: p for p in supervisor.children(recursive=True)})
                victim = _find(supervisor, "verification")
            except psutil.NoSuchProcess:
                break
            if victim is not None and victim.pid not in killed:
                killed.append(victim.pid)
                _kill(victim)
            time.sleep(0.05)
        code = up.wait(60)
    finally:
        if up.poll() is None:
            up.kill()
    text = log.read_text()
    assert code == 1, text
    assert len(killed) == 3, killed
    assert "verification keeps crashing: it exited 3 times" in text
    assert "last exit codes: -9, -9, -9" in text
    assert "Traceback" not in text
    # The rest of the mesh went down with it, nothing left behind.
    _, alive = psutil.wait_procs(list(seen.values()), timeout=20)
    assert alive == []


async def test_embedded_postgres_killed_is_restarted_and_allow_comes_back(
    mesh_env: dict[str, str], tmp_path: Path
) -> None:
    data = Path(mesh_env["GOVMESH_DATA_DIR"])
    port = _free_port()
    log = tmp_path / "up.log"
    up = _start_up(mesh_env, port, log)
    caller, client = await _caller(mesh_env, data, port)
    postmaster = data / "pg" / "postmaster.pid"
    try:
        await caller.until_allowed(RECOVERY_S)
        before = psutil.Process(int(postmaster.read_text().split()[0]))
        _kill(before)

        answers = await caller.until_allowed(60)

        # The ALLOW that came back was recorded by a Postgres started again in place.
        now = psutil.Process(int(postmaster.read_text().split()[0]))
        assert now.pid != before.pid
        assert now.is_running()
        assert answers[-1].result.lineage is not None
        assert all(a.result.decision == "DENY" for a in answers[:-1])
        # The restart is logged once pg_ctl has returned, which may be just
        # after the first decision the new Postgres recorded.
        deadline = time.monotonic() + 20
        while "the embedded Postgres is back" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.1)
        assert "the embedded Postgres is gone" in log.read_text()
    finally:
        await client.close()
        up.send_signal(signal.SIGTERM)
        code = up.wait(60)
    assert code == 0, log.read_text()
    _, alive = psutil.wait_procs([now], timeout=20)
    assert alive == [], "the restarted Postgres outlived govmesh up"
