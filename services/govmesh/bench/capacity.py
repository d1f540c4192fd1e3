"""`govmesh bench`: goodput, latency and cost of a decision, all in one run.

Starts `govmesh up` (the four real processes) on a Postgres of its own: a
throwaway database on --database-url's server, or an embedded server in a
temporary folder. Then, after a warm-up:

1. closed loop, for each N in --callers (1, 8, 64, 256): N callers each send
   a request, wait for its answer, and send the next, until --requests were
   sent. The same client then drives a no-op grpc.aio server the same way,
   and the run prints the mesh's rate as a share of that echo's;
2. open loop at --rate per second (300), and at --capacity-share (0.8) of the
   highest closed-loop rate, for --seconds each: requests go out on schedule
   whatever the answers do;
3. for each peer in --stop: an open loop at --stop-rate during which the
   peer is stopped (SIGSTOP) for --stop-seconds, then resumed. It prints how
   fast the DENYs sent meanwhile came back, against the bound the engine
   promises: the decision budget, plus the spool timeout when lineage is
   the stopped peer (a deny waits for the spool).

Every --deny-every-th request is a deny a caller can cause, of each reason in
turn (govmesh.bench.workload); the rest are valid and must be ALLOWed. For
each phase it prints decisions/s, allows/s, p50/p90/p99/p99.9 latency, valid
requests not ALLOWed by reason, denies that got another reason (and any
ALLOW a deny got: that would be a security bug), RESOURCE_EXHAUSTED refusals,
CPU µs per decision per process and for the database's Postgres backends,
and each process's peak resident memory. --json FILE writes every figure.
Figures are for this machine and this moment: nothing here asserts a target.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy.engine import make_url

from govmesh.bench.cpu import BACKENDS, SHARED, CpuMeter
from govmesh.bench.echo import echo_server
from govmesh.bench.floor import floor_mesh
from govmesh.bench.workload import DENIES, VALID, Planned, Workload
from govmesh.cli.devsetup import DevSetup
from govmesh.client import AuthorizationResult, EngineClient
from govmesh.faults.mesh import PrivatePostgres, free_port
from govmesh.runtime.db import libpq_database_url

PEERS = ("verification", "policy", "lineage")
#: Service order in printed figures.
SERVICES = ("engine", "verification", "policy", "lineage", BACKENDS)
#: The transport floor's shapes: the design's three peers, and lineage alone (what
#: is left when verification and policy answer inside the engine's process).
FLOOR_SHAPES = {"3 peers": 3, "lineage only": 1}
#: Requests in a 1-caller run at most: its proofs must stay inside the proof window.
SINGLE_CALLER_MAX = 1000

_stderr = Console(stderr=True)


# -- what one phase measured ------------------------------------------------------


@dataclass
class Phase:
    """The figures of one phase of the run."""

    name: str
    mode: str  # "closed", "open" or "stopped <peer>"
    load: float  # callers, or requests per second offered
    sent: int = 0
    elapsed_s: float = 0.0
    allows: int = 0
    latencies_s: list[float] = field(default_factory=list)  # answered calls
    refusals_s: list[float] = field(default_factory=list)  # RESOURCE_EXHAUSTED: time to it
    valid_not_allowed: Counter[str] = field(default_factory=Counter)
    wrong_denies: Counter[str] = field(default_factory=Counter)
    denies_by_reason: Counter[str] = field(default_factory=Counter)
    cpu_us: dict[str, float] = field(default_factory=dict)
    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    echo_calls_per_s: float | None = None
    #: The same requests through the transport floor (`govmesh.bench.floor`), by
    #: its shape: the phase and the CPU µs per call of each of its processes.
    floors: dict[str, tuple[Phase, dict[str, float]]] = field(default_factory=dict)
    #: Stopped-peer phases: latency of the calls sent while the peer was stopped.
    stopped_latencies_s: list[float] = field(default_factory=list)
    stopped_unanswered: int = 0
    bound_s: float | None = None

    def count(self, planned: Planned, result: AuthorizationResult, elapsed: float) -> None:
        """Tally one answer against what its request should have got."""
        label = result.reason if result.answered else f"no answer ({result.error_code or '?'})"
        if result.answered:
            self.latencies_s.append(elapsed)
            if not result.allowed:
                self.denies_by_reason[result.reason] += 1
        elif result.error_code == "RESOURCE_EXHAUSTED":
            self.refusals_s.append(elapsed)
        if result.allowed:
            self.allows += 1
        if planned.kind == VALID:
            if not result.allowed:
                self.valid_not_allowed[label] += 1
        elif result.allowed:
            self.wrong_denies[f"{planned.kind}: ALLOWED"] += 1
        elif not result.answered or result.reason != planned.expected:
            self.wrong_denies[f"{planned.kind}: {label}"] += 1

    @property
    def decisions_per_s(self) -> float:
        return len(self.latencies_s) / self.elapsed_s if self.elapsed_s else 0.0

    def figures(self) -> dict[str, Any]:
        """Everything measured, for --json."""
        figures: dict[str, Any] = {
            "name": self.name,
            "mode": self.mode,
            "load": self.load,
            "sent": self.sent,
            "elapsed_s": round(self.elapsed_s, 3),
            "decisions_per_s": round(self.decisions_per_s, 1),
            "allows_per_s": round(self.allows / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "latency_ms": _percentiles(self.latencies_s),
            "valid_not_allowed": dict(self.valid_not_allowed),
            "wrong_denies": dict(self.wrong_denies),
            "denies_by_reason": dict(self.denies_by_reason),
            "refused": len(self.refusals_s),
            "refused_within_ms": round(max(self.refusals_s) * 1000, 1) if self.refusals_s else None,
            "cpu_us_per_decision": {k: round(v, 1) for k, v in self.cpu_us.items()},
            "cpu_us_per_decision_mesh": round(_mesh_total(self.cpu_us), 1),
            "peak_rss_mib": {k: round(v, 1) for k, v in self.peak_rss_mib.items()},
        }
        if self.echo_calls_per_s is not None:
            figures["echo_calls_per_s"] = round(self.echo_calls_per_s, 1)
            figures["ratio_to_echo"] = round(self.decisions_per_s / self.echo_calls_per_s, 3)
        for shape, (floor, cpu_us) in self.floors.items():
            figures.setdefault("floor", {})[shape] = {
                "calls_per_s": round(floor.decisions_per_s, 1),
                "latency_ms": _percentiles(floor.latencies_s),
                "cpu_us_per_call": round(sum(cpu_us.values()), 1),
                "cpu_us_per_call_by_process": {k: round(v, 1) for k, v in cpu_us.items()},
            }
            if self.echo_calls_per_s:
                figures["floor"][shape]["ratio_to_echo"] = round(
                    floor.decisions_per_s / self.echo_calls_per_s, 3
                )
        if self.bound_s is not None:
            figures["stopped"] = {
                "sent": len(self.stopped_latencies_s) + self.stopped_unanswered,
                "unanswered": self.stopped_unanswered,
                "latency_ms": _percentiles(self.stopped_latencies_s),
                "bound_ms": round(self.bound_s * 1000, 1),
                "over_bound": sum(1 for s in self.stopped_latencies_s if s > self.bound_s),
            }
        return figures

    def text(self) -> str:
        """The phase, as a few printed lines."""
        f = self.figures()
        lines = [
            f"{self.name:30} {self.sent:6} sent  {f['decisions_per_s']:8.1f} decisions/s"
            f"  {f['allows_per_s']:8.1f} allows/s"
        ]
        if f["latency_ms"]:
            lines.append(f"{'':30} latency ms: {_latency_text(f['latency_ms'])}")
        wrong = sum(self.valid_not_allowed.values())
        line = f"{'':30} valid not ALLOWed: {wrong}"
        if wrong:
            line += " (" + _counts(self.valid_not_allowed) + ")"
        line += f"; denies with another reason: {sum(self.wrong_denies.values())}"
        if self.wrong_denies:
            line += " (" + _counts(self.wrong_denies) + ")"
        lines.append(line)
        if self.refusals_s:
            lines.append(
                f"{'':30} refused (RESOURCE_EXHAUSTED): {len(self.refusals_s)},"
                f" each within {f['refused_within_ms']:.0f} ms"
            )
        if self.cpu_us:
            parts = [f"{k} {self.cpu_us[k]:.0f}" for k in SERVICES if k in self.cpu_us]
            line = f"{'':30} cpu µs/decision: " + ", ".join(parts)
            line += f"; mesh {_mesh_total(self.cpu_us):.0f}"
            if SHARED in self.cpu_us:
                line += f" (+ {SHARED}, shared by every database: {self.cpu_us[SHARED]:.0f})"
            lines.append(line)
        if self.peak_rss_mib:
            parts = [f"{k} {v:.0f}" for k, v in sorted(self.peak_rss_mib.items())]
            lines.append(f"{'':30} peak RSS MiB: " + ", ".join(parts))
        if self.echo_calls_per_s is not None:
            lines.append(
                f"{'':30} echo, same client: {self.echo_calls_per_s:,.1f} calls/s;"
                f" the mesh runs at {f['ratio_to_echo']:.2f} of it"
            )
        for shape, floor in f.get("floor", {}).items():
            line = f"{'':30} floor ({shape}), same client: {floor['calls_per_s']:,.1f} calls/s"
            if "ratio_to_echo" in floor:
                line += f" ({floor['ratio_to_echo']:.2f} of the echo)"
            latency = floor["latency_ms"]
            line += f"; p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms"
            each = ", ".join(f"{k} {v:.0f}" for k, v in floor["cpu_us_per_call_by_process"].items())
            line += f"; cpu µs/call {floor['cpu_us_per_call']:.0f} ({each})"
            lines.append(line)
        if "stopped" in f:
            stopped = f["stopped"]
            lines.append(
                f"{'':30} sent while stopped: {stopped['sent']}, unanswered"
                f" {stopped['unanswered']}; latency ms: {_latency_text(stopped['latency_ms'])};"
                f" bound {stopped['bound_ms']:.0f} ms, over it: {stopped['over_bound']}"
            )
        return "\n".join(lines)


def _percentiles(samples: list[float]) -> dict[str, float]:
    if len(samples) < 2:
        return {}
    cuts = statistics.quantiles(samples, n=1000, method="inclusive")
    return {
        "p50": round(cuts[499] * 1000, 2),
        "p90": round(cuts[899] * 1000, 2),
        "p99": round(cuts[989] * 1000, 2),
        "p99.9": round(cuts[998] * 1000, 2),
        "max": round(max(samples) * 1000, 2),
    }


def _latency_text(latency: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.1f}" for k, v in latency.items()) if latency else "-"


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counter.most_common())


def _mesh_total(cpu_us: dict[str, float]) -> float:
    return sum(v for k, v in cpu_us.items() if k != SHARED)


# -- driving the load ---------------------------------------------------------------


class Driver:
    """Sends planned requests and tallies the answers into a phase.

    The load goes over `connections` client connections, callers (or, in an
    open loop, requests) spread over them in turn. One connection reaches
    one engine process: several engines on a shared port (`govmesh up
    --engines N`) each get load only over connections of their own.
    """

    def __init__(
        self, target: str, workload: Workload, deadline_s: float, connections: int = 1
    ) -> None:
        self.target = target
        self.workload = workload
        self.deadline_s = deadline_s
        self.connections = connections

    @asynccontextmanager
    async def clients(self) -> AsyncIterator[list[EngineClient]]:
        """The engine clients, one per connection."""
        if self.connections == 1:
            async with await EngineClient.connect(self.target, timeout=self.deadline_s) as one:
                yield [one]
            return
        # grpc shares a connection between channels to one target unless each
        # channel has a subchannel pool of its own.
        options = [("grpc.use_local_subchannel_pool", 1)]
        clients = [
            EngineClient(
                grpc.aio.insecure_channel(self.target, options=options), timeout=self.deadline_s
            )
            for _ in range(self.connections)
        ]
        try:
            yield clients
        finally:
            for client in clients:
                await client.close()

    async def closed(
        self, plan: list[Planned], callers: int, phase: Phase, tick: Callable[[], None]
    ) -> None:
        """`callers` callers, each sending its next request when its last is answered."""
        queue = deque(plan)
        async with self.clients() as engines:

            async def caller(engine: EngineClient) -> None:
                while queue:
                    await self.one(engine, queue.popleft(), phase)
                    tick()

            started = time.perf_counter()
            await asyncio.gather(*(caller(engines[n % len(engines)]) for n in range(callers)))
            phase.elapsed_s = time.perf_counter() - started
        phase.sent = len(plan)

    async def open(
        self,
        plan: list[Planned],
        rate: float,
        phase: Phase,
        tick: Callable[[], None],
        tally: Callable[[int], Phase] | None = None,
    ) -> None:
        """`rate` requests a second, on schedule whatever the answers do.

        `tally(n)` picks the phase request n is counted in (default: `phase`).
        """
        async with self.clients() as engines:
            loop = asyncio.get_running_loop()
            started = loop.time()
            calls = []

            async def one(n: int, planned: Planned) -> None:
                target = phase if tally is None else tally(n)
                await self.one(engines[n % len(engines)], planned, target)
                tick()

            for n, planned in enumerate(plan):
                # A late tick sends at once rather than bursting to catch up later.
                await asyncio.sleep(max(0.0, started + n / rate - loop.time()))
                calls.append(asyncio.create_task(one(n, planned)))
            await asyncio.gather(*calls)
            phase.elapsed_s = loop.time() - started
        phase.sent = len(plan)

    async def one(self, engine: EngineClient, planned: Planned, phase: Phase) -> float:
        """Send one planned request; tally its answer into `phase`."""
        request = self.workload.request(planned)
        started = time.perf_counter()
        result = await engine.authorize_request(request)
        elapsed = time.perf_counter() - started
        phase.count(planned, result, elapsed)
        if planned.kind == VALID and result.allowed:
            self.workload.allowed(request)
        return elapsed


# -- the mesh under test --------------------------------------------------------------


async def _admin(server_url: str, statement: str) -> None:
    conn = await asyncpg.connect(libpq_database_url(server_url))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@contextmanager
def _database(server_url: str | None, folder: Path) -> Iterator[str]:
    """A throwaway database on `server_url`'s server, or an embedded Postgres in `folder`."""
    if not server_url:
        postgres = PrivatePostgres(folder / "pg")
        try:
            yield postgres.start()
        finally:
            postgres.close()
        return
    name = f"govmesh_bench_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    try:
        yield (
            make_url(libpq_database_url(server_url))
            .set(database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def _mesh(
    data: Path, port: int, database_url: str, settings: dict[str, str], extra: list[str]
) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOVMESH_")}
    env.update(
        GOVMESH_DATA_DIR=str(data),
        GOVMESH_LOG_LEVEL="WARNING",
        GOVMESH_DATABASE_URL=database_url,
        **settings,
    )
    log_path = data / "up.log"
    with log_path.open("wb") as log:
        up = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "govmesh"),
                "up",
                "--engine-port",
                str(port),
                *extra,
            ],
            env=env,
            stdout=log,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 120
        while "govmesh is up" not in log_path.read_text():
            if up.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("govmesh up failed:\n" + log_path.read_text())
            time.sleep(0.2)
        yield up
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()


