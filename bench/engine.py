"""Decision latency, throughput and goodput through the whole mesh, at and past capacity.

    python bench/engine.py [--callers 8,64,256] [--deadline 10] [--requests 5000]
                           [--rate 300] [--seconds 10] [--mixed] [--metrics]
                           [--set GOVMESH_NAME=VALUE ...] [--database-url URL]
                           [--engines N] [--connections C]

Starts `govmesh up` (the four real processes; an embedded Postgres unless a
database URL is given, in which case a throwaway database is created on that
server and dropped afterwards), warms it up, then:

- closed loop, for each N in --callers: N callers each send one request, wait
  for its answer (or its --deadline), and send the next, until --requests
  requests were sent;
- open loop, with --rate R (0: none): requests at R per second for --seconds,
  each with the same deadline, whatever the answers do.

Every request is valid (a fresh proof each) and should be ALLOWed; with
--mixed, every other one asks for more than the sample policy permits and
should be DENYed POLICY_MISMATCH. Each run prints decisions/s (answered
decisions per second), allows/s, p50/p95/p99 latency of the answered calls,
how many requests did not get the expected outcome, by reason (answered
denies) or gRPC status (no answer, RESOURCE_EXHAUSTED being the engine's
admission refusals), and how fast refusals came. --set passes engine settings
to `govmesh up` (e.g. --set GOVMESH_ADMISSION_MAX_CONCURRENT=16). Figures are
for this machine and this moment; nothing here asserts a target.

Each run also prints the CPU time each mesh process and the database's
Postgres backends spent per decision (bench/cpu.py), and the same client's
calls/s against a no-op grpc.aio server (bench/echo.py). With --metrics every
service serves Prometheus metrics and each is scraped every 5 s during the
run (as a Prometheus would, more often); without it the mesh runs with
`--no-metrics`.

With --engines N, `govmesh up --engines N` runs N engine processes on the one
engine port (SO_REUSEPORT). The kernel hands each connection to one of them,
so the load goes over --connections separate connections (default 1, or 8
with several engines), callers spread over them in turn; compare 1 and N
engines with the same --connections. Admission limits are per engine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
from cpu import CpuMeter  # bench/cpu.py
from echo import echo_server  # bench/echo.py
from google.protobuf import json_format
from sqlalchemy.engine import make_url

from govmesh.cli.devsetup import DEV_ISSUER, DEV_SUBJECT, DevSetup
from govmesh.client import AuthorizationResult, EngineClient, Initiator, issue_mandate
from govmesh.runtime.db import libpq_database_url
from govmesh.v1 import engine_pb2

#: What the sample policy allows, and what it refuses (it caps amounts at 1,000).
ALLOWED_AMOUNT, DENIED_AMOUNT = 250, 5000


async def _admin(server_url: str, statement: str) -> None:
    conn = await asyncpg.connect(libpq_database_url(server_url))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_mesh(
    data: Path,
    port: int,
    database_url: str | None,
    settings: dict[str, str],
    metrics: bool,
    engines: int,
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOVMESH_")}
    env["GOVMESH_DATA_DIR"] = str(data)
    env["GOVMESH_LOG_LEVEL"] = "WARNING"
    env.update(settings)
    if database_url:
        env["GOVMESH_DATABASE_URL"] = database_url
    log = (data / "up.log").open("wb")
    up = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "govmesh"),
            "up",
            "--engine-port",
            str(port),
            "--engines",
            str(engines),
            *(["--metrics-port", "0"] if metrics else ["--no-metrics"]),
        ],
        env=env,
        stdout=log,
        stderr=log,
    )
    deadline = time.monotonic() + 120
    while "govmesh is up" not in (data / "up.log").read_text():
        if up.poll() is not None or time.monotonic() > deadline:
            sys.exit("govmesh up failed:\n" + (data / "up.log").read_text())
        time.sleep(0.2)
    return up


def _scrape_every(urls: list[str], interval: float, stop: threading.Event) -> None:
    while not stop.wait(interval):
        for url in urls:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - http only
                response.read()


@dataclass
class _Load:
    """The requests of one run: one per amount, each with a fresh proof."""

    agent: Initiator
    mandate: str
    amounts: list[int]

    def requests(self) -> list[engine_pb2.AuthorizeRequest]:
        # Fresh proofs, made before the run so that signing is not measured.
        made = []
        for amount in self.amounts:
            action, resource, context = (
                "payments.transfer",
                "account:acme/treasury",
                {"amount": amount},
            )
            request = engine_pb2.AuthorizeRequest(
                action=action,
                resource=resource,
                mandate=self.mandate,
                proof=self.agent.proof(self.mandate, action, resource, context),
            )
            json_format.ParseDict(context, request.context)
            made.append(request)
        return made


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)  # answered calls
    refusals: list[float] = field(default_factory=list)  # RESOURCE_EXHAUSTED, time to refusal
    unexpected: Counter[str] = field(default_factory=Counter)
    allows: int = 0

    def count(
        self, request: engine_pb2.AuthorizeRequest, result: AuthorizationResult, elapsed: float
    ) -> None:
        expected_allow = request.context.fields["amount"].number_value == ALLOWED_AMOUNT
        code = ""
        if result.answered:
            self.latencies.append(elapsed)
        else:
            # The error code; before the client had it, read from the message.
            words = result.message.split()
            code = getattr(result, "error_code", "") or (words[5] if len(words) > 5 else "?")
            if code == "RESOURCE_EXHAUSTED":
                self.refusals.append(elapsed)
        if result.allowed:
            self.allows += 1
        if expected_allow and result.allowed:
            return
        if not expected_allow and result.answered and result.reason == "POLICY_MISMATCH":
            return
        label = result.reason if result.answered else f"no answer {code}"
        self.unexpected[label] += 1

    def report(self, name: str, elapsed: float, sent: int) -> str:
        answered = len(self.latencies)
        line = f"{name:28} {sent:6} sent  {answered / elapsed:7.1f} decisions/s"
        line += f"  {self.allows / elapsed:7.1f} allows/s"
        if answered >= 2:
            cuts = statistics.quantiles(self.latencies, n=100)
            line += f"  p50 {cuts[49] * 1000:6.1f}  p95 {cuts[94] * 1000:6.1f}"
            line += f"  p99 {cuts[98] * 1000:6.1f} ms"
        wrong = sum(self.unexpected.values())
        line += f"\n{'':28} not as expected: {wrong}"
        if wrong:
            line += " (" + ", ".join(f"{k} {v}" for k, v in self.unexpected.most_common()) + ")"
        if self.refusals:
            line += f"; refused after at most {max(self.refusals) * 1000:.0f} ms"
        return line


@contextlib.asynccontextmanager
async def _clients(
    target: str, connections: int, deadline: float
) -> AsyncIterator[list[EngineClient]]:
    """`connections` engine clients, each on a connection of its own.

    One client is one connection, and so one engine process of several on a
    shared port; grpc shares a connection between channels to the same
    target unless each has a local subchannel pool.
    """
    if connections == 1:
        # As before --connections: the client as a caller makes it.
        async with await EngineClient.connect(target, timeout=deadline) as engine:
            yield [engine]
        return
    clients = [
        EngineClient(
            grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]),
            timeout=deadline,
        )
        for _ in range(connections)
    ]
    try:
        yield clients
    finally:
        for client in clients:
            await client.close()


async def _closed_loop(
    target: str,
    requests: list[engine_pb2.AuthorizeRequest],
    callers: int,
    deadline: float,
    connections: int = 1,
) -> tuple[_Tally, float]:
    tally = _Tally()
    queue = list(reversed(requests))
    async with _clients(target, connections, deadline) as engines:

        async def caller(engine: EngineClient) -> None:
            while queue:
                request = queue.pop()
                started = time.perf_counter()
                result = await engine.authorize_request(request)
                tally.count(request, result, time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(caller(engines[n % len(engines)]) for n in range(callers)))
        return tally, time.perf_counter() - started


async def _open_loop(
    target: str,
    requests: list[engine_pb2.AuthorizeRequest],
    rate: float,
    deadline: float,
    connections: int = 1,
) -> tuple[_Tally, float]:
    tally = _Tally()
    async with _clients(target, connections, deadline) as engines:

        async def one(n: int, request: engine_pb2.AuthorizeRequest) -> None:
            started = time.perf_counter()
            result = await engines[n % len(engines)].authorize_request(request)
            tally.count(request, result, time.perf_counter() - started)

        loop = asyncio.get_running_loop()
        started = loop.time()
        calls = []
        for n, request in enumerate(requests):
            # On schedule whatever the answers do; a late tick sends at once.
            await asyncio.sleep(max(0.0, started + n / rate - loop.time()))
            calls.append(asyncio.create_task(one(n, request)))
        await asyncio.gather(*calls)
        return tally, loop.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--callers", default="8,64,256", help="closed-loop caller counts")
    parser.add_argument("--requests", type=int, default=5000, help="per closed-loop run")
    parser.add_argument("--deadline", type=float, default=10.0, help="seconds per call")
    parser.add_argument("--rate", type=float, default=300.0, help="open loop, per second (0: off)")
    parser.add_argument("--seconds", type=float, default=10.0, help="open-loop duration")
    parser.add_argument("--mixed", action="store_true", help="every other request a policy deny")
    parser.add_argument("--set", action="append", default=[], metavar="GOVMESH_NAME=VALUE")
    parser.add_argument("--database-url", default=os.environ.get("GOVMESH_DATABASE_URL"))
    parser.add_argument(
        "--metrics", action="store_true", help="serve metrics and scrape them every 5 s"
    )
    parser.add_argument(
        "--engines", type=int, default=1, help="engine processes sharing the port (default 1)"
    )
    parser.add_argument(
        "--connections",
        type=int,
        help="client connections the callers share (default 1, or 8 with several engines)",
    )
    args = parser.parse_args()
    if args.engines < 1:
        parser.error("--engines must be at least 1")
    connections = args.connections or (1 if args.engines == 1 else 8)
    if connections < 1:
        parser.error("--connections must be at least 1")
    settings = dict(item.split("=", 1) for item in args.set)
    callers = [int(n) for n in args.callers.split(",") if n.strip()]

    server_url, database_url = args.database_url, None
    if server_url:
        name = f"govmesh_bench_{uuid.uuid4().hex[:12]}"
        asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
        database_url = (
            make_url(libpq_database_url(server_url))
            .set(database=name)
            .render_as_string(hide_password=False)
        )
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        port = _free_port()
        up = _start_mesh(data, port, database_url, settings, args.metrics, args.engines)
        urls = re.findall(r"metrics: +[\w-]+ +(http://\S+/metrics)", (data / "up.log").read_text())
        stop_scraping = threading.Event()
        scraper = threading.Thread(target=_scrape_every, args=(urls, 5.0, stop_scraping))
        scraper.start()
        try:
            setup = DevSetup(data / "dev")
            agent = Initiator(setup.dev_key("agent"))
            mandate = issue_mandate(
                setup.dev_key("issuer"),
                issuer=DEV_ISSUER,
                subject=DEV_SUBJECT,
                holder_thumbprint=agent.thumbprint,
                scope=[{"action": "payments.transfer", "resource": "account:acme/*"}],
                ttl_s=3600,
            )

            def load(count: int) -> list[engine_pb2.AuthorizeRequest]:
                amounts = [
                    DENIED_AMOUNT if args.mixed and n % 2 else ALLOWED_AMOUNT for n in range(count)
                ]
                return _Load(agent, mandate, amounts).requests()

            target = f"127.0.0.1:{port}"
            asyncio.run(_closed_loop(target, load(300), 8, args.deadline, connections))
            meter = CpuMeter(up_pid=up.pid, database_url=database_url)
            print(
                f"mesh: {3 + args.engines} processes ({args.engines} engine"
                f"{'s' if args.engines > 1 else ''}),"
                f" {os.cpu_count()} cores; {connections} connections; deadline {args.deadline:g} s;"
                f" {'mixed allow/deny' if args.mixed else 'allow'} load;"
                f" settings {settings or 'default'};"
                + (
                    f" metrics on, {len(urls)} endpoints scraped every 5 s"
                    if urls
                    else " metrics off"
                )
            )
            for n in callers:
                before = asyncio.run(meter.sample())
                tally, elapsed = asyncio.run(
                    _closed_loop(target, load(args.requests), n, args.deadline, connections)
                )
                after = asyncio.run(meter.sample())
                print(tally.report(f"closed loop, {n} callers", elapsed, args.requests))
                print("       " + meter.report(before, after, args.requests))
                # The same client against a no-op grpc.aio server, in the same run.
                with echo_server(_free_port()) as echo:
                    _, floor = asyncio.run(
                        _closed_loop(echo, load(args.requests), n, args.deadline, connections)
                    )
                print(
                    f"       echo, {n} callers: {args.requests / floor:,.1f} calls/s;"
                    f" the mesh runs at {floor / elapsed:.2f} of it"
                )
            if args.rate > 0:
                count = int(args.rate * args.seconds)
                before = asyncio.run(meter.sample())
                tally, elapsed = asyncio.run(
                    _open_loop(target, load(count), args.rate, args.deadline, connections)
                )
                after = asyncio.run(meter.sample())
                print(tally.report(f"open loop, {args.rate:g}/s offered", elapsed, count))
                print("       " + meter.report(before, after, count))
        finally:
            stop_scraping.set()
            scraper.join()
            up.send_signal(signal.SIGTERM)
            up.wait(60)
            if server_url and database_url:
                dropped = make_url(database_url).database
                asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{dropped}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
