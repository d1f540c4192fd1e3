"""`govmesh bench [--json FILE]`, `govmesh bench --faults`: the mesh under load, and under faults.

Without --faults: the capacity benchmark (govmesh.bench.capacity). It starts
the mesh on a Postgres of its own and prints, in one run, decisions/s against
a no-op gRPC echo, latency percentiles, valid requests not ALLOWed by reason,
CPU per decision and peak memory per process, for closed loops of 1 to 256
callers, open loops, and each peer stopped under load. With --floor, each
closed loop is also run against the transport floor (govmesh.bench.floor).

With --faults: starts the four services as separate processes on free ports, with a private
Postgres (the embedded one) in a temporary folder, drives a paced load of
valid and invalid requests, and with `--faults` injects every fault of
`govmesh.faults.suite` in turn, round after round until the duration has
passed: SIGKILL and SIGSTOP of each peer, each peer answering just past its
deadline, a Postgres restart, a full spool disk, an engine restart with
denies in its spool. Then every answer is reconciled with the log and
`govmesh lineage verify` runs. Prints the counts; exit 0 only when nothing
was lost and every check held.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from govmesh.runtime.logs import configure_logging


def _run(args: argparse.Namespace) -> int:
    if args.faults:
        return _soak(args)
    return _capacity(args)


def _counts(text: str) -> list[int]:
    try:
        counts = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of caller counts: {text!r}") from None
    if any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError(f"caller counts are at least 1: {text!r}")
    return counts


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"at least 1, not {value}")
    return value


def _peers(text: str) -> list[str]:
    from govmesh.bench.capacity import PEERS

    peers = [p.strip() for p in text.split(",") if p.strip()]
    unknown = set(peers) - set(PEERS)
    if unknown:
        raise argparse.ArgumentTypeError(f"no such peer: {', '.join(sorted(unknown))}")
    return peers


def _capacity(args: argparse.Namespace) -> int:
    from govmesh.bench.capacity import Options, run

    settings = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("GOVMESH_"):
            raise SystemExit(f"--set takes GOVMESH_NAME=VALUE, not {item!r}")
        settings[name] = value
    phases = run(
        Options(
            callers=args.callers,
            requests=args.requests,
            rate=300.0 if args.rate is None else args.rate,
            capacity_share=args.capacity_share,
            seconds=args.seconds,
            stop=args.stop,
            stop_rate=args.stop_rate,
            stop_seconds=args.stop_seconds,
            deadline_s=args.deadline,
            deny_every=args.deny_every,
            settings=settings,
            database_url=args.database_url,
            metrics=args.metrics,
            engines=args.engines,
            connections=args.connections or (1 if args.engines == 1 else 8),
            floor=args.floor,
        )
    )
    if args.json:
        args.json.write_text(json.dumps([p.figures() for p in phases], indent=2) + "\n")
        print(f"figures written to {args.json}")
    # A deny that was ALLOWed is a security bug, whatever the load.
    return 1 if any(k.endswith(": ALLOWED") for p in phases for k in p.wrong_denies) else 0


def _soak(args: argparse.Namespace) -> int:
    from govmesh.faults.mesh import FaultMesh
    from govmesh.faults.suite import all_faults, run_suite

    configure_logging(service="bench", level="WARNING", fmt="text")
    # Each fault and its reconciliation, as the soak goes.
    logging.getLogger("govmesh.faults").setLevel(logging.INFO)

    async def bench(workdir: Path) -> int:
        mesh = FaultMesh.create(workdir)
        try:
            await mesh.start()
            print(f"mesh up: engine at {mesh.engine_target}; logs in {workdir / 'logs'}")
            faults = all_faults() if args.faults else []
            if faults and not mesh.spool.mounted:
                print("no tmpfs could be mounted for the spool (needs root): no full-disk fault")
                faults = [(name, fault) for name, fault in faults if name != "spool disk full"]
            report = await run_suite(
                mesh,
                faults=faults,
                duration_s=args.duration,
                rate=40.0 if args.rate is None else args.rate,
                hold_s=args.hold,
            )
        finally:
            await mesh.close()
        print(report.summary())
        for problem in report.problems:
            print(f"FAILED: {problem}")
        return 0 if not report.problems and report.total.lost == 0 else 1

    if args.workdir:
        return asyncio.run(bench(Path(args.workdir)))
    with tempfile.TemporaryDirectory(prefix="govmesh-bench-") as tmp:
        return asyncio.run(bench(Path(tmp)))


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "bench",
        help="measure the mesh's capacity and cost; with --faults, soak it under faults",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument(
        "--rate",
        type=float,
        help="open-loop requests per second (300; 0: none); with --faults, the soak's rate (40)",
    )
    load = parser.add_argument_group("capacity benchmark (without --faults)")
    load.add_argument(
        "--callers", type=_counts, default=[1, 8, 64, 256], help="closed loops (1,8,64,256)"
    )
    load.add_argument("--requests", type=int, default=3000, help="per closed loop (3000)")
    load.add_argument(
        "--capacity-share",
        type=float,
        default=0.8,
        help="an open loop at this share of the best closed-loop rate (0.8; 0: none)",
    )
    load.add_argument("--seconds", type=float, default=10.0, help="per open loop (10)")
    load.add_argument(
        "--stop",
        type=_peers,
        default=["verification", "policy", "lineage"],
        help="peers to SIGSTOP under load, one at a time ('' for none)",
    )
    load.add_argument("--stop-rate", type=float, default=100.0, help="load while stopped (100/s)")
    load.add_argument("--stop-seconds", type=float, default=3.0, help="how long each stop lasts")
    load.add_argument("--deadline", type=float, default=10.0, help="client deadline, s (10)")
    load.add_argument(
        "--deny-every", type=int, default=10, help="every n-th request a deny (10; 0: none)"
    )
    load.add_argument(
        "--set", action="append", default=[], metavar="GOVMESH_NAME=VALUE", help="mesh setting"
    )
    load.add_argument(
        "--database-url",
        default=os.environ.get("GOVMESH_DATABASE_URL"),
        help="a Postgres server for a throwaway database (default: an embedded one)",
    )
    load.add_argument("--metrics", action="store_true", help="serve Prometheus metrics")
    load.add_argument(
        "--engines", type=_at_least_one, default=1, help="engine processes on the port (1)"
    )
    load.add_argument(
        "--connections",
        type=_at_least_one,
        help="client connections the load spreads over (1, or 8 with several engines)",
    )
    load.add_argument(
        "--floor",
        action="store_true",
        help="after each closed loop's echo, drive the transport floor: the mesh's calls"
        " and batched peer messages with no work behind them",
    )
    load.add_argument("--json", type=Path, help="write every figure to this file")
    soak = parser.add_argument_group("fault soak (--faults)")
    soak.add_argument("--faults", action="store_true", help="inject every fault, in rounds")
    soak.add_argument("--duration", type=float, default=300.0, help="seconds to run (default 300)")
    soak.add_argument("--hold", type=float, default=3.0, help="seconds each fault lasts (3)")
    soak.add_argument("--workdir", help="keep logs and state here (default: a temporary folder)")
    parser.set_defaults(func=_run)
