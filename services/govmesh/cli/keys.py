"""`govmesh keys init DIR`: a complete development trust setup."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from govmesh.cli.devsetup import write_dev_setup


def _init(args: argparse.Namespace) -> int:
    setup = write_dev_setup(Path(args.dir))
    print(f"wrote a development trust setup to {setup.root}")
    print(f"  GOVMESH_TRUST_FILE={setup.trust_file}")
    print(f"  GOVMESH_KEYS_DIR={setup.keys_dir}")
    print(f"  sample policy: {setup.policies / 'sample.cedar'}")
    return 0


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser("keys", help="signing keys")
    sub = parser.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    init = sub.add_parser("init", help="write keys, JWKS files, a trust TOML and a sample policy")
    init.add_argument("dir", help="directory to create")
    init.set_defaults(func=_init)
