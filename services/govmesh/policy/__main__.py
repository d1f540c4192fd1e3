"""`python -m govmesh.policy`."""

from govmesh.policy.server import main

raise SystemExit(main())
