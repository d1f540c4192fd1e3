"""Where `govmesh up` and the development commands keep their files."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from govmesh.cli.devsetup import DevSetup


def data_dir(given: str | None = None) -> Path:
    """--data-dir, else GOVMESH_DATA_DIR, else the user's data directory."""
    chosen = given or os.environ.get("GOVMESH_DATA_DIR")
    return Path(chosen).expanduser().resolve() if chosen else platformdirs.user_data_path("govmesh")


def dev_setup(data: Path) -> DevSetup:
    """The development trust setup `govmesh up` creates inside its data directory."""
    return DevSetup(data / "dev")


def add_data_dir_argument(parser: object) -> None:
    """--data-dir, shared by the commands that use `govmesh up`'s files."""
    parser.add_argument(  # type: ignore[attr-defined]
        "--data-dir", help="data directory of `govmesh up` (GOVMESH_DATA_DIR)"
    )
