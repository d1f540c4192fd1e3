"""The shared runtime every govmesh service starts on."""
