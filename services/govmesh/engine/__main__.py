"""`python -m govmesh.engine`."""

from govmesh.engine.server import main

raise SystemExit(main())
