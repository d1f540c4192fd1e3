"""Benchmark the verification process alone: full requests at a fixed concurrency.

    python bench/verification.py --database-url postgresql://postgres@127.0.0.1:5432/postgres \\
        --create-database [--requests 20000] [--concurrency 64]

Starts one real `govmesh serve verification` process on a fresh development
trust setup and a migrated database (with --create-database, a throwaway
database on that server, dropped afterwards), prepares every request up front
(each with a mandate, a fresh proof and an attestation; mandates and
attestations are shared by many requests, as an agent's are), then sends them
over gRPC from this process with `--concurrency` calls in flight, and prints
the latency percentiles and verifications per second. Every answer must be
verified: a deny is counted and reported as an error.

Each request costs the service one Ed25519 proof verification, the checks,
and one replay-store insert (group-committed); mandate and attestation
signatures come from the verified-token cache after their first use. Note
that this client shares the machine with the service. A last line runs the
same handler, Postgres store included, in this process without gRPC, to show
what the transport costs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url

from govmesh.artifacts.canonical import request_digest
from govmesh.cli.devsetup import (
    DEV_ATTESTOR,
    DEV_ENV,
    DEV_ISSUER,
    DEV_MEASUREMENT,
    DEV_SUBJECT,
    write_dev_setup,
)
from govmesh.client import Initiator, issue_attestation, issue_mandate
from govmesh.runtime.db import libpq_database_url, upgrade_database
from govmesh.v1 import verification_pb2, verification_pb2_grpc
from govmesh.verification.core import VerificationConfig, Verifier
from govmesh.verification.replay import PostgresReplayStore
from govmesh.verification.servicer import VerificationServicer
from govmesh.verification.trustsource import TrustSource


def prepare(root: Path, count: int, mandates: int) -> list[verification_pb2.VerifyRequest]:
    """`count` distinct, valid requests over `mandates` mandates (and as many attestations)."""
    setup = write_dev_setup(root)
    agent = Initiator(setup.dev_key("agent"))
    issuer, attestor = setup.dev_key("issuer"), setup.dev_key("attestor")
    pairs = []
    for _ in range(mandates):
        mandate = issue_mandate(
            issuer,
            issuer=DEV_ISSUER,
            subject=DEV_SUBJECT,
            holder_thumbprint=agent.thumbprint,
            scope=[{"action": "payments.*", "resource": "account:acme/*"}],
            env={"cluster": "dev"},
            ttl_s=3600,
        )
        attestation = issue_attestation(
            attestor,
            issuer=DEV_ATTESTOR,
            subject=DEV_SUBJECT,
            holder_thumbprint=agent.thumbprint,
            env=DEV_ENV,
            measurements=[DEV_MEASUREMENT],
            ttl_s=3600,
        )
        pairs.append((mandate, attestation))
    requests = []
    for n in range(count):
        mandate, attestation = pairs[n % mandates]
        context = {"amount": n % 1000, "currency": "EUR"}
        resource = f"account:acme/{n % 97}"
        digest = request_digest("payments.transfer", resource, context)
        request = verification_pb2.VerifyRequest(
            request_digest=digest,
            action="payments.transfer",
            resource=resource,
            mandate=mandate,
            proof=agent.proof_for_digest(mandate, digest),
            attestation=attestation,
        )
        json_format.ParseDict(context, request.context)
        requests.append(request)
    return requests


def start_verification(
    root: Path, trust_file: Path, database_url: str
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """Start the service; returns the process, its address and its log file."""
    port_file, log_path = root / "verification.addr", root / "verification.log"
    env = {
        **os.environ,
        "GOVMESH_TRUST_FILE": str(trust_file),
        "GOVMESH_DATABASE_URL": database_url,
        "GOVMESH_LISTEN": "127.0.0.1:0",
        "GOVMESH_PORT_FILE": str(port_file),
        "GOVMESH_LOG_FORMAT": "text",
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "govmesh.verification"], env=env, stdout=log, stderr=log
        )
    deadline = time.monotonic() + 30
    while not port_file.is_file():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"verification did not start:\n{log_path.read_text()}")
        time.sleep(0.05)
    address = port_file.read_text().strip()
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                process.kill()
                raise SystemExit("verification never reported SERVING")
            time.sleep(0.05)
    return process, address, log_path


async def drive(
    address: str,
    requests: list[verification_pb2.VerifyRequest],
    concurrency: int,
    channels: int,
) -> tuple[list[float], float, int]:
    """Send every request with `concurrency` in flight; (latencies, wall seconds, denies)."""
    opened = [grpc.aio.insecure_channel(address) for _ in range(channels)]
    stubs = [verification_pb2_grpc.VerificationStub(c) for c in opened]
    latencies: list[float] = []
    denied = 0
    queue = iter(requests)

    async def worker(index: int) -> None:
        nonlocal denied
        stub = stubs[index % len(stubs)]
        for request in queue:
            started = time.perf_counter()
            answer = await stub.Verify(request, timeout=30)
            latencies.append(time.perf_counter() - started)
            if not answer.verified:
                denied += 1
                if denied <= 3:
                    print(f"  deny: {answer.message}", file=sys.stderr)

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    wall = time.perf_counter() - started
    for channel in opened:
        await channel.close()
    return latencies, wall, denied


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _NoDeadline:
    def time_remaining(self) -> float | None:
        return None


async def drive_in_process(
    trust_file: Path,
    database_url: str,
    requests: list[verification_pb2.VerifyRequest],
    concurrency: int,
) -> tuple[float, float]:
    """The same handler, Postgres store included, called directly: (wall s, CPU s).

    What is left when gRPC is taken away: the measure of what the transport costs.
    """
    source = TrustSource(trust_file, cache_size=10_000)
    store = PostgresReplayStore(database_url=database_url)
    await store.start()
    servicer = VerificationServicer(
        verifier=Verifier(trust=source, replay=store, clock=time.time, config=VerificationConfig())
    )
    queue = iter(requests)
    context: Any = _NoDeadline()

    async def worker() -> None:
        for request in queue:
            answer = await servicer.Verify(request, context)
            if not answer.verified:
                raise SystemExit(f"in-process deny: {answer.message}")

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    await store.close()
    return wall, cpu


async def admin(server_url: str, statement: str) -> None:
    conn = await asyncpg.connect(libpq_database_url(server_url))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("GOVMESH_DATABASE_URL"))
    parser.add_argument(
        "--create-database",
        action="store_true",
        help="use a throwaway database on that server, dropped afterwards",
    )
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--mandates", type=int, default=16, help="distinct mandates in the mix")
    args = parser.parse_args()
    if not args.database_url:
        parser.error("set --database-url or GOVMESH_DATABASE_URL")

    url, created = args.database_url, None
    if args.create_database:
        created = f"govmesh_bench_{uuid.uuid4().hex[:12]}"
        asyncio.run(admin(url, f'CREATE DATABASE "{created}"'))
        url = (
            make_url(libpq_database_url(url))
            .set(database=created)
            .render_as_string(hide_password=False)
        )
    process = None
    try:
        upgrade_database(url)
        with tempfile.TemporaryDirectory(prefix="govmesh-bench-") as tmp:
            root = Path(tmp)
            print(f"preparing {args.warmup + args.requests} requests ...", flush=True)
            requests = prepare(root / "dev", args.warmup + args.requests, args.mandates)
            process, address, log = start_verification(root, root / "dev" / "trust.toml", url)
            warm, measured = requests[: args.warmup], requests[args.warmup :]
            asyncio.run(drive(address, warm, args.concurrency, args.channels))
            server_cpu, client_cpu = cpu_seconds(process.pid), time.process_time()
            latencies, wall, denied = asyncio.run(
                drive(address, measured, args.concurrency, args.channels)
            )
            server_cpu = cpu_seconds(process.pid) - server_cpu
            client_cpu = time.process_time() - client_cpu
            process.terminate()
            process.wait(20)
            stats = [line for line in log.read_text().splitlines() if "replay store" in line]
            direct = prepare(root / "direct", args.requests // 2, args.mandates)
            direct_wall, direct_cpu = asyncio.run(
                drive_in_process(root / "direct" / "trust.toml", url, direct, args.concurrency)
            )
    finally:
        if process is not None and process.poll() is None:
            process.kill()
        if created:
            server = args.database_url
            asyncio.run(admin(server, f'DROP DATABASE IF EXISTS "{created}" WITH (FORCE)'))

    cuts = statistics.quantiles(latencies, n=100)
    print(f"verification alone: {len(latencies)} full requests at concurrency {args.concurrency}")
    print(f"  p50 {cuts[49] * 1000:.2f} ms   p99 {cuts[98] * 1000:.2f} ms")
    print(f"  {len(latencies) / wall:,.0f} verifications/s over {wall:.1f} s")
    print(
        f"  CPU per verification: service {server_cpu / len(latencies) * 1e6:.0f} us, "
        f"this client {client_cpu / len(latencies) * 1e6:.0f} us "
        f"(service busy {server_cpu / wall:.0%} of one core)"
    )
    for line in stats:
        print(f"  {line.split(': ', 1)[-1]}")
    print(
        f"the same handler in-process, without gRPC ({len(direct)} requests): "
        f"{len(direct) / direct_wall:,.0f} verifications/s, "
        f"CPU {direct_cpu / len(direct) * 1e6:.0f} us each"
    )
    if denied:
        print(f"  ERROR: {denied} requests were denied", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
