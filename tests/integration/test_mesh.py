"""The decision path end to end, over real processes and a real Postgres."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from govmesh.client import EngineClient

from tests.integration.conftest import Mesh
from tests.support.database import fetch


async def test_allow_end_to_end_is_committed_to_lineage(start_mesh: Callable[..., Mesh]) -> None:
    mesh = start_mesh()
    async with await EngineClient.connect(mesh.engine.address, timeout=10) as engine:
        result = await engine.authorize(**mesh.request())

    assert result.decision == "ALLOW", result
    assert result.allowed
    assert result.grant.count(".") == 2
    assert result.lineage is not None
    rows = await fetch(
        mesh.database_url,
        "SELECT idx, entry, leaf_hash FROM lineage_entries WHERE decision_id = $1::uuid",
        result.decision_id,
    )
    assert len(rows) == 1
    entry = json.loads(rows[0]["entry"])
    assert entry["decision"] == "ALLOW"
    assert entry["request_digest"] == result.request_digest
    assert rows[0]["idx"] == result.lineage.index
    assert bytes(rows[0]["leaf_hash"]) == result.lineage.leaf_hash


async def test_policy_deny_is_recorded_with_its_reason(start_mesh: Callable[..., Mesh]) -> None:
    mesh = start_mesh()
    async with await EngineClient.connect(mesh.engine.address, timeout=10) as engine:
        result = await engine.authorize(**mesh.request(context={"amount": 5000}))

    assert result.decision == "DENY"
    assert result.reason == "POLICY_MISMATCH"
    assert result.failed_checks == ("policy",)
    rows = await fetch(
        mesh.database_url,
        "SELECT entry FROM lineage_entries WHERE decision_id = $1::uuid",
        result.decision_id,
    )
    assert json.loads(rows[0]["entry"])["reason"] == "POLICY_MISMATCH"
    _ = time
