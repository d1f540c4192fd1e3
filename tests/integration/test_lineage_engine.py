"""Decisions of the real engine, proven offline with the lineage CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider

from govmesh.cli.devsetup import DEV_SUBJECT
from govmesh.client import EngineClient
from govmesh.lineage import merkle
from govmesh.lineage.client import LineageClient
from govmesh.lineage.notes import VerifierKey, open_checkpoint
from tests.integration.conftest import Mesh


def govmesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "govmesh.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_engine_decisions_carry_checkpoints_and_prove_offline(
    start_mesh: Callable[..., Mesh], tmp_path: Path
) -> None:
    mesh = start_mesh()
    key = VerifierKey.parse(mesh.setup.lineage_vkey.read_text())
    async with await EngineClient.connect(mesh.engine.address, timeout=10) as engine:
        allowed = await engine.authorize(**mesh.request())
        denied = await engine.authorize(**mesh.request(context={"amount": 5000}))
    assert allowed.decision == "ALLOW" and denied.decision == "DENY"

    async with await LineageClient.connect(mesh.lineage.address) as lineage:
        for result in (allowed, denied):
            assert result.lineage is not None
            signed = open_checkpoint(result.lineage.checkpoint, key)
            assert signed.size == result.lineage.tree_size > result.lineage.index
            proof = await lineage.inclusion_proof(result.decision_id, tree_size=signed.size)
            merkle.verify_inclusion(
                result.lineage.index,
                signed.size,
                result.lineage.leaf_hash,
                list(proof.hashes),
                signed.root,
            )

    lineage_at = ("--target", mesh.lineage.address)
    listed = govmesh("lineage", "query", "--subject", DEV_SUBJECT, *lineage_at)
    lines = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [line["decision_id"] for line in lines] == [allowed.decision_id, denied.decision_id]
    assert lines[1]["entry"]["reason"] == "POLICY_MISMATCH"
    tailed = govmesh("lineage", "tail", "--count", "2", *lineage_at)
    assert [json.loads(line)["index"] for line in tailed.stdout.splitlines()] == [0, 1]

    bundle = tmp_path / "allow.proof.json"
    exported = govmesh("lineage", "proof", allowed.decision_id, "-o", str(bundle), *lineage_at)
    assert exported.returncode == 0, exported.stderr

    # Offline: nothing runs any more.
    for process in (mesh.engine, mesh.lineage, mesh.policy, mesh.verification):
        process.terminate()
    checked = govmesh("lineage", "check-proof", str(bundle), "--vkey", str(mesh.setup.lineage_vkey))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"OK: decision {allowed.decision_id} (ALLOW) is entry" in checked.stdout
    tampered = tmp_path / "tampered.json"
    doc = json.loads(bundle.read_text())
    doc["index"] += 1
    tampered.write_text(json.dumps(doc))
    refused = govmesh(
        "lineage", "check-proof", str(tampered), "--vkey", str(mesh.setup.lineage_vkey)
    )
    assert refused.returncode == 1 and refused.stdout.startswith("INVALID")

    audited = govmesh(
        "lineage",
        "verify",
        "--database-url",
        mesh.database_url,
        "--vkey",
        str(mesh.setup.lineage_vkey),
    )
    assert audited.returncode == 0, audited.stdout
    assert "2 decisions, counter contiguous from 0" in audited.stdout


async def test_decisions_name_their_trace_and_the_cli_tail_follows_them_live(
    start_mesh: Callable[..., Mesh],
) -> None:
    mesh = start_mesh()
    lineage_at = ("--target", mesh.lineage.address)
    # Following from index 0 before anything is logged.
    tail = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "govmesh.cli.main", "lineage", "tail", "--count", "2"),
        *lineage_at,
        stdout=asyncio.subprocess.PIPE,
    )
    tracer = TracerProvider().get_tracer("agent-runtime")
    assert tail.stdout is not None
    try:
        async with await EngineClient.connect(mesh.engine.address, timeout=10) as engine:
            with tracer.start_as_current_span("agent-step") as step:
                traced = await engine.authorize(**mesh.request())
            first = await asyncio.wait_for(tail.stdout.readline(), 30)
            # The tail is running and waiting now: the next entry reaches it live.
            untraced = await engine.authorize(**mesh.request())
            second = await asyncio.wait_for(tail.stdout.readline(), 30)
        assert await asyncio.wait_for(tail.wait(), 30) == 0
    finally:
        if tail.returncode is None:
            tail.kill()
    assert traced.decision == untraced.decision == "ALLOW"
    assert [json.loads(line)["decision_id"] for line in (first, second)] == [
        traced.decision_id,
        untraced.decision_id,
    ]

    async with await LineageClient.connect(mesh.lineage.address) as lineage:
        entries = [
            json.loads((await lineage.entry(r.decision_id)).entry) for r in (traced, untraced)
        ]
    caller = step.get_span_context()
    # The caller's trace continues in the engine, under a span of the engine's own.
    assert entries[0]["trace_id"] == f"{caller.trace_id:032x}"
    assert len(entries[0]["span_id"]) == 16 and entries[0]["span_id"] != f"{caller.span_id:016x}"
    # A caller without a trace gets one started by the engine.
    assert len(entries[1]["trace_id"]) == 32 and entries[1]["trace_id"] != entries[0]["trace_id"]
    assert int(entries[1]["span_id"], 16) != 0

    found = govmesh("lineage", "query", "--trace-id", entries[0]["trace_id"], *lineage_at)
    assert [json.loads(line)["decision_id"] for line in found.stdout.splitlines()] == [
        traced.decision_id
    ]


async def test_a_trusted_mandate_for_a_subject_lineage_cannot_store_is_denied_and_logged(
    start_mesh: Callable[..., Mesh],
) -> None:
    # The dev issuer signs, inside its subject namespace, a sub holding a NUL:
    # verification refuses it, and the deny is recorded at once, not spooled.
    mesh = start_mesh()
    mandate = mesh.mandate(subject=DEV_SUBJECT + "\x00x")
    async with await EngineClient.connect(mesh.engine.address, timeout=10) as engine:
        denied = await engine.authorize(**mesh.request(mandate=mandate))
        allowed = await engine.authorize(**mesh.request())

    assert denied.decision == "DENY"
    assert denied.reason == "INVALID_VERIFICATION"
    assert "signature" in denied.failed_checks
    assert denied.lineage is not None and allowed.lineage is not None
    assert allowed.decision == "ALLOW"
    async with await LineageClient.connect(mesh.lineage.address) as lineage:
        logged = await lineage.entry(denied.decision_id)
    entry = json.loads(logged.entry)
    assert entry["decision"] == "DENY" and entry["subject"] is None
    assert entry["claimed_subject"] == DEV_SUBJECT + "\x00x"

    audited = govmesh(
        "lineage",
        "verify",
        "--database-url",
        mesh.database_url,
        "--vkey",
        str(mesh.setup.lineage_vkey),
    )
    assert audited.returncode == 0, audited.stdout
    assert "2 decisions, counter contiguous from 0" in audited.stdout
