"""The capacity benchmark by its old name: `python bench/engine.py ARGS` is `govmesh bench ARGS`.

The benchmark itself is installed with govmesh (govmesh.bench.capacity), so
that `govmesh bench` runs it on any machine the mesh runs on.
"""

from __future__ import annotations

import sys

from govmesh.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
