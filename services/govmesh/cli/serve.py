"""`govmesh serve engine|policy|verification|lineage`: one service, as a pod runs it."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

SERVICES = ("engine", "policy", "verification", "lineage")


def run(name: str, argv: list[str]) -> int:
    """Run service `name` with its own flags."""
    module = importlib.import_module(f"govmesh.{name}.server")
    result: int = module.main(argv)
    return result


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "serve",
        help="run one service in the foreground",
        description="Run one govmesh service. Settings come from GOVMESH_* variables; "
        "`govmesh serve NAME --help` lists the flags.",
    )
    parser.add_argument("service", choices=SERVICES)
    parser.set_defaults(func=lambda args: run(args.service, []))
