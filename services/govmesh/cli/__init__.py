"""The `govmesh` command."""
