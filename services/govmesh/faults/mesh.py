"""The mesh under test: four real service processes, a private Postgres, proxies.

The harness starts each service itself on a fixed free port (not through
`govmesh up`), so that it can kill, pause and restart each one at the same
address, and the engine reconnects as it would to a pod restarted behind its
Service. The engine talks to every peer through a `FaultProxy`. Postgres is a
private server (the embedded pgserver in a temporary folder): restarting it
touches nothing else on the machine. The engine's spool lives on a small
tmpfs when the harness may mount one, so that "disk full" is a real ENOSPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from govmesh.cli.devsetup import DevSetup, write_dev_setup
from govmesh.faults.proxy import FaultProxy
from govmesh.runtime.db import upgrade_database

logger = logging.getLogger(__name__)

PEERS = ("lineage", "verification", "policy")
START_TIMEOUT_S = 60.0
#: The spool's tmpfs: room for many spooled groups, small enough to fill at once.
SPOOL_TMPFS_SIZE = "8m"


@dataclass(frozen=True)
class Deadlines:
    """The engine's deadlines under test, in milliseconds, and its spool timeout in seconds.

    Wider than the production defaults: on a small shared machine a 30 ms
    deadline is missed by scheduling alone, and the suite must tell a fault
    from a busy CPU. The bound a request is held to is the engine's own:
    the decision budget, plus the spool timeout for a deny lineage did not
    take (`core.DecisionConfig.spool_timeout`).
    """

    verification_ms: float = 1000.0
    policy_ms: float = 1000.0
    lineage_ms: float = 1500.0
    budget_ms: float = 3000.0
    spool_timeout_s: float = 2.0

    def env(self) -> dict[str, str]:
        return {
            "GOVMESH_VERIFICATION_TIMEOUT_MS": str(self.verification_ms),
            "GOVMESH_POLICY_TIMEOUT_MS": str(self.policy_ms),
            "GOVMESH_LINEAGE_TIMEOUT_MS": str(self.lineage_ms),
            "GOVMESH_DECISION_BUDGET_MS": str(self.budget_ms),
            "GOVMESH_DECISION_BUDGET_MAX_MS": str(self.budget_ms),
            "GOVMESH_SPOOL_TIMEOUT_S": str(self.spool_timeout_s),
        }

    @property
    def answer_bound_s(self) -> float:
        """The longest the engine may take to answer: budget, then the wait for the spool."""
        return self.budget_ms / 1000 + self.spool_timeout_s

    def peer_timeout_s(self, peer: str) -> float:
        return {
            "verification": self.verification_ms,
            "policy": self.policy_ms,
            "lineage": self.lineage_ms,
        }[peer] / 1000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    """One `python -m govmesh.<name>` process at a fixed address, restartable."""

    name: str
    address: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def spawn(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"govmesh.{self.name}"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1

    async def wait_serving(self, timeout: float = START_TIMEOUT_S) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.process is None or self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited while starting:\n{self.tail()}")
                with contextlib.suppress(grpc.aio.AioRpcError):
                    answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                if loop.time() > deadline:
                    raise RuntimeError(f"{self.name} never reported SERVING:\n{self.tail()}")
                await asyncio.sleep(0.1)

    async def start(self) -> None:
        """Start (again) at the same address and wait until it serves."""
        self.spawn()
        await self.wait_serving()

    def signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    async def kill(self) -> None:
        """SIGKILL, as in a crash."""
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        if self.process is not None:
            await asyncio.to_thread(self.process.wait)

    async def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, and wait for the graceful stop; returns the exit code."""
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        assert self.process is not None
        try:
            return await asyncio.to_thread(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            await self.kill()
            return -9

    def log_count(self, text: str) -> int:
        """How many times the process's log (all its runs) holds `text`."""
        if not self.log_path.exists():
            return 0
        return self.log_path.read_text(errors="replace").count(text)

    def tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class PrivatePostgres:
    """A Postgres of the harness's own (pgserver), to stop and start at will."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._server: Any = None

    def start(self) -> str:
        import pgserver

        self._server = pgserver.get_server(self.root, cleanup_mode="stop")
        return str(self._server.get_uri())

    @staticmethod
    def _retrying(call: Callable[[], object]) -> None:
        # pgserver runs pg_ctl as another user, so through fork() (not vfork):
        # in a process full of gRPC threads the child now and then dies of a
        # signal before it runs pg_ctl at all. That is this harness's
        # problem, not a fault under test: try again.
        for attempt in range(5):
            try:
                call()
                return
            except subprocess.CalledProcessError as exc:
                if exc.returncode >= 0 or attempt == 4:
                    raise
                logger.warning("pg_ctl died of signal %d; again", -exc.returncode)
                time.sleep(0.2)

    def _pg_ctl(self, args: list[str]) -> None:
        from pgserver._commands import pg_ctl

        self._retrying(
            lambda: pg_ctl(args, pgdata=self.root, user=self._server.system_user, timeout=30)
        )

    async def stop(self) -> None:
        """Stop the server (fast: connections are cut, as in a restart)."""
        try:
            await asyncio.to_thread(self._pg_ctl, ["-w", "-m", "fast", "stop"])
        except subprocess.CalledProcessError:
            # A pg_ctl that died after asking the server to stop: stopped is stopped.
            if (self.root / "postmaster.pid").exists():
                raise

    async def resume(self) -> None:
        """Start it again at the same socket."""
        await asyncio.to_thread(self._retrying, self._server.ensure_postgres_running)

    def close(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.cleanup()


class Spool:
    """The engine's spool folder, on a tmpfs of its own when one can be mounted."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mounted = False

    def prepare(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0 or not sys.platform.startswith("linux"):
            return
        mount = subprocess.run(
            [
                "mount",
                "-t",
                "tmpfs",
                "-o",
                f"size={SPOOL_TMPFS_SIZE},mode=0700",
                "tmpfs",
                self.path,
            ],
            capture_output=True,
            check=False,
        )
        self.mounted = mount.returncode == 0
        if not self.mounted:
            logger.warning("no tmpfs for the spool: %s", mount.stderr.decode(errors="replace"))

    def pending(self) -> list[Path]:
        return sorted(self.path.glob("*.spool"))

    @contextlib.asynccontextmanager
    async def full(self) -> AsyncIterator[None]:
        """The spool's disk is full while inside: every write fails with ENOSPC."""
        if not self.mounted:
            raise RuntimeError("a full spool disk needs a tmpfs: run the harness as root on Linux")
        filler = self.path / "filler"
        await asyncio.to_thread(_fill, filler)
        try:
            yield
        finally:
            filler.unlink(missing_ok=True)

    def release(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", self.path], check=False, capture_output=True)
            self.mounted = False


def _fill(path: Path) -> None:
    block = b"\0" * 4096
    try:
        with path.open("wb") as out:
            while True:
                out.write(block)
                out.flush()
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    # Whatever single blocks remain (a partial block above) are taken as well.
    with contextlib.suppress(OSError), path.open("ab") as out:
        while True:
            out.write(b"\0")
            out.flush()


@dataclass
class FaultMesh:
    """Everything the fault suite drives; build with `FaultMesh.create`, then `start`."""

    workdir: Path
    deadlines: Deadlines
    setup: DevSetup
    postgres: PrivatePostgres
    spool: Spool
    database_url: str = ""
    services: dict[str, Service] = field(default_factory=dict)
    proxies: dict[str, FaultProxy] = field(default_factory=dict)
    _own_pg_root: Path | None = None

    @classmethod
    def create(cls, workdir: Path, deadlines: Deadlines | None = None) -> FaultMesh:
        workdir.mkdir(parents=True, exist_ok=True)
        # Not under a test's temporary root: as root, pgserver runs Postgres as
        # another user, which needs a folder it can reach (tests/conftest.py).
        pg_root = Path(tempfile.mkdtemp(prefix="govmesh-faults-pg-"))
        mesh = cls(
            workdir=workdir,
            deadlines=deadlines or Deadlines(),
            setup=write_dev_setup(workdir / "trust"),
            postgres=PrivatePostgres(pg_root),
            spool=Spool(workdir / "spool"),
        )
        mesh._own_pg_root = pg_root
        return mesh

    @property
    def engine(self) -> Service:
        return self.services["engine"]

    @property
    def engine_target(self) -> str:
        return self.engine.address

    async def start(self) -> None:
        self.database_url = await asyncio.to_thread(self.postgres.start)
        await asyncio.to_thread(upgrade_database, self.database_url)
        self.spool.prepare()
        common = {
            **{k: v for k, v in os.environ.items() if not k.startswith("GOVMESH_")},
            "GOVMESH_DATABASE_URL": self.database_url,
            "GOVMESH_TRUST_FILE": str(self.setup.trust_file),
            "GOVMESH_KEYS_DIR": str(self.setup.keys_dir),
            "GOVMESH_POLICY_PATH": str(self.setup.policies),
            "GOVMESH_POLICY_STATE_FILE": str(self.workdir / "state" / "policy-epoch.json"),
            "GOVMESH_LINEAGE_STATE_FILE": str(self.workdir / "state" / "lineage-signed.floor"),
            "GOVMESH_LOG_FORMAT": "text",
            "GOVMESH_LOG_LEVEL": os.environ.get("GOVMESH_LOG_LEVEL", "WARNING"),
            "GOVMESH_GRACE_PERIOD_S": "2",
            "XDG_STATE_HOME": str(self.workdir / "state-home"),
        }
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        for name in PEERS:
            address = f"127.0.0.1:{free_port()}"
            self.services[name] = Service(
                name, address, {**common, "GOVMESH_LISTEN": address}, logs / f"{name}.log"
            )
            proxy = FaultProxy(address)
            await proxy.start()
            self.proxies[name] = proxy
        for name in PEERS:
            self.services[name].spawn()
        await asyncio.gather(*(self.services[name].wait_serving() for name in PEERS))
        address = f"127.0.0.1:{free_port()}"
        self.services["engine"] = Service(
            "engine",
            address,
            {
                **common,
                **self.deadlines.env(),
                "GOVMESH_LISTEN": address,
                "GOVMESH_SPOOL_DIR": str(self.spool.path),
                "GOVMESH_SPOOL_RETRY_S": "0.5",
                "GOVMESH_VERIFICATION_TARGET": self.proxies["verification"].address,
                "GOVMESH_POLICY_TARGET": self.proxies["policy"].address,
                "GOVMESH_LINEAGE_TARGET": self.proxies["lineage"].address,
            },
            logs / "engine.log",
        )
        await self.engine.start()

    async def close(self) -> None:
        for service in (self.services.get("engine"), *(self.services.get(p) for p in PEERS)):
            if (
                service is not None
                and service.process is not None
                and service.process.poll() is None
            ):
                await service.terminate(timeout=15)
        for proxy in self.proxies.values():
            await proxy.close()
        await asyncio.to_thread(self.postgres.close)
        self.spool.release()
        if self._own_pg_root is not None:
            shutil.rmtree(self._own_pg_root, ignore_errors=True)
