"""Regenerate the checked-in protobuf and gRPC code, or check it for drift.

    python scripts/gen_protos.py          # rewrite protos/govmesh/v1/*_pb2*.py{,i}
    python scripts/gen_protos.py --check  # exit 1 when the checked-in code differs

The proto package is the Python import path (govmesh.v1), so the generated
modules need no import rewriting.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = PROTO_ROOT / "govmesh" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _generate(out: Path) -> list[Path]:
    protos = sorted(PACKAGE_DIR.glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *(str(p.relative_to(PROTO_ROOT)) for p in protos),
    ]
    # protoc finds its plugins (protoc-gen-mypy) on PATH: use this environment's.
    scripts = str(Path(sys.executable).parent)
    os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out / "govmesh" / "v1").iterdir())


def _checked_in() -> list[Path]:
    return sorted(p for p in PACKAGE_DIR.iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = _generate(Path(tmp))
        if args.check:
            fresh_names = {p.name for p in fresh}
            old_names = {p.name for p in _checked_in()}
            drift = sorted(fresh_names ^ old_names)
            drift += sorted(
                p.name
                for p in fresh
                if p.name in old_names and not filecmp.cmp(p, PACKAGE_DIR / p.name, shallow=False)
            )
            if drift:
                print("generated code differs from protos/: " + ", ".join(drift), file=sys.stderr)
                print("run: python scripts/gen_protos.py", file=sys.stderr)
                return 1
            return 0
        for stale in _checked_in():
            stale.unlink()
        for path in fresh:
            shutil.copy2(path, PACKAGE_DIR / path.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
