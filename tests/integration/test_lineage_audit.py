"""The auditor catches what a superuser can do to the log behind the database's back.

Each test builds a log through the real lineage service, switches the
append-only triggers off as a superuser would, changes something, and runs
the auditor against the database (in process and as `govmesh lineage verify`)
and against the service.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from govmesh.cli.devsetup import DevSetup
from govmesh.lineage import merkle
from govmesh.lineage.auditor import AuditReport, audit
from govmesh.lineage.client import LineageClient
from govmesh.lineage.notes import Checkpoint, Cosigner, NoteSigner, VerifierKey, parse_note
from govmesh.lineage.sources import DatabaseSource, ServiceSource
from govmesh.runtime.db import libpq_database_url
from tests.integration.test_lineage_service import decision, log_key
from tests.support.processes import ServiceProcess

SINGLES = 12  # entries 0..11 each get their own checkpoint
BATCH = 8  # entries 12..19 share the checkpoint of size 20


@dataclass
class Log:
    lineage: ServiceProcess
    database_url: str
    setup: DevSetup
    witness: Cosigner
    decision_ids: list[str]

    @property
    def key(self) -> VerifierKey:
        return log_key(self.setup)


@pytest.fixture
async def log(
    services: Callable[..., ServiceProcess], database_url: str, dev_setup: DevSetup
) -> Log:
    witness = Cosigner("witness.test/w1", Ed25519PrivateKey.generate())
    lineage = services(
        "lineage",
        {
            "GOVMESH_DATABASE_URL": database_url,
            "GOVMESH_KEYS_DIR": str(dev_setup.keys_dir),
            "GOVMESH_LINEAGE_WITNESSES": witness.verifier.encode(),
        },
    )
    ids = []
    async with await LineageClient.connect(lineage.address) as client:
        for i in range(SINGLES):
            [answer] = await client.append_batch([decision(i)])
            ids.append(answer.decision_id)
        answers = await client.append_batch([decision(SINGLES + i) for i in range(BATCH)])
        ids += [a.decision_id for a in answers]
        note = answers[0].receipt.checkpoint
        text = parse_note(note).text
        await client.add_cosignature(note + witness.signature_line(text, 1_800_000_000))
    return Log(lineage, database_url, dev_setup, witness, ids)


async def superuser(url: str, *statements: str, args: tuple[object, ...] = ()) -> None:
    conn = await asyncpg.connect(libpq_database_url(url))
    try:
        for statement in statements:
            if "$1" in statement:
                await conn.execute(statement, *args)
            else:
                await conn.execute(statement)
    finally:
        await conn.close()


async def rehash_all(url: str) -> None:
    """A careful tamperer recomputes every leaf hash and stored subtree hash."""
    conn = await asyncpg.connect(libpq_database_url(url))
    try:
        frontier = merkle.Frontier()
        for row in await conn.fetch("SELECT idx, entry FROM lineage_entries ORDER BY idx"):
            leaf = merkle.leaf_hash(bytes(row["entry"]))
            await conn.execute(
                "UPDATE lineage_entries SET leaf_hash = $2, nodes = $3 WHERE idx = $1",
                row["idx"],
                leaf,
                b"".join(frontier.append(leaf)),
            )
    finally:
        await conn.close()


UNLOCK = "ALTER TABLE lineage_entries DISABLE TRIGGER lineage_entries_append_only"
FLIP = (
    "UPDATE lineage_entries SET entry = "
    "convert_to(replace(convert_from(entry, 'UTF8'), '\"DENY\"', '\"ALLOW\"'), 'UTF8') "
    "WHERE idx = {}"
)


async def audit_database(log: Log) -> AuditReport:
    source = await DatabaseSource.connect(log.database_url)
    try:
        return await audit(source, log_key=log.key, witnesses=[log.witness.verifier])
    finally:
        await source.close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "govmesh.cli.main", "lineage", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_an_untouched_log_checks_out_with_its_witness(log: Log) -> None:
    report = await audit_database(log)
    assert report.ok, report.findings
    assert report.entries == report.tree_size == SINGLES + BATCH
    assert report.checkpoints == SINGLES + 1
    assert report.engines == {"engine-a": SINGLES + BATCH}
    assert report.witnesses[0].cosigned == [SINGLES + BATCH]

    result = cli(
        "verify",
        "--database-url",
        log.database_url,
        "--vkey",
        str(log.setup.lineage_vkey),
        "--witness",
        log.witness.verifier.encode(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: every entry" in result.stdout
    assert "witness witness.test/w1: cosigned 1 checkpoints, newest witnessed size 20" in (
        result.stdout
    )
    over_service = cli(
        "verify", "--target", log.lineage.address, "--vkey", str(log.setup.lineage_vkey)
    )
    assert over_service.returncode == 0, over_service.stdout + over_service.stderr
    assert f"consistency proofs verified between checkpoints: {SINGLES}" in over_service.stdout


Tamper = Callable[[Log], Awaitable[None]]


async def changed_field(log: Log) -> None:
    await superuser(log.database_url, UNLOCK, FLIP.format(5))


async def changed_field_and_rehashed(log: Log) -> None:
    await superuser(log.database_url, UNLOCK, FLIP.format(5))
    await rehash_all(log.database_url)


async def changed_field_in_a_batch_and_rehashed(log: Log) -> None:
    await superuser(log.database_url, UNLOCK, FLIP.format(15))
    await rehash_all(log.database_url)


async def deleted_row(log: Log) -> None:
    await superuser(log.database_url, UNLOCK, "DELETE FROM lineage_entries WHERE idx = 7")


async def deleted_tail(log: Log) -> None:
    await superuser(log.database_url, UNLOCK, "DELETE FROM lineage_entries WHERE idx >= 18")


async def reordered_rows(log: Log) -> None:
    await superuser(
        log.database_url,
        UNLOCK,
        "UPDATE lineage_entries SET idx = 1000 WHERE idx = 3",
        "UPDATE lineage_entries SET idx = 3 WHERE idx = 4",
        "UPDATE lineage_entries SET idx = 4 WHERE idx = 1000",
    )


async def reordered_and_rehashed(log: Log) -> None:
    await reordered_rows(log)
    await rehash_all(log.database_url)


async def decision_id_column(log: Log) -> None:
    await superuser(
        log.database_url,
        UNLOCK,
        f"UPDATE lineage_entries SET decision_id = '{uuid.uuid4()}' WHERE idx = 9",
    )


async def subject_column(log: Log) -> None:
    await superuser(
        log.database_url, UNLOCK, "UPDATE lineage_entries SET subject = 'someone' WHERE idx = 2"
    )


@dataclass(frozen=True)
class Case:
    tamper: Tamper
    kind: str
    first: int
    last: int
    stored: int | None = None  # which original decision now sits at `first`, if moved


CASES = {
    "changed field": Case(changed_field, "leaf", 5, 5),
    "changed field, hashes recomputed": Case(changed_field_and_rehashed, "checkpoint", 5, 5),
    "changed field in a batch, hashes recomputed": Case(
        changed_field_in_a_batch_and_rehashed, "checkpoint", 12, 19
    ),
    "deleted row": Case(deleted_row, "missing", 7, 7),
    "deleted last rows": Case(deleted_tail, "truncated", 18, 19),
    "reordered rows": Case(reordered_rows, "node", 3, 3, stored=4),
    "reordered rows, hashes recomputed": Case(reordered_and_rehashed, "checkpoint", 3, 3, stored=4),
    "decision id column changed": Case(decision_id_column, "entry", 9, 9),
    "query column changed": Case(subject_column, "columns", 2, 2),
}


@pytest.mark.parametrize("name", CASES)
async def test_the_auditor_names_the_first_entry_that_differs(log: Log, name: str) -> None:
    case = CASES[name]
    await case.tamper(log)

    report = await audit_database(log)
    assert not report.ok
    first = report.first_difference()
    assert first is not None
    assert (first.kind, first.first, first.last) == (case.kind, case.first, case.last), (
        report.findings
    )
    if case.first == case.last and case.kind not in ("missing", "truncated", "entry"):
        stored = case.first if case.stored is None else case.stored
        assert first.decision_id == log.decision_ids[stored]


async def test_the_cli_names_the_entry_and_fails_against_database_and_service(log: Log) -> None:
    await changed_field_and_rehashed(log)
    vkey = str(log.setup.lineage_vkey)
    for where in (("--database-url", log.database_url), ("--target", log.lineage.address)):
        result = cli("verify", *where, "--vkey", vkey)
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"first difference: entry 5 (decision {log.decision_ids[5]})" in result.stdout


async def test_a_deleted_row_breaks_the_engine_counter_too(log: Log) -> None:
    await deleted_row(log)
    report = await audit_database(log)
    engine = [f for f in report.findings if f.kind == "engine"]
    assert len(engine) == 1 and "counter 7 never logged" in engine[0].message


async def test_a_forged_checkpoint_is_named(log: Log) -> None:
    other = NoteSigner(log.key.name, Ed25519PrivateKey.generate())
    forged = other.sign(Checkpoint(log.key.name, 99, bytes(32)).text())
    await superuser(
        log.database_url,
        "INSERT INTO lineage_checkpoints (tree_size, root_hash, note) VALUES (99, $1, $2)",
        args=(bytes(32), forged),
    )
    report = await audit_database(log)
    first = report.first_difference()
    assert first is not None and first.kind == "checkpoint" and first.tree_size == 99
    assert "not signed by the log" in first.message


async def test_a_rewritten_checkpoint_note_is_named(log: Log) -> None:
    other = NoteSigner(log.key.name, Ed25519PrivateKey.generate())
    await superuser(
        log.database_url,
        "ALTER TABLE lineage_checkpoints DISABLE TRIGGER lineage_checkpoints_append_only",
        "UPDATE lineage_checkpoints SET note = $1 WHERE tree_size = 4",
        args=(other.sign(Checkpoint(log.key.name, 4, bytes(32)).text()),),
    )
    report = await audit_database(log)
    assert any(f.kind == "checkpoint" and f.tree_size == 4 for f in report.findings)
    result = cli("verify", "--target", log.lineage.address, "--vkey", str(log.setup.lineage_vkey))
    assert result.returncode == 1 and "checkpoint stored at size 4" in result.stdout


async def test_a_forged_cosignature_is_named(log: Log) -> None:
    impostor = Cosigner(log.witness.name, Ed25519PrivateKey.generate())
    line = impostor.signature_line("whatever\n", 1)
    key_id = log.witness.verifier.key_id
    # Same witness name and key id as the real witness, signature by another key.
    raw = parse_note("x\n\n" + line).signatures[0]
    forged = line.replace(
        line.split(" ")[-1].strip(),
        __import__("base64").b64encode(key_id + raw.signature).decode(),
    )
    await superuser(
        log.database_url,
        "INSERT INTO lineage_cosignatures (tree_size, witness, key_id, line) "
        "VALUES (10, $1, $2, $3)",
        args=(log.witness.name, key_id, forged),
    )
    report = await audit_database(log)
    assert [f.kind for f in report.findings] == ["cosignature"]
    assert report.witnesses[0].cosigned == [SINGLES + BATCH]


async def test_an_amendment_must_name_a_logged_decision(log: Log) -> None:
    async with await LineageClient.connect(log.lineage.address) as client:
        good_id, bad_id = str(uuid.uuid4()), str(uuid.uuid4())
        from govmesh.artifacts.canonical import canonical_json

        def amendment(decision_id: str, amends: str) -> bytes:
            return canonical_json(
                {"v": 1, "type": "amendment", "decision_id": decision_id, "amends": amends}
            )

        await client.append_batch(
            [
                (amendment(good_id, log.decision_ids[3]), good_id),
                (amendment(bad_id, str(uuid.uuid4())), bad_id),
            ]
        )
        source = ServiceSource(client, "service")
        report = await audit(source, log_key=log.key)
    assert [(f.kind, f.decision_id) for f in report.findings] == [("amendment", bad_id)]
