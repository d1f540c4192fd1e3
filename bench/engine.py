"""Decision latency and throughput through the whole mesh.

    python bench/engine.py [--requests 5000] [--concurrency 64] [--database-url URL] [--metrics]

Starts `govmesh up` (the four real processes; an embedded Postgres unless a
database URL is given, in which case a throwaway database is created on that
server and dropped afterwards), warms it up, then sends Authorize calls with fresh
proofs from a pool of client tasks and prints p50/p95/p99 latency and
decisions/s, for an ALLOW-only load and a mixed ALLOW/DENY load. With
--metrics every service serves Prometheus metrics and each is scraped every
5 s during the run (as a Prometheus would, more often); without it the mesh
runs with `--no-metrics`. Figures are for this machine and this moment;
nothing here asserts a target.
"""

from __future__ import annotations

import argparse
import asyncio
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
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from govmesh.cli.devsetup import DEV_ISSUER, DEV_SUBJECT, DevSetup
from govmesh.client import EngineClient, Initiator, issue_mandate
from govmesh.runtime.db import libpq_database_url
from govmesh.v1 import engine_pb2


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
    data: Path, port: int, database_url: str | None, metrics: bool
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOVMESH_")}
    env["GOVMESH_DATA_DIR"] = str(data)
    env["GOVMESH_LOG_LEVEL"] = "WARNING"
    if database_url:
        env["GOVMESH_DATABASE_URL"] = database_url
    log = (data / "up.log").open("wb")
    up = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "govmesh"),
            "up",
            "--engine-port",
            str(port),
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


def _request(
    setup: DevSetup, agent: Initiator, mandate: str, amount: int
) -> engine_pb2.AuthorizeRequest:
    from google.protobuf import json_format

    action, resource, context = "payments.transfer", "account:acme/treasury", {"amount": amount}
    request = engine_pb2.AuthorizeRequest(
        action=action,
        resource=resource,
        mandate=mandate,
        proof=agent.proof(mandate, action, resource, context),
    )
    json_format.ParseDict(context, request.context)
    return request


async def _load(
    target: str, requests: list[engine_pb2.AuthorizeRequest], concurrency: int
) -> dict[str, Any]:
    latencies: list[float] = []
    decisions: dict[str, int] = {}
    queue = list(reversed(requests))
    async with await EngineClient.connect(target, timeout=5) as engine:

        async def worker() -> None:
            while queue:
                request = queue.pop()
                started = time.perf_counter()
                result = await engine.authorize_request(request)
                latencies.append(time.perf_counter() - started)
                key = result.decision if result.decision == "ALLOW" else result.reason
                decisions[key] = decisions.get(key, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "decisions/s": len(latencies) / elapsed,
        "p50 ms": cuts[49] * 1000,
        "p95 ms": cuts[94] * 1000,
        "p99 ms": cuts[98] * 1000,
        "outcomes": decisions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--database-url", default=os.environ.get("GOVMESH_DATABASE_URL"))
    parser.add_argument(
        "--metrics", action="store_true", help="serve metrics and scrape them every 5 s"
    )
    args = parser.parse_args()

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
        up = _start_mesh(data, port, database_url, args.metrics)
        urls = re.findall(r"metrics: +\w+ +(http://\S+/metrics)", (data / "up.log").read_text())
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
            target = f"127.0.0.1:{port}"
            warm = [_request(setup, agent, mandate, 1) for _ in range(200)]
            asyncio.run(_load(target, warm, 8))
            print(
                f"mesh: 4 processes, {os.cpu_count()} cores; concurrency {args.concurrency}; "
                + (
                    f"metrics on, {len(urls)} endpoints scraped every 5 s"
                    if urls
                    else "metrics off"
                )
            )
            for name, amounts in (
                ("allow", [250] * args.requests),
                ("mixed", [250 if n % 2 else 5000 for n in range(args.requests)]),
            ):
                load = [_request(setup, agent, mandate, a) for a in amounts]
                figures = asyncio.run(_load(target, load, args.concurrency))
                outcomes = ", ".join(f"{k} {v}" for k, v in sorted(figures.pop("outcomes").items()))
                line = "  ".join(f"{k} {v:,.1f}" for k, v in figures.items())
                print(f"{name:6} {args.requests} requests: {line}  ({outcomes})")
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
