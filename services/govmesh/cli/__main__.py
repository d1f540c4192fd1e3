"""`python -m govmesh.cli`: the `govmesh` command without the console script."""

from govmesh.cli.main import main

raise SystemExit(main())
