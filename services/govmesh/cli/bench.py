"""`govmesh bench [--faults] [--duration S]`: the mesh under load, and under faults.

Starts the four services as separate processes on free ports, with a private
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
import logging
import tempfile
from pathlib import Path
from typing import Any

from govmesh.runtime.logs import configure_logging


def _run(args: argparse.Namespace) -> int:
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
                rate=args.rate,
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
        help="drive the mesh with load (and faults); reconcile every answer with the log",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument("--faults", action="store_true", help="inject every fault, in rounds")
    parser.add_argument(
        "--duration", type=float, default=300.0, help="seconds to run (default 300)"
    )
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second (40)")
    parser.add_argument("--hold", type=float, default=3.0, help="seconds each fault lasts (3)")
    parser.add_argument("--workdir", help="keep logs and state here (default: a temporary folder)")
    parser.set_defaults(func=_run)
