"""`python -m govmesh.lineage`."""

from govmesh.lineage.server import main

raise SystemExit(main())
