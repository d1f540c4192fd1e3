"""Fault injection under load, end to end: real processes, a private Postgres.

One mesh runs every fault of `govmesh.faults.suite` in turn while a paced
load of valid and invalid requests runs (the same code as `govmesh bench
--faults`). After each fault, and once more at the end, every answer is
reconciled with the log: no ALLOW without its committed entry, every DENY
logged exactly once, no wait past the engine's bound, ALLOWs back on their
own, and `govmesh lineage verify` passes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from govmesh.faults.mesh import FaultMesh
from govmesh.faults.suite import all_faults, run_suite

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


async def test_every_fault_under_load_loses_nothing(tmp_path: Path) -> None:
    faults = all_faults()
    if os.geteuid() != 0:
        # A full spool disk is a tmpfs of its own, which only root may mount
        # (CI runs as root); the unit tests of the spool cover the rest.
        faults = [(name, fault) for name, fault in faults if name != "spool disk full"]
    mesh = FaultMesh.create(tmp_path / "mesh")
    try:
        await mesh.start()
        report = await run_suite(mesh, faults=faults, hold_s=2.5, rate=40.0)
    finally:
        await mesh.close()
    print(report.summary())

    assert [f.name for f in report.faults] == [name for name, _ in faults]
    assert report.problems == []
    # Each fault was felt (some valid request was refused while it lasted), and
    # the mesh came back to ALLOW on its own after each.
    for fault in report.faults:
        assert fault.felt > 0, fault.name
        assert fault.resumed_after_s is not None, fault.name
    total = report.total
    assert total.lost == 0
    assert total.reconciled == total.allows + total.denies > 0
    assert total.allows > 0 and total.denies > 0
    assert report.audit_code == 0, report.audit_output
