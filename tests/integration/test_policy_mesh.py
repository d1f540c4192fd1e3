"""Policy answers through the engine: determining policies and the shadow reach the lineage."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from govmesh.cli.devsetup import SAMPLE_POLICY
from govmesh.cli.main import main as govmesh
from govmesh.client import EngineClient
from govmesh.policy.bundle import read_bundle_source
from tests.integration.conftest import Mesh
from tests.support.database import fetch


async def entry(mesh: Mesh, decision_id: str) -> dict[str, object]:
    rows = await fetch(
        mesh.database_url,
        "SELECT entry FROM lineage_entries WHERE decision_id = $1::uuid",
        decision_id,
    )
    document: dict[str, object] = json.loads(rows[0]["entry"])
    return document


async def test_shadow_decision_is_recorded_in_lineage_but_not_enforced(
    start_mesh: Callable[..., Mesh], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    mesh = start_mesh()
    strict = tmp_path / "strict"
    strict.mkdir()
    (strict / "policies.cedar").write_text(SAMPLE_POLICY.replace("<= 1000", "<= 100"))
    monkeypatch.setenv("GOVMESH_POLICY_TARGET", mesh.policy.address)
    monkeypatch.setenv("GOVMESH_KEYS_DIR", str(mesh.setup.keys_dir))
    # The CLI runs its own event loop: keep it off this test's loop.
    assert await asyncio.to_thread(govmesh, ["policy", "push", "--shadow", str(strict)]) == 0

    async with await EngineClient.connect(mesh.engine.address, timeout=10) as engine:
        allowed = await engine.authorize(**mesh.request(context={"amount": 500}))
        frozen = await engine.authorize(
            **mesh.request(resource="account:acme/frozen", context={"amount": 5})
        )

    assert allowed.decision == "ALLOW", allowed
    recorded = await entry(mesh, allowed.decision_id)
    sample = read_bundle_source(mesh.setup.policies).version
    assert recorded["policy"] == {
        "bundle": sample,
        "epoch": 2,
        "decision": "ALLOW",
        "determining": ["transfers-up-to-1000"],
    }
    assert recorded["shadow"] == {
        "bundle": read_bundle_source(strict).version,
        "epoch": 2,
        "decision": "DENY",
        "determining": [],
    }

    assert frozen.decision == "DENY"
    assert frozen.reason == "POLICY_MISMATCH"
    assert "frozen-accounts" in frozen.message
