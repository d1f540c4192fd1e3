"""`govmesh up`: the whole mesh on one machine.

Starts an embedded Postgres when GOVMESH_DATABASE_URL is unset, runs the
migrations, starts lineage, verification and policy, then the engine pointed
at them, waits until every service reports SERVING, and prints the engine's
address and each service's Prometheus metrics URL (ports 9464-9467 unless
--metrics-port or --no-metrics say otherwise). Ctrl-C or SIGTERM stops the
engine first, then its peers, then Postgres. The children die with this
process even if it is killed outright (PR_SET_PDEATHSIG), so nothing is left
behind.

Once up, it supervises: a service that exits is started again on the same
address, after a delay that doubles from RESTART_DELAY_S up to
RESTART_DELAY_MAX_S and starts over once the service has stayed up for
STABLE_AFTER_S; the embedded Postgres is watched and started again on the
same data directory and socket the same way. The engine keeps deciding
(DENY) while a peer is down and reconnects on its own. A service that exits
more than `--max-restarts` times within `--restart-window` seconds is a crash
loop: the mesh stops and `govmesh up` exits 1, naming the service and its
last exit codes.

With `--engines N` (N > 1) N engine processes, engine-1 to engine-N, listen
on the one engine address together (SO_REUSEPORT, which `up` turns on for
them alone through GOVMESH_REUSE_PORT), and the kernel spreads connections
over them. Each is supervised on its own, has its own spool directory
(`spool` for engine-1, `spool-K` for the others) and metrics port (after the
peers': --metrics-port + 4 onwards), and is named
`<GOVMESH_ENGINE_ID or host name>-K`; like every engine, it adds a random
part at each start (`…-K/<random>`), so that each process's lineage
counter runs gapless from 0 under an id of its own. Admission limits
(GOVMESH_ADMISSION_*) and the policy epoch floor are per engine process: N
engines admit N times the configured concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from govmesh.cli.devsetup import write_dev_setup
from govmesh.cli.paths import data_dir, dev_setup
from govmesh.runtime.db import upgrade_database
from govmesh.runtime.errors import ConfigurationError, Unavailable
from govmesh.runtime.logs import configure_logging

logger = logging.getLogger("govmesh.up")

PEERS = ("lineage", "verification", "policy")
#: Metrics ports from --metrics-port: the engine's, then each peer's, in gRPC port order.
METRICS_ORDER = ("engine", "verification", "policy", "lineage")
DEFAULT_METRICS_PORT = 9464
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
RESTART_DELAY_S = 0.5
RESTART_DELAY_MAX_S = 10.0
STABLE_AFTER_S = 30.0
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
#: How often the embedded Postgres is checked for being alive.
POSTGRES_CHECK_S = 0.5
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGTERM the
    # child when the supervisor dies, however it dies.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def engine_names(engines: int) -> list[str]:
    """The supervised names of the engine processes: "engine" alone, else engine-1..N."""
    if engines == 1:
        return ["engine"]
    return [f"engine-{k}" for k in range(1, engines + 1)]


def metrics_order(engines: int) -> list[str]:
    """Whose metrics port is which: the first engine's, the peers', then the other engines'."""
    first, *others = engine_names(engines)
    return [first, *METRICS_ORDER[1:], *others]


def metrics_ports(first: int | None, engines: int = 1) -> dict[str, int]:
    """Each process's metrics port: `first` and the next ones, or any free ones (0).

    With one engine, `first` and the next three (engine, verification, policy,
    lineage); each further engine takes the next port after those. None turns
    metrics off. Raises ConfigurationError for a fixed port that is out of
    range or already taken, before anything starts.
    """
    if first is None:
        return {}
    names = metrics_order(engines)
    if first == 0:
        return dict.fromkeys(names, 0)
    ports = {name: first + n for n, name in enumerate(names)}
    if not 0 < first <= 65535 - len(ports):
        raise ConfigurationError(f"--metrics-port {first} leaves no room for {len(ports)} ports")
    for name, port in ports.items():
        if (why := _bind_error(port)) is not None:
            raise ConfigurationError(
                f"the {name} metrics port 127.0.0.1:{port} is taken ({why}): "
                "pass --metrics-port with another first port, 0 for any free ones, "
                "or --no-metrics"
            )
    return ports


