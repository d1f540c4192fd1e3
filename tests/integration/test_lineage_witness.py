"""`govmesh witness`: cosign checkpoints that only grow, refuse anything else."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from govmesh.cli.devsetup import DevSetup
from govmesh.lineage import merkle
from govmesh.lineage.auditor import audit
from govmesh.lineage.client import LineageClient, LineageError
from govmesh.lineage.keys import DEFAULT_ORIGIN, load_log_signer
from govmesh.lineage.notes import Checkpoint, Cosigner, VerifierKey, parse_note
from govmesh.lineage.sources import DatabaseSource
from govmesh.runtime.db import libpq_database_url
from tests.integration.test_lineage_service import decision, log_key
from tests.support.processes import ServiceProcess

NAME = "witness.test/w1"


def govmesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "govmesh.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@dataclass
class Setup:
    lineage: ServiceProcess
    setup: DevSetup
    database_url: str
    key_file: Path
    state: Path
    vkey: VerifierKey
    counter: int = 0

    def run_once(self) -> subprocess.CompletedProcess[str]:
        return govmesh(
            "witness",
            "run",
            "--once",
            "--key",
            str(self.key_file),
            "--log-vkey",
            str(self.setup.lineage_vkey),
            "--state",
            str(self.state),
            "--lineage",
            self.lineage.address,
        )


@pytest.fixture
def witnessed(
    services: Callable[..., ServiceProcess],
    database_url: str,
    dev_setup: DevSetup,
    tmp_path: Path,
) -> Setup:
    key_file = tmp_path / "witness.jwk.json"
    made = govmesh("witness", "keygen", str(key_file), "--name", NAME)
    assert made.returncode == 0, made.stderr
    vkey = VerifierKey.parse(made.stdout.strip())
    lineage = services(
        "lineage",
        {
            "GOVMESH_DATABASE_URL": database_url,
            "GOVMESH_KEYS_DIR": str(dev_setup.keys_dir),
            "GOVMESH_LINEAGE_WITNESSES": vkey.encode(),
        },
    )
    return Setup(lineage, dev_setup, database_url, key_file, tmp_path / "state.json", vkey)


async def append(setup: Setup, count: int) -> int:
    """Append `count` decisions of one engine, its counter running on."""
    async with await LineageClient.connect(setup.lineage.address) as client:
        answers = await client.append_batch([decision(setup.counter + i) for i in range(count)])
    setup.counter += count
    return answers[-1].receipt.tree_size


async def test_the_witness_cosigns_each_new_checkpoint_and_the_auditor_reports_it(
    witnessed: Setup,
) -> None:
    size = await append(witnessed, 3)
    first = witnessed.run_once()
    assert first.returncode == 0, first.stderr
    assert f"cosigned checkpoint of size {size}" in first.stdout
    assert witnessed.run_once().stdout == ""  # nothing new: nothing signed again
    bigger = await append(witnessed, 5)
    assert f"size {bigger}" in witnessed.run_once().stdout

    async with await LineageClient.connect(witnessed.lineage.address) as client:
        latest = await client.checkpoint(witnessed=True)
    note = parse_note(latest.checkpoint)
    signature = note.verified_by(witnessed.vkey)
    assert signature is not None and abs(signature.cosignature_time - time.time()) < 600  # type: ignore[operator]
    assert note.verified_by(log_key(witnessed.setup)) is not None

    source = await DatabaseSource.connect(witnessed.database_url)
    try:
        report = await audit(source, log_key=log_key(witnessed.setup), witnesses=[witnessed.vkey])
    finally:
        await source.close()
    assert report.ok, report.findings
    assert report.witnesses[0].cosigned == [size, bigger]
    result = govmesh(
        "lineage",
        "verify",
        "--database-url",
        witnessed.database_url,
        "--vkey",
        str(witnessed.setup.lineage_vkey),
        "--witness",
        witnessed.vkey.encode(),
    )
    assert f"witness {NAME}: cosigned 2 checkpoints, newest witnessed size {bigger}" in (
        result.stdout
    )


async def test_the_witness_process_keeps_up_with_the_log(witnessed: Setup) -> None:
    process = await asyncio.create_subprocess_exec(
        *[
            sys.executable,
            "-m",
            "govmesh.cli.main",
            "witness",
            "run",
            "--interval",
            "0.1",
            "--key",
            str(witnessed.key_file),
            "--log-vkey",
            str(witnessed.setup.lineage_vkey),
            "--state",
            str(witnessed.state),
            "--lineage",
            witnessed.lineage.address,
        ],
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with await LineageClient.connect(witnessed.lineage.address) as client:
            for _ in range(3):
                size = await append(witnessed, 4)
                deadline = time.monotonic() + 20
                while True:
                    try:
                        seen = (await client.checkpoint(witnessed=True)).tree_size
                    except LineageError:
                        seen = 0
                    if seen == size:
                        break
                    assert time.monotonic() < deadline, f"witness stuck at {seen}, log at {size}"
                    await asyncio.sleep(0.1)
        assert json.loads(witnessed.state.read_text())["size"] == size
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)


async def test_the_witness_refuses_a_fork_and_a_rollback(witnessed: Setup) -> None:
    await append(witnessed, 4)
    assert witnessed.run_once().returncode == 0
    state = json.loads(witnessed.state.read_text())
    # The witness remembers another tree of the same size: the log forked.
    witnessed.state.write_text(json.dumps({**state, "root": "A" * 43 + "="}))
    refused = witnessed.run_once()
    assert refused.returncode == 1 and "two different trees" in refused.stderr
    # The witness has seen a larger tree than the log now shows: a rollback.
    witnessed.state.write_text(json.dumps({**state, "size": state["size"] + 10}))
    refused = witnessed.run_once()
    assert refused.returncode == 1 and "after this witness cosigned" in refused.stderr


async def test_the_witness_refuses_a_fork_even_when_the_log_key_signed_it(
    witnessed: Setup,
) -> None:
    await append(witnessed, 4)
    assert witnessed.run_once().returncode == 0
    # Whoever holds the log key rewrites entry 1, appends entry 4 and signs the
    # forked tree of size 5 as the newest checkpoint.
    signer = load_log_signer(witnessed.setup.keys_dir, DEFAULT_ORIGIN)
    conn = await asyncpg.connect(libpq_database_url(witnessed.database_url))
    try:
        await conn.execute(
            "ALTER TABLE lineage_entries DISABLE TRIGGER lineage_entries_append_only"
        )
        forged, _ = decision(1, decision="ALLOW")
        extra, extra_id = decision(4)
        await conn.execute("UPDATE lineage_entries SET entry = $1 WHERE idx = 1", forged)
        await conn.execute(
            "INSERT INTO lineage_entries (idx, decision_id, entry, leaf_hash, nodes, logged_at) "
            "VALUES (4, $1, $2, $3, '', now())",
            uuid.UUID(extra_id),
            extra,
            merkle.leaf_hash(extra),
        )
        frontier = merkle.Frontier()
        for row in await conn.fetch("SELECT idx, entry FROM lineage_entries ORDER BY idx"):
            leaf = merkle.leaf_hash(bytes(row["entry"]))
            await conn.execute(
                "UPDATE lineage_entries SET leaf_hash = $2, nodes = $3 WHERE idx = $1",
                row["idx"],
                leaf,
                b"".join(frontier.append(leaf)),
            )
        root = frontier.root()
        await conn.execute(
            "INSERT INTO lineage_checkpoints (tree_size, root_hash, note) VALUES (5, $1, $2)",
            root,
            signer.sign(Checkpoint(DEFAULT_ORIGIN, 5, root).text()),
        )
        await conn.execute("UPDATE lineage_head SET size = 5, root_hash = $1", root)
    finally:
        await conn.close()
    refused = witnessed.run_once()
    assert refused.returncode == 1 and "not proven consistent" in refused.stderr
    assert json.loads(witnessed.state.read_text())["size"] == 4
    async with await LineageClient.connect(witnessed.lineage.address) as client:
        assert (await client.checkpoint(witnessed=True)).tree_size == 4


async def test_the_log_stores_only_valid_cosignatures_of_its_witnesses(witnessed: Setup) -> None:
    await append(witnessed, 2)
    async with await LineageClient.connect(witnessed.lineage.address) as client:
        note = (await client.checkpoint()).checkpoint
        text = parse_note(note).text
        stranger = Cosigner("stranger.test/w", Ed25519PrivateKey.generate())
        with pytest.raises(LineageError) as raised:
            await client.add_cosignature(note + stranger.signature_line(text, 1))
        assert raised.value.code == grpc.StatusCode.PERMISSION_DENIED
        impostor = Cosigner(NAME, Ed25519PrivateKey.generate())
        line = impostor.signature_line(text, 1)
        forged = line.replace(
            line.split(" ")[-1].strip(),
            __import__("base64")
            .b64encode(
                witnessed.vkey.key_id + parse_note(text + "\n" + line).signatures[0].signature
            )
            .decode(),
        )
        with pytest.raises(LineageError) as raised:
            await client.add_cosignature(note + forged)
        assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
        other_text = text.replace("\n2\n", "\n1\n")
        with pytest.raises(LineageError) as raised:
            await client.add_cosignature(other_text + "\n" + forged)
        assert raised.value.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
