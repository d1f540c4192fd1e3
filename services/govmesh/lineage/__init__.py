"""The lineage service: the append-only, tamper-evident decision log."""