class CrashLoop(Unavailable):
    """A supervised service exits too often to be worth starting again."""


@dataclass(frozen=True)
class RestartPolicy:
    """When to start an exited service again, and when to give up."""

    delay: float = RESTART_DELAY_S
    max_delay: float = RESTART_DELAY_MAX_S
    stable_after: float = STABLE_AFTER_S
    max_restarts: int = MAX_RESTARTS
    window: float = RESTART_WINDOW_S


class Backoff:
    """The restart history of one service: the next delay, or a crash loop."""

    def __init__(self, name: str, policy: RestartPolicy, *, monotonic: Callable[[], float]) -> None:
        self.name = name
        self._policy = policy
        self._monotonic = monotonic
        self._started = monotonic()
        self._delay = policy.delay
        self._exits: deque[float] = deque()
        self.exit_codes: deque[int | None] = deque(maxlen=5)

    def started(self) -> None:
        """The service is running again."""
        self._started = self._monotonic()

    def exited(self, code: int | None) -> float:
        """How long to wait before starting it again; CrashLoop past the limit."""
        now = self._monotonic()
        self.exit_codes.append(code)
        if now - self._started >= self._policy.stable_after:
            # It had settled: this exit is news, not part of a loop.
            self._delay = self._policy.delay
        self._exits.append(now)
        while self._exits and now - self._exits[0] > self._policy.window:
            self._exits.popleft()
        if len(self._exits) > self._policy.max_restarts:
            codes = ", ".join("unknown" if c is None else str(c) for c in self.exit_codes)
            raise CrashLoop(
                f"{self.name} keeps crashing: it exited {len(self._exits)} times within "
                f"{self._policy.window:.0f} s (last exit codes: {codes}); stopping the mesh"
            )
        delay = self._delay
        self._delay = min(self._delay * 2, self._policy.max_delay)
        return delay


def _no_env() -> dict[str, str]:
    return {}


@dataclass
class Child:
    """One supervised service process; `process` is the current one.

    `module` is what runs (`python -m govmesh.<module>`), `name` what the
    supervisor calls it; they differ only for engines when there are several.
    `each_start` gives settings that are new at every start of the process.
    """

    name: str
    env: dict[str, str]
    process: asyncio.subprocess.Process
    port_file: Path
    backoff: Backoff
    module: str
    restarts: int = field(default=0)
    each_start: Callable[[], dict[str, str]] = field(default=_no_env)

    def start_env(self) -> dict[str, str]:
        """The settings of the next start."""
        return {**self.env, **self.each_start()}

    @property
    def metrics_file(self) -> Path:
        """Where the service writes its bound metrics address, when metrics are on."""
        return self.port_file.with_suffix(".metrics")

    async def address(self, deadline: float) -> str:
        """Wait for the service to write its address, or fail if it exits first."""
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            if self.process.returncode is not None:
                raise ConfigurationError(
                    f"{self.name} exited with code {self.process.returncode} while starting"
                )
            if self.port_file.is_file():
                return self.port_file.read_text().strip()
            await asyncio.sleep(0.05)
        raise ConfigurationError(f"{self.name} did not start within {START_TIMEOUT_S:.0f} s")