def _bound_s(peer: str, settings: dict[str, str]) -> float:
    """What the engine promises while `peer` is stopped: its budget, plus the spool's wait."""
    from govmesh.engine.config import EngineSettings

    fields = EngineSettings.model_fields

    def setting(name: str) -> float:
        given = settings.get(f"GOVMESH_{name.upper()}")
        return float(given) if given is not None else float(fields[name].default)

    # A bench caller can wait: its decisions get the stretched budget.
    bound = max(setting("decision_budget_ms"), setting("decision_budget_max_ms")) / 1000
    if peer == "lineage":
        bound += setting("spool_timeout_s")
    return bound


# -- the run --------------------------------------------------------------------------


@dataclass
class Options:
    callers: list[int]
    requests: int
    rate: float
    capacity_share: float
    seconds: float
    stop: list[str]
    stop_rate: float
    stop_seconds: float
    deadline_s: float
    deny_every: int
    settings: dict[str, str]
    database_url: str | None
    metrics: bool
    #: Engine processes sharing the engine port, and the client connections over them.
    engines: int = 1
    connections: int = 1
    #: Drive the transport floor too, after each closed loop's echo.
    floor: bool = False


async def _measured(meter: CpuMeter, phase: Phase, work: Awaitable[None]) -> None:
    """Run `work` (which fills `phase`); add the CPU per decision and peak memory it cost."""
    meter.reset_peaks()
    before = await meter.sample()
    await work
    after = await meter.sample()
    decisions = len(phase.latencies_s)
    phase.cpu_us = {k: v * 1000 for k, v in meter.per_decision(before, after, decisions).items()}
    phase.peak_rss_mib = meter.peak_rss_mib()


