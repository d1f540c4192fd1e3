"""Fault injection under load: the machinery of the fault suite and `govmesh bench --faults`.

`mesh` runs the four services as real processes (and a private Postgres),
`proxy` sits between the engine and each peer, `load` drives valid and
invalid requests, `reconcile` checks what callers saw against the log, and
`suite` injects each fault in turn. Nothing here is imported by a service.
"""
