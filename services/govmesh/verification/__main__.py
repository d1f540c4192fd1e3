"""`python -m govmesh.verification`."""

from govmesh.verification.server import main

raise SystemExit(main())