def run(options: Options) -> list[Phase]:
    """Start the mesh, run every phase, print each as it ends; return the phases."""
    with tempfile.TemporaryDirectory(prefix="govmesh-bench-") as tmp:
        data = Path(tmp)
        port = free_port()
        extra = ["--metrics-port", "0"] if options.metrics else ["--no-metrics"]
        extra += ["--engines", str(options.engines)]
        with (
            _database(options.database_url, data) as database_url,
            _mesh(data, port, database_url, options.settings, extra) as up,
        ):
            workload = Workload(DevSetup(data / "dev"), deny_every=options.deny_every)
            meter = CpuMeter(up_pid=up.pid, database_url=database_url)
            driver = Driver(f"127.0.0.1:{port}", workload, options.deadline_s, options.connections)
            return asyncio.run(_phases(options, driver, workload, meter))


async def _phases(
    options: Options, driver: Driver, workload: Workload, meter: CpuMeter
) -> list[Phase]:
    phases: list[Phase] = []
    print(
        f"govmesh bench: {3 + options.engines} processes ({options.engines} engine"
        f"{'s' if options.engines > 1 else ''}) + Postgres, {os.cpu_count()} cores;"
        f" {options.connections} client connection{'s' if options.connections > 1 else ''};"
        f" deadline {options.deadline_s:g} s; every {options.deny_every}th request a deny"
        f" ({len(DENIES)} reasons in turn); settings {options.settings or 'default'};"
        f" metrics {'on' if options.metrics else 'off'}",
        flush=True,
    )
    with Progress(
        TextColumn("{task.description:30}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_stderr,
        transient=True,
    ) as progress:

        def tracked(name: str, total: int) -> Callable[[], None]:
            task = progress.add_task(name, total=total)
            return lambda: progress.advance(task)

        # Warm-up: connections, caches, and ALLOWed requests for the replays to resend.
        warm = Phase("warm-up", "closed", 8)
        await driver.closed(workload.plan(300, denies=False), 8, warm, tracked("warm-up", 300))

        for callers in options.callers:
            count = min(options.requests, SINGLE_CALLER_MAX) if callers == 1 else options.requests
            phase = Phase(f"closed loop, {callers} callers", "closed", callers)
            plan = workload.plan(count)
            tick = tracked(phase.name, count)
            await _measured(meter, phase, driver.closed(plan, callers, phase, tick))
            # The same client against a no-op grpc.aio server, in the same run.
            echo = Phase("echo", "closed", callers)
            with echo_server(free_port()) as target:
                await Driver(target, workload, options.deadline_s, options.connections).closed(
                    plan, callers, echo, tracked(f"echo, {callers} callers", count)
                )
            phase.echo_calls_per_s = len(plan) / echo.elapsed_s
            if options.floor:
                await _floor(options, workload, phase, plan, tracked)
            phases.append(phase)
            print(phase.text(), flush=True)

        rates = [options.rate] if options.rate > 0 else []
        closed = [p.decisions_per_s for p in phases if p.mode == "closed"]
        if options.capacity_share > 0 and closed:
            rates.append(round(options.capacity_share * max(closed)))
        for rate in rates:
            count = int(rate * options.seconds)
            phase = Phase(f"open loop, {rate:g}/s offered", "open", rate)
            plan = workload.plan(count)
            tick = tracked(phase.name, count)
            await _measured(meter, phase, driver.open(plan, rate, phase, tick))
            phases.append(phase)
            print(phase.text(), flush=True)

        for peer in options.stop:
            phase = await _stopped(options, driver, workload, meter, peer, tracked)
            phases.append(phase)
            print(phase.text(), flush=True)
    return phases


async def _floor(
    options: Options,
    workload: Workload,
    phase: Phase,
    plan: list[Planned],
    tracked: Callable[[str, int], Callable[[], None]],
) -> None:
    """The same requests and callers against the transport floor, in both shapes."""
    callers = int(phase.load)
    for shape, peers in FLOOR_SHAPES.items():
        floor = Phase(f"floor ({shape})", "closed", callers)
        with floor_mesh(peers) as mesh:
            driver = Driver(mesh.target, workload, options.deadline_s, options.connections)
            # Warm-up: connections and streams open, as the mesh's were.
            warm = plan[: min(len(plan), 100)]
            await driver.closed(warm, callers, Phase("warm-up", "closed", callers), _no_tick)
            before = mesh.cpu_s()
            await driver.closed(plan, callers, floor, tracked(f"floor ({shape})", len(plan)))
            after = mesh.cpu_s()
        calls = max(len(plan), 1)
        phase.floors[shape] = (floor, {k: (after[k] - before[k]) / calls * 1e6 for k in after})


def _no_tick() -> None:
    pass


async def _stopped(
    options: Options,
    driver: Driver,
    workload: Workload,
    meter: CpuMeter,
    peer: str,
    tracked: Callable[[str, int], Callable[[], None]],
) -> Phase:
    """An open loop during which `peer` is stopped (SIGSTOP), then resumed (SIGCONT)."""
    lead_s = 1.0
    total_s = lead_s + options.stop_seconds + 2.0
    count = int(options.stop_rate * total_s)
    phase = Phase(f"{peer} stopped, {options.stop_rate:g}/s", f"stopped {peer}", options.stop_rate)
    phase.bound_s = _bound_s(peer, options.settings)
    pids = [pid for pid, service in meter.mesh_pids().items() if service == peer]
    if not pids:
        raise SystemExit(f"no {peer} process found under govmesh up")
    plan = workload.plan(count)
    # Calls sent while the peer is stopped are tallied apart, by their own latency.
    window = (lead_s, lead_s + options.stop_seconds)
    in_window = [window[0] <= n / options.stop_rate < window[1] for n in range(count)]
    during = Phase("during the stop", "stopped", options.stop_rate)
    tick = tracked(phase.name, count)

    async def pause() -> None:
        await asyncio.sleep(lead_s)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(options.stop_seconds)
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)

    def tally(n: int) -> Phase:
        return during if in_window[n] else phase

    drive = driver.open(plan, options.stop_rate, phase, tick, tally)
    await asyncio.gather(pause(), drive)
    phase.sent = count
    phase.stopped_latencies_s = during.latencies_s
    phase.stopped_unanswered = sum(in_window) - len(during.latencies_s)
    # Valid requests sent during the stop are denied by design: only a wrong ALLOW counts.
    phase.wrong_denies.update(
        {k: v for k, v in during.wrong_denies.items() if k.endswith(": ALLOWED")}
    )
    phase.denies_by_reason.update(during.denies_by_reason)
    # Resumed peers reconnect and breakers close before the next phase.
    await asyncio.sleep(3.0)
    return phase
