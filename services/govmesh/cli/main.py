"""`govmesh`: run the mesh, its services, and the tools around them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from govmesh.cli import artifacts, bench, db, keys, lineage, policy, serve, up
from govmesh.runtime.errors import ConfigurationError

COMMANDS = (keys, up, serve, db, artifacts, policy, lineage, bench)


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree; each module adds its own commands."""
    parser = argparse.ArgumentParser(
        prog="govmesh", description="Fail-closed execution control plane."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; exit 2 with a message for unusable settings or files."""
    args = sys.argv[1:] if argv is None else list(argv)
    # `govmesh serve NAME ...` hands the rest of the line to the service itself.
    if len(args) >= 2 and args[0] == "serve" and args[1] in serve.SERVICES:
        return serve.run(args[1], args[2:])
    parsed = build_parser().parse_args(args)
    try:
        result: int = parsed.func(parsed)
    except ConfigurationError as exc:
        print(f"govmesh: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    raise SystemExit(main())
