"""Services talk only through their protos, the shared runtime and the artifact formats.

Every `govmesh.*` import in services/ and clients/ is read with ast (function
bodies included) and held to the allowed directions of docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SERVICES = ("govmesh.engine", "govmesh.policy", "govmesh.verification", "govmesh.lineage")
SHARED = ("govmesh.v1", "govmesh.runtime", "govmesh.artifacts")

#: Which top-level govmesh packages each package may import (besides itself).
ALLOWED: dict[str, frozenset[str]] = {
    "govmesh.v1": frozenset(),
    "govmesh.runtime": frozenset({"govmesh.v1"}),
    # ConfigurationError (govmesh.runtime.errors) is the one start-up error type.
    "govmesh.artifacts": frozenset({"govmesh.v1", "govmesh.runtime"}),
    **{service: frozenset(SHARED) for service in SERVICES},
    # The client's errors share the one root, GovmeshError (govmesh.runtime.errors).
    "govmesh.client": frozenset({"govmesh.v1", "govmesh.runtime", "govmesh.artifacts"}),
    # The fault-injection harness drives the mesh from outside, as a caller
    # and an operator do: through the client, the development setup and
    # the protos, never through a service's internals.
    "govmesh.faults": frozenset({*SHARED, "govmesh.client", "govmesh.cli"}),
    # The benchmark, too, drives the mesh from outside; it reads the engine's
    # settings for the bounds it measures against, and its transport floor
    # sends through the engine's own peer transports and batcher.
    "govmesh.bench": frozenset(
        {*SHARED, "govmesh.client", "govmesh.cli", "govmesh.faults", "govmesh.engine"}
    ),
    "govmesh.cli": frozenset(
        {*SHARED, *SERVICES, "govmesh.client", "govmesh.faults", "govmesh.bench"}
    ),
}


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _sources() -> list[Path]:
    files = [*(ROOT / "services" / "govmesh").rglob("*.py")]
    files += [*(ROOT / "clients" / "govmesh").rglob("*.py")]
    return sorted(files)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from govmesh import engine` names the package in the alias.
            if node.module == "govmesh":
                found.update(f"govmesh.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("govmesh.")}


def _owner(path: Path) -> str:
    parts = path.relative_to(ROOT).parts  # ("services", "govmesh", "engine", ...)
    return f"govmesh.{parts[2]}" if len(parts) > 3 else "govmesh"


def _crossings() -> set[tuple[str, str]]:
    crossings = set()
    for path in _sources():
        owner = _owner(path)
        allowed = ALLOWED.get(owner)
        assert allowed is not None, f"{path} is in no package the architecture names"
        for name in _imports(path):
            target = _package(name)
            if target != owner and target not in allowed:
                crossings.add((str(path.relative_to(ROOT)), name))
    return crossings


def test_every_package_is_named() -> None:
    packages = {_owner(path) for path in _sources()} - {"govmesh"}
    assert packages == set(ALLOWED) - {"govmesh.v1"}


def test_imports_follow_the_allowed_directions() -> None:
    assert _crossings() == set()


def test_the_check_sees_a_crossing(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from govmesh.verification.core import Verifier\n")
    assert _imports(source) == {"govmesh.verification.core"}
    assert "govmesh.verification" not in ALLOWED["govmesh.engine"]
    assert "govmesh.engine" not in ALLOWED["govmesh.client"]
