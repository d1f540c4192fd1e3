"""How tests run the `govmesh` command: the console script of this interpreter's environment.

Tests never rely on PATH: the script installed beside sys.executable is the
one pip made from this checkout's pyproject.
"""

from __future__ import annotations

import sys
from pathlib import Path

GOVMESH = str(Path(sys.executable).parent / "govmesh")