async def _wait_serving(child: Child, address: str, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while loop.time() < deadline:
            if child.process.returncode is not None:
                raise ConfigurationError(
                    f"{child.name} exited with code {child.process.returncode} while starting"
                )
            try:
                answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise ConfigurationError(f"{child.name} did not report SERVING within {START_TIMEOUT_S:.0f} s")


class Mesh:
    """The supervisor's state: children, embedded Postgres, run directory."""

    def __init__(self, data: Path, policy: RestartPolicy) -> None:
        self.data = data
        self.run_dir = data / "run"
        self.policy = policy
        self.children: list[Child] = []
        self.stopping = False
        self._postgres: Any = None

    @property
    def embedded_postgres(self) -> bool:
        """Whether this mesh runs its own Postgres (and so supervises it)."""
        return self._postgres is not None

    def database_url(self) -> str:
        """GOVMESH_DATABASE_URL, or an embedded Postgres in the data directory."""
        url = os.environ.get("GOVMESH_DATABASE_URL")
        if url:
            return url
        try:
            import pgserver
        except ImportError:
            raise ConfigurationError(
                "GOVMESH_DATABASE_URL is not set and the embedded Postgres is not installed:"
                " pip install 'govmesh[embedded]', or point GOVMESH_DATABASE_URL at a Postgres"
            ) from None
        logger.info("starting embedded Postgres in %s", self.data / "pg")
        self._postgres = pgserver.get_server(self.data / "pg", cleanup_mode="stop")
        return str(self._postgres.get_uri())

    async def spawn(
        self,
        name: str,
        env: dict[str, str],
        metrics_port: int | None = None,
        *,
        module: str | None = None,
        each_start: Callable[[], dict[str, str]] = _no_env,
    ) -> Child:
        """Start `python -m govmesh.<module or name>` with GOVMESH_* settings in `env`."""
        module = module or name
        port_file = self.run_dir / f"{name}.addr"
        if metrics_port is not None:
            # In the child's env, so that a restart serves on the same port.
            env = {
                **env,
                "GOVMESH_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
                "GOVMESH_METRICS_PORT_FILE": str(port_file.with_suffix(".metrics")),
            }
        child = Child(
            name,
            env,
            await self._exec(module, {**env, **each_start()}, port_file),
            port_file,
            Backoff(name, self.policy, monotonic=time.monotonic),
            module,
            each_start=each_start,
        )
        self.children.append(child)
        return child

    @staticmethod
    async def _exec(
        module: str, env: dict[str, str], port_file: Path
    ) -> asyncio.subprocess.Process:
        port_file.unlink(missing_ok=True)
        port_file.with_suffix(".metrics").unlink(missing_ok=True)
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            f"govmesh.{module}",
            env={**os.environ, **env, "GOVMESH_PORT_FILE": str(port_file)},
            preexec_fn=_die_with_parent,
            # Own process group: a terminal's Ctrl-C reaches only the
            # supervisor, which then stops the children in order.
            start_new_session=True,
        )

    async def supervise(self, child: Child) -> None:
        """Start `child` again each time it exits; CrashLoop when it exits too often.

        It comes back on the address it had (GOVMESH_LISTEN was pinned to it
        once it first started), so the engine's channel to it reconnects on its
        own and callers keep the engine's address.
        """
        while True:
            code = await child.process.wait()
            if self.stopping:
                return
            logger.error("%s exited with code %s", child.name, code)
            delay = child.backoff.exited(code)
            logger.warning("restarting %s in %.1f s", child.name, delay)
            await asyncio.sleep(delay)
            if self.stopping:
                return
            child.process = await self._exec(child.module, child.start_env(), child.port_file)
            child.restarts += 1
            child.backoff.started()
            try:
                address = await child.address(asyncio.get_running_loop().time() + START_TIMEOUT_S)
            except ConfigurationError as exc:
                # Counted as the next exit on the next turn of the loop.
                logger.error("%s", exc)
                if child.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        child.process.kill()
                continue
            logger.info("%s restarted (pid %d) at %s", child.name, child.process.pid, address)

    async def supervise_postgres(self) -> None:
        """Start the embedded Postgres again, on its data directory and socket, when it dies."""
        backoff = Backoff("postgres", self.policy, monotonic=time.monotonic)
        while True:
            await asyncio.sleep(POSTGRES_CHECK_S)
            if self.stopping:
                return
            if await asyncio.to_thread(self._postgres_running):
                continue
            logger.error("the embedded Postgres is gone")
            while True:
                delay = backoff.exited(None)
                logger.warning("restarting the embedded Postgres in %.1f s", delay)
                await asyncio.sleep(delay)
                if self.stopping:
                    return
                try:
                    await asyncio.to_thread(self._restart_postgres)
                except Exception as exc:  # pgserver raises what pg_ctl and asserts give it
                    logger.error("the embedded Postgres did not start again: %r", exc)
                    continue
                backoff.started()
                logger.info("the embedded Postgres is back (pid %s)", self._postgres.get_pid())
                break

    def _restart_postgres(self) -> None:
        # The same two steps as its first start: the data directory's
        # permissions for the user Postgres runs as (something may have
        # tightened them since), then pg_ctl start on the same directory and
        # socket, over the stale postmaster.pid the killed one left.
        self._postgres.ensure_pgdata_inited()
        self._postgres.ensure_postgres_running()

    def _postgres_running(self) -> bool:
        try:
            return bool(self._postgres.get_postmaster_info().is_running())
        except Exception:  # a postmaster.pid half written or gone reads as not running
            return False

    async def stop(self) -> None:
        """Stop the engines, then their peers, then Postgres; kill what does not stop."""
        self.stopping = True
        engine = [c for c in self.children if c.module == "engine"]
        peers = [c for c in self.children if c.module != "engine"]
        for group in (engine, peers):
            await asyncio.gather(*(self._stop_child(c) for c in group))
        if self._postgres is not None:
            logger.info("stopping embedded Postgres")
            await asyncio.to_thread(self._postgres.cleanup)

    @staticmethod
    async def _stop_child(child: Child) -> None:
        if child.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(child.process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            logger.warning("%s did not stop in time; killing it", child.name)
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            await child.process.wait()


def _check_engine_port_free(port: int) -> None:
    # Engines sharing a port would as well share it with anything else there
    # that asked for SO_REUSEPORT, e.g. the engines of another `govmesh up`:
    # a plain bind fails on any taken port, so it finds those first.
    if port != 0 and (why := _bind_error(port)) is not None:
        raise ConfigurationError(
            f"the engine port 127.0.0.1:{port} is taken ({why}): "
            "pass --engine-port with another port"
        )


def _bind_error(port: int) -> str | None:
    """Why 127.0.0.1:`port` cannot be bound now; None when it is free."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _engine_ids(engines: int) -> list[Callable[[], dict[str, str]]]:
    """For several engines, each one's settings that are new at each of its starts.

    Each engine adds a random part to its name at every start
    (govmesh.engine.server.instance_id): a restarted engine counts its
    lineage entries from 0 again under an id of its own.
    """
    if engines == 1:
        # One engine keeps its own name: GOVMESH_ENGINE_ID, or the host name.
        return [_no_env]
    base = os.environ.get("GOVMESH_ENGINE_ID") or socket.gethostname()

    def ids(k: int) -> Callable[[], dict[str, str]]:
        return lambda: {"GOVMESH_ENGINE_ID": f"{base}-{k}"}

    return [ids(k) for k in range(1, engines + 1)]


async def _start_engines(
    mesh: Mesh, engines: int, env: dict[str, str], ports: dict[str, int], deadline: float
) -> str:
    """Start the engine processes on one address; return that address once they serve.

    The first one alone on the address, then the others beside it: each
    writes its address only once it can decide (with GOVMESH_REUSE_PORT it
    joins the port only when it knows the newest policy epoch), which is as
    much as a health check through a shared port can tell of one process.
    """
    names = engine_names(engines)
    ids = _engine_ids(engines)
    spools = [mesh.data / "spool"] + [mesh.data / f"spool-{k}" for k in range(2, engines + 1)]
    for left in sorted(mesh.data.glob("spool-*")):
        if left not in spools and any(left.glob("*.spool")):
            # Only the engine whose spool it is drains it.
            logger.warning(
                "%s holds denies of an engine that is not started now (run with more "
                "--engines to drain them into lineage)",
                left,
            )
    if engines > 1:
        env = {**env, "GOVMESH_REUSE_PORT": "1"}

    async def spawn(n: int, env: dict[str, str]) -> Child:
        return await mesh.spawn(
            names[n],
            {**env, "GOVMESH_SPOOL_DIR": str(spools[n])},
            ports.get(names[n]),
            module="engine",
            each_start=ids[n],
        )

    first = await spawn(0, env)
    address = await first.address(deadline)
    await _wait_serving(first, address, deadline)
    # Every engine, the first when it restarts too, on the address the first
    # one got (--engine-port 0 picks a free one).
    env = {**env, "GOVMESH_LISTEN": address}
    first.env["GOVMESH_LISTEN"] = address
    others = [await spawn(n, env) for n in range(1, engines)]
    await asyncio.gather(*(child.address(deadline) for child in others))
    return address


async def _up(args: argparse.Namespace) -> int:
    data = data_dir(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    trust = args.trust or os.environ.get("GOVMESH_TRUST_FILE")
    keys = args.keys or os.environ.get("GOVMESH_KEYS_DIR")
    policies = args.policies or os.environ.get("GOVMESH_POLICY_PATH")
    if not trust:
        setup = dev_setup(data)
        if not setup.exists():
            write_dev_setup(setup.root)
            logger.info("created a development trust setup in %s", setup.root)
        trust, keys = str(setup.trust_file), keys or str(setup.keys_dir)
        policies = policies or str(setup.policies)
    if not keys:
        raise ConfigurationError(
            "with --trust, pass --keys (or set GOVMESH_KEYS_DIR): govmesh's signing keys"
        )
    if not policies:
        raise ConfigurationError("with --trust, pass --policies (a .cedar file or folder)")

    ports = metrics_ports(None if args.no_metrics else args.metrics_port, args.engines)
    if args.engines > 1:
        _check_engine_port_free(args.engine_port)
    mesh = Mesh(
        data,
        RestartPolicy(max_restarts=args.max_restarts, window=args.restart_window),
    )
    mesh.run_dir.mkdir(exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    exit_code = 0
    try:
        url = mesh.database_url()
        await asyncio.to_thread(upgrade_database, url)
        common = {
            "GOVMESH_DATABASE_URL": url,
            "GOVMESH_TRUST_FILE": str(Path(trust).resolve()),
            "GOVMESH_KEYS_DIR": str(Path(keys).resolve()),
            "GOVMESH_POLICY_PATH": str(Path(policies).resolve()),
            "GOVMESH_SPOOL_DIR": str(data / "spool"),
            # Beside the database it describes: a fresh data directory is a
            # fresh start for both.
            "GOVMESH_POLICY_STATE_FILE": str(data / "state" / "policy-epoch.json"),
            "GOVMESH_LINEAGE_STATE_FILE": str(data / "state" / "lineage-signed.floor"),
            "GOVMESH_LOG_FORMAT": os.environ.get("GOVMESH_LOG_FORMAT", "text"),
        }
        deadline = loop.time() + START_TIMEOUT_S
        peers = [
            await mesh.spawn(name, {**common, "GOVMESH_LISTEN": "127.0.0.1:0"}, ports.get(name))
            for name in PEERS
        ]
        addresses = {c.name: await c.address(deadline) for c in peers}
        for child in peers:
            # A restarted peer listens where the engine already looks for it.
            child.env["GOVMESH_LISTEN"] = addresses[child.name]
        await asyncio.gather(*(_wait_serving(c, addresses[c.name], deadline) for c in peers))
        engine_address = await _start_engines(
            mesh,
            args.engines,
            {
                **common,
                "GOVMESH_LISTEN": f"127.0.0.1:{args.engine_port}",
                "GOVMESH_VERIFICATION_TARGET": addresses["verification"],
                "GOVMESH_POLICY_TARGET": addresses["policy"],
                "GOVMESH_LINEAGE_TARGET": addresses["lineage"],
            },
            ports,
            deadline,
        )
        shared = f" ({args.engines} engine processes)" if args.engines > 1 else ""
        print(f"govmesh is up: engine at {engine_address}{shared}", flush=True)
        print(f"  data directory: {data}", flush=True)
        if ports:
            children = {c.name: c for c in mesh.children}
            for name in metrics_order(args.engines):
                address = children[name].metrics_file.read_text().strip()
                # A restarted service serves its metrics where they were printed.
                children[name].env["GOVMESH_METRICS_LISTEN"] = address
                print(f"  metrics: {name:12} http://{address}/metrics", flush=True)
        print("  try: govmesh mandate issue > mandate.jwt", flush=True)
        print(
            "       govmesh authorize --action payments.transfer "
            "--resource account:acme/treasury --context '{\"amount\": 250}' --mandate mandate.jwt",
            flush=True,
        )

        supervisors = [
            asyncio.create_task(mesh.supervise(c), name=f"supervise-{c.name}")
            for c in mesh.children
        ]
        if mesh.embedded_postgres:
            supervisors.append(
                asyncio.create_task(mesh.supervise_postgres(), name="supervise-postgres")
            )
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([stopping, *supervisors], return_when=asyncio.FIRST_COMPLETED)
        mesh.stopping = True
        for task in (stopping, *supervisors):
            task.cancel()
        for task in supervisors:
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await task
                except CrashLoop as exc:
                    logger.error("%s", exc)
                    exit_code = 1
    except ConfigurationError:
        exit_code = 2
        raise
    finally:
        logger.info("stopping the mesh")
        await mesh.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return exit_code


def _run(args: argparse.Namespace) -> int:
    configure_logging(service="up", fmt="text")
    # The embedded Postgres asks platformdirs for a runtime directory, which
    # warns on hosts without XDG_RUNTIME_DIR and then uses /tmp as it should.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    return asyncio.run(_up(args))


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "up", help="run the whole mesh on this machine"
    )
    parser.add_argument(
        "--data-dir", help="where Postgres, keys and spools live (GOVMESH_DATA_DIR)"
    )
    parser.add_argument("--trust", help="trust TOML (GOVMESH_TRUST_FILE); default: a dev setup")
    parser.add_argument("--policies", help="a .cedar file or a folder of them, activated at start")
    parser.add_argument(
        "--keys",
        help="govmesh's signing keys, with --trust (GOVMESH_KEYS_DIR; `keys init` prints it)",
    )
    parser.add_argument("--engine-port", type=int, default=50051, help="default 50051")
    parser.add_argument(
        "--engines",
        type=_positive(int),
        default=1,
        help="engine processes sharing the engine port (SO_REUSEPORT), each supervised, "
        "with its own engine id, spool and metrics port; admission limits are per process "
        "(default 1)",
    )
    parser.add_argument(
        "--max-restarts",
        type=_positive(int),
        default=MAX_RESTARTS,
        help="restarts of one service within --restart-window after which the mesh stops "
        f"(a crash loop); default {MAX_RESTARTS}",
    )
    parser.add_argument(
        "--restart-window",
        type=_positive(float),
        default=RESTART_WINDOW_S,
        help=f"seconds, default {RESTART_WINDOW_S:.0f}",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=DEFAULT_METRICS_PORT,
        help="Prometheus metrics of engine, verification, policy and lineage on this port and "
        "the next three, and of further --engines on the ports after those "
        f"(default {DEFAULT_METRICS_PORT}); 0: any free ports",
    )
    parser.add_argument("--no-metrics", action="store_true", help="serve no metrics")
    parser.set_defaults(func=_run)
