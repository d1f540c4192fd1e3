"""A caller whose artifacts did not verify learns only which verification checks failed.

Over the real mesh: engine, verification, policy and lineage processes on a
real Postgres.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from govmesh.client import EngineClient
from govmesh.client.engine import AuthorizationResult
from tests.integration.conftest import Mesh
from tests.support.database import fetch


def _shape(result: AuthorizationResult) -> tuple[object, ...]:
    return (result.decision, result.reason, result.failed_checks, result.message)


async def _entry(mesh: Mesh, decision_id: str) -> dict[str, Any]:
    rows = await fetch(
        mesh.database_url,
        "SELECT entry FROM lineage_entries WHERE decision_id = $1::uuid",
        decision_id,
    )
    assert len(rows) == 1
    entry: dict[str, Any] = json.loads(rows[0]["entry"])
    return entry


async def test_an_unverified_callers_deny_says_nothing_of_policy(
    start_mesh: Callable[..., Mesh],
) -> None:
    mesh = start_mesh()
    # A well-formed mandate with a signature that does not verify, and a
    # genuine proof for it: everything policy needs, nothing verified.
    forged = mesh.mandate()[:-8] + "AAAAAAAA"
    cases = {
        "permitted": mesh.request(context={"amount": 250}, mandate=forged),
        "over the cap": mesh.request(context={"amount": 5000}, mandate=forged),
        "frozen": mesh.request(
            resource="account:acme/frozen", context={"amount": 250}, mandate=forged
        ),
        "erroring": mesh.request(context={"amount": 250, "__entity": "x"}, mandate=forged),
    }
    async with await EngineClient.connect(mesh.engine.address, timeout=10) as engine:
        results = {name: await engine.authorize(**r) for name, r in cases.items()}

    # The same answer whatever policy would have said.
    shapes = {name: _shape(result) for name, result in results.items()}
    assert len(set(shapes.values())) == 1, shapes
    answer = results["permitted"]
    assert answer.reason == "INVALID_VERIFICATION"
    assert "policy" not in answer.failed_checks
    for word in ("policy", "forbid", "permit", "frozen", "evaluation", "__entity"):
        assert word not in answer.message

    # The log holds what the answer withheld.
    entries = {name: await _entry(mesh, r.decision_id) for name, r in results.items()}
    assert entries["permitted"]["policy"]["decision"] == "ALLOW"
    assert "policy" not in entries["permitted"]["failed_checks"]
    for name in ("over the cap", "frozen", "erroring"):
        assert entries[name]["policy"]["decision"] == "DENY"
        assert "policy" in entries[name]["failed_checks"]
    assert entries["frozen"]["policy"]["determining"]
    assert entries["erroring"]["policy"]["errors"]
    assert f"decision {results['frozen'].decision_id}: withheld" in mesh.engine.log()


async def test_a_verified_caller_still_learns_what_policy_decided(
    start_mesh: Callable[..., Mesh],
) -> None:
    mesh = start_mesh()
    async with await EngineClient.connect(mesh.engine.address, timeout=10) as engine:
        result = await engine.authorize(
            **mesh.request(resource="account:acme/frozen", context={"amount": 250})
        )

    assert result.reason == "POLICY_MISMATCH"
    assert result.failed_checks == ("policy",)
    assert "forbidden by" in result.message
