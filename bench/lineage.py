"""Lineage benchmark: sustained appends, append-to-receipt latency, proof latency.

    python bench/lineage.py [--database-url postgresql://postgres@127.0.0.1:5432/postgres]
                            [--entries 1000000] [--rate 5000] [--seconds 10]

1. Bulk-loads --entries decisions straight into Postgres through the store's
   own sequencer (one signed checkpoint per 10,000 entries).
2. Starts the lineage service (a real `python -m govmesh.lineage` process).
3. Throughput: several clients send AppendBatch calls of --batch entries
   back to back; prints sustained appends/s.
4. Latency: an open-loop load of --rate appends/s through the engine's own
   batching clients (the AppendStream client, and the engine's own AppendBatch
   batcher with the engine's settings); prints p50/p99/max
   from submitting an append to holding its receipt.
5. Proofs: inclusion proofs (by decision id, against the newest checkpoint)
   and consistency proofs (between random sizes) through gRPC at the loaded
   size; prints p50/p99.

It creates its own database on the server and drops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
from lineage_stream import StreamingLineage  # bench/lineage_stream.py
from sqlalchemy.engine import make_url

from govmesh.artifacts.canonical import canonical_json
from govmesh.cli.devsetup import write_dev_setup
from govmesh.engine.lineage import BatchingLineage
from govmesh.engine.peers import GrpcLineage, open_channel
from govmesh.lineage.client import LineageClient
from govmesh.lineage.core import check_entry
from govmesh.lineage.floor import StateFile
from govmesh.lineage.keys import DEFAULT_ORIGIN, load_log_signer
from govmesh.lineage.sequencer import Sequencer
from govmesh.lineage.store import LogStore
from govmesh.runtime.db import libpq_database_url, upgrade_database

_TEMPLATE_ID = "00000000-0000-4000-8000-000000000000"
_TEMPLATE = canonical_json(
    {
        "v": 1,
        "type": "decision",
        "decision_id": _TEMPLATE_ID,
        "engine": {"id": "bench-engine", "seq": 0},
        "time": "2026-11-26T10:00:00.000+00:00",
        "request_digest": "q" * 43,
        "subject": "spiffe://govmesh.dev/agent/demo",
        "claimed_subject": "spiffe://govmesh.dev/agent/demo",
        "issuer": "https://issuer.govmesh.dev",
        "mandate_id": "m" * 22,
        "action": "payments.transfer",
        "resource": "account:acme/treasury",
        "decision": "DENY",
        "reason": "POLICY_MISMATCH",
        "failed_checks": ["policy"],
        "policy": {"bundle": "ab" * 32, "epoch": 3, "decision": "DENY", "determining": ["p1"]},
        "shadow": None,
        "grant_id": None,
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "span_id": "b7ad6b7169203331",
    }
)


class Entries:
    """Engine-shaped canonical entries, made by substitution (as fast as the bench needs)."""

    def __init__(self, engine: str) -> None:
        self._head, rest = _TEMPLATE.split(_TEMPLATE_ID.encode())
        self._middle, self._tail = rest.split(b'"seq":0')
        self._middle = self._middle.replace(b"bench-engine", engine.encode())
        self._seq = 0

    def next(self) -> tuple[bytes, str]:
        decision_id = str(uuid.uuid4())
        data = (
            self._head
            + decision_id.encode()
            + self._middle
            + b'"seq":'
            + str(self._seq).encode()
            + self._tail
        )
        self._seq += 1
        return data, decision_id


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000

    return (
        f"p50 {pct(0.50):.2f} ms, p90 {pct(0.90):.2f} ms, p99 {pct(0.99):.2f} ms, "
        f"max {ordered[-1] * 1000:.2f} ms (n={len(ordered)})"
    )


async def bulk_load(url: str, keys_dir: Path, count: int) -> None:
    store = await LogStore.open(url)
    sequencer = Sequencer(
        store=store,
        signer=load_log_signer(keys_dir, DEFAULT_ORIGIN),
        origin=DEFAULT_ORIGIN,
        state_file=StateFile(keys_dir.parent / "state" / "bulk-load.floor"),
        max_batch=10_000,
    )
    await sequencer.start()
    maker = Entries("bulk-engine")
    started = time.perf_counter()
    done = 0
    try:
        while done < count:
            n = min(10_000, count - done)
            batch = []
            for _ in range(n):
                batch.append(check_entry(*maker.next()))
            await sequencer.append(batch)
            done += n
            if done % 100_000 == 0:
                rate = done / (time.perf_counter() - started)
                print(f"  loaded {done:,} entries ({rate:,.0f}/s)", flush=True)
    finally:
        await sequencer.close()
        await store.close()
    elapsed = time.perf_counter() - started
    print(f"bulk load: {count:,} entries in {elapsed:.1f} s ({count / elapsed:,.0f} entries/s)")


def start_service(url: str, keys_dir: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port_file = workdir / "lineage.addr"
    log = (workdir / "lineage.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "govmesh.lineage"],
        env={
            **os.environ,
            "GOVMESH_DATABASE_URL": url,
            "GOVMESH_KEYS_DIR": str(keys_dir),
            "GOVMESH_LISTEN": "127.0.0.1:0",
            "GOVMESH_PORT_FILE": str(port_file),
            "GOVMESH_LINEAGE_STATE_FILE": str(workdir / "state" / "lineage.floor"),
            "GOVMESH_LOG_LEVEL": "WARNING",
            "GOVMESH_LOG_FORMAT": "text",
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while not port_file.is_file():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"lineage did not start:\n{(workdir / 'lineage.log').read_text()}")
        time.sleep(0.05)
    return process, port_file.read_text().strip()


async def throughput(address: str, *, clients: int, batch: int, seconds: float) -> None:
    done = 0
    stop_at = time.perf_counter() + seconds

    async def client(n: int) -> None:
        nonlocal done
        maker = Entries(f"throughput-{n}")
        async with await LineageClient.connect(address, timeout=30) as lineage:
            while time.perf_counter() < stop_at:
                answers = await lineage.append_batch([maker.next() for _ in range(batch)])
                if any(a.error for a in answers):
                    raise SystemExit(f"append refused: {answers[0].error}")
                done += len(answers)

    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    elapsed = time.perf_counter() - started
    print(
        f"throughput: {done / elapsed:,.0f} appends/s sustained over {elapsed:.1f} s "
        f"({done:,} entries, {clients} clients x AppendBatch of {batch})"
    )


async def latency(address: str, *, rate: float, seconds: float, stream: bool) -> None:
    gc.collect()
    gc.freeze()  # as a long-running client would: its start-up objects are never garbage
    channel = open_channel(address)
    batcher: StreamingLineage | BatchingLineage
    if stream:
        batcher = StreamingLineage(channel, max_batch=256, linger_s=0.001)
        how = "AppendStream, batches of <= 256 after <= 1 ms"
    else:
        # The engine's own settings (EngineSettings defaults).
        batcher = BatchingLineage(
            transport=GrpcLineage(channel), max_batch=256, linger_s=0.001, max_in_flight=8
        )
        batcher.start()
        how = "the engine's batcher on AppendStream (<= 256 after <= 1 ms, 8 in flight)"
    maker = Entries(f"latency-engine-{stream}")
    samples: list[float] = []
    failures = 0
    pending: set[asyncio.Task[None]] = set()

    async def one() -> None:
        nonlocal failures
        data, decision_id = maker.next()
        sent = time.perf_counter()
        try:
            await batcher.append(data, decision_id, timeout=5.0)
        except Exception:
            failures += 1
            return
        samples.append(time.perf_counter() - sent)

    total = int(rate * seconds)
    started = time.perf_counter()
    for i in range(total):
        due = started + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one())
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    offered = total / (time.perf_counter() - started)
    await batcher.close()
    await channel.close()
    print(
        f"append-to-receipt at {rate:,.0f}/s offered ({offered:,.0f}/s achieved, "
        f"{failures} failed) via {how}:\n  {_percentiles(samples)}"
    )


async def proofs(address: str, url: str, *, count: int) -> None:
    conn = await asyncpg.connect(libpq_database_url(url))
    try:
        size = int(await conn.fetchval("SELECT size FROM lineage_head"))
        picks = sorted(random.sample(range(size), min(count, size)))
        rows = await conn.fetch(
            "SELECT idx, decision_id FROM lineage_entries WHERE idx = ANY($1::bigint[])", picks
        )
    finally:
        await conn.close()
    ids = [str(r["decision_id"]) for r in rows]
    random.shuffle(ids)
    async with await LineageClient.connect(address, timeout=30) as lineage:
        newest = (await lineage.checkpoint()).tree_size
        for decision_id in ids[:50]:  # warm up
            await lineage.inclusion_proof(decision_id)
        inclusion = []
        for decision_id in ids:
            t = time.perf_counter()
            answer = await lineage.inclusion_proof(decision_id)
            inclusion.append(time.perf_counter() - t)
            assert answer.tree_size >= 1
        consistency = []
        for _ in range(len(ids)):
            first = random.randint(1, newest - 1)  # noqa: S311 - a sample, not a secret
            second = random.randint(first + 1, newest)  # noqa: S311
            t = time.perf_counter()
            await lineage.consistency_proof(first, second)
            consistency.append(time.perf_counter() - t)
    print(f"inclusion proof by decision id at {newest:,} entries: {_percentiles(inclusion)}")
    print(f"consistency proof between random sizes up to {newest:,}: {_percentiles(consistency)}")
    mean = statistics.mean(inclusion) * 1000
    print(f"  (inclusion mean {mean:.2f} ms, including one gRPC round trip each)")


async def _admin(server: str, statement: str) -> None:
    conn = await asyncpg.connect(libpq_database_url(server))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "GOVMESH_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="a Postgres server the bench may create a database on",
    )
    parser.add_argument("--entries", type=int, default=1_000_000, help="bulk-loaded first")
    parser.add_argument("--batch", type=int, default=256, help="entries per AppendBatch")
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=5000.0, help="offered appends/s")
    parser.add_argument("--proofs", type=int, default=2000)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()

    name = f"govmesh_bench_{uuid.uuid4().hex[:10]}"
    url = make_url(libpq_database_url(args.database_url)).set(database=name)
    db_url = url.render_as_string(hide_password=False)
    asyncio.run(_admin(args.database_url, f'CREATE DATABASE "{name}"'))
    process = None
    try:
        upgrade_database(db_url)
        with tempfile.TemporaryDirectory() as tmp:
            setup = write_dev_setup(Path(tmp) / "trust")
            if args.entries:
                asyncio.run(bulk_load(db_url, setup.keys_dir, args.entries))
            process, address = start_service(db_url, setup.keys_dir, Path(tmp))
            asyncio.run(
                throughput(address, clients=args.clients, batch=args.batch, seconds=args.seconds)
            )
            asyncio.run(latency(address, rate=args.rate, seconds=args.seconds, stream=True))
            asyncio.run(latency(address, rate=args.rate, seconds=args.seconds, stream=False))
            if args.entries:
                asyncio.run(proofs(address, db_url, count=args.proofs))
            process.terminate()
            process.wait(30)
    finally:
        if process is not None and process.poll() is None:
            process.kill()
        if not args.keep:
            asyncio.run(_admin(args.database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
