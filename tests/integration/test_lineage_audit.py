"""The auditor catches what a superuser can do to the log behind the database's back.

Each test builds a log through the real lineage service, switches the
append-only triggers off as a superuser would, changes something, and runs
the auditor against the database (in process and as `govmesh lineage verify`)
and against the service.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from govmesh.artifacts.entries import refusal_record
from govmesh.cli.devsetup import DevSetup
from govmesh.engine.lineage import FileSpool
from govmesh.engine.peers import GrpcLineage, open_channel
from govmesh.lineage import merkle
from govmesh.lineage.auditor import Anchor, AuditReport, audit, read_anchor
from govmesh.lineage.client import LineageClient
from govmesh.lineage.keys import DEFAULT_ORIGIN, load_log_signer
from govmesh.lineage.notes import Checkpoint, Cosigner, NoteSigner, VerifierKey, parse_note
from govmesh.lineage.sources import DatabaseSource, ServiceSource
from govmesh.lineage.witness import Witness
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


async def audit_database(log: Log, *anchors: Path) -> AuditReport:
    source = await DatabaseSource.connect(log.database_url)
    try:
        return await audit(
            source,
            log_key=log.key,
            witnesses=[log.witness.verifier],
            anchors=[anchor(log, path) for path in anchors],
        )
    finally:
        await source.close()


def anchor(log: Log, path: Path) -> Anchor:
    return read_anchor(path.read_text(), label=str(path), log_key=log.key)


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


# --- entries lineage refuses: kept aside, recorded by hash --------------------------------


@pytest.mark.parametrize("refused_by", ["the engine's copy of the rules", "the lineage service"])
async def test_a_spooled_deny_lineage_refuses_is_recorded_by_a_refusal_and_audits_clean(
    log: Log, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused_by: str
) -> None:
    # Three denies of engine-a spooled while lineage was away, continuing its
    # counter; the middle one names a subject Postgres cannot store (NUL).
    seq = SINGLES + BATCH
    spooled = [
        decision(seq),
        decision(seq + 1, subject="spiffe://govmesh.dev/agent/\x00x"),
        decision(seq + 2),
    ]
    spool = FileSpool(tmp_path / "spool")
    for data, decision_id in spooled:
        await spool.put(data, decision_id)
    if refused_by == "the lineage service":
        # An engine whose copy of the rules misses this one: the entry travels
        # and the real service's refusal is what the spool acts on.
        monkeypatch.setattr("govmesh.engine.lineage.entry_problem", lambda data, did: None)
    channel = open_channel(log.lineage.address)
    try:
        transport = GrpcLineage(channel)
        assert await spool.drain(transport, timeout=30) == 3
        # The spool moved on: the next drain has nothing to send.
        assert spool.pending() == []
        assert await spool.drain(transport, timeout=30) == 0
        refused_data, refused_id = spooled[1]
        record = json.loads(await transport.get_entry(refused_id, timeout=30) or b"null")
    finally:
        await channel.close()

    assert record["type"] == "refused"
    assert record["entry_sha256"] == hashlib.sha256(refused_data).hexdigest()
    assert "NUL" in record["reason"]
    [aside] = spool.quarantined()
    assert aside.read_bytes().endswith(b"\n" + refused_data)

    # The auditor: the whole log checks out, the engine's counter has no gap,
    # and the refusal is reported.
    report = await audit_database(log)
    assert report.ok, report.findings
    assert report.engines == {"engine-a": seq + 3}
    assert [(r.decision_id, r.entry_sha256) for r in report.refused] == [
        (refused_id, record["entry_sha256"])
    ]
    result = cli(
        "verify", "--database-url", log.database_url, "--vkey", str(log.setup.lineage_vkey)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "entries lineage refused, recorded by hash in their place: 1" in result.stdout
    assert record["entry_sha256"] in result.stdout


async def test_a_refused_deny_dropped_without_its_record_is_a_gap_the_auditor_names(
    log: Log,
) -> None:
    # What a spool that simply deleted the refused deny would leave behind.
    seq = SINGLES + BATCH
    async with await LineageClient.connect(log.lineage.address) as client:
        await client.append_batch([decision(seq)])
        await client.append_batch([decision(seq + 2)])
    report = await audit_database(log)
    assert not report.ok
    [finding] = report.findings
    assert finding.kind == "engine"
    assert f"counter {seq + 1} never logged" in finding.message


async def test_a_refusal_record_standing_for_an_allow_is_a_finding(log: Log) -> None:
    allow, _ = decision(SINGLES + BATCH, decision="ALLOW")
    record_id = str(uuid.uuid4())
    record, _ = refusal_record(record_id, allow, "refused", time=datetime.now(UTC))
    async with await LineageClient.connect(log.lineage.address) as client:
        await client.append_batch([(record, record_id)])
    report = await audit_database(log)
    assert [(f.kind, f.decision_id) for f in report.findings] == [("refused", record_id)]


# --- anchors: a rolled-back or forked log is a valid log on its own ------------------


async def append_more(log: Log, count: int) -> list[str]:
    """Append `count` more decisions, each in its own batch (and checkpoint)."""
    ids = []
    async with await LineageClient.connect(log.lineage.address) as client:
        for i in range(count):
            [answer] = await client.append_batch([decision(len(log.decision_ids) + i)])
            ids.append(answer.decision_id)
    log.decision_ids += ids
    return ids


async def restore_backup_of(log: Log, size: int) -> None:
    """What restoring a backup taken at `size` leaves: newer entries, checkpoints,
    cosignatures gone and the head back where it was."""
    conn = await asyncpg.connect(libpq_database_url(log.database_url))
    try:
        root = await conn.fetchval(
            "SELECT root_hash FROM lineage_checkpoints WHERE tree_size = $1", size
        )
        for table in ("lineage_entries", "lineage_checkpoints", "lineage_cosignatures"):
            await conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER {table}_append_only")
        await conn.execute("ALTER TABLE lineage_head DISABLE TRIGGER lineage_head_contiguous")
        await conn.execute("DELETE FROM lineage_cosignatures WHERE tree_size > $1", size)
        await conn.execute("DELETE FROM lineage_checkpoints WHERE tree_size > $1", size)
        await conn.execute("DELETE FROM lineage_entries WHERE idx >= $1", size)
        await conn.execute("UPDATE lineage_head SET size = $1, root_hash = $2", size, root)
    finally:
        await conn.close()


async def fork_with_the_log_key(log: Log, index: int) -> None:
    """Whoever holds the log key rewrites entry `index` and re-signs every
    checkpoint over the rewritten tree: every signature in the log verifies."""
    signer = load_log_signer(log.setup.keys_dir, DEFAULT_ORIGIN)
    await superuser(log.database_url, UNLOCK, FLIP.format(index))
    await rehash_all(log.database_url)
    conn = await asyncpg.connect(libpq_database_url(log.database_url))
    try:
        sizes = {
            r["tree_size"] for r in await conn.fetch("SELECT tree_size FROM lineage_checkpoints")
        }
        roots = {}
        frontier = merkle.Frontier()
        for row in await conn.fetch("SELECT entry FROM lineage_entries ORDER BY idx"):
            frontier.append(merkle.leaf_hash(bytes(row["entry"])))
            if frontier.size in sizes:
                roots[frontier.size] = frontier.root()
        for table in ("lineage_checkpoints", "lineage_cosignatures"):
            await conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER {table}_append_only")
        await conn.execute("ALTER TABLE lineage_head DISABLE TRIGGER lineage_head_contiguous")
        # The witness's cosignatures no longer verify over the new notes: they go too.
        await conn.execute("DELETE FROM lineage_cosignatures")
        for size, root in roots.items():
            await conn.execute(
                "UPDATE lineage_checkpoints SET root_hash = $2, note = $3 WHERE tree_size = $1",
                size,
                root,
                signer.sign(Checkpoint(DEFAULT_ORIGIN, size, root).text()),
            )
        await conn.execute("UPDATE lineage_head SET root_hash = $1", roots[max(roots)])
    finally:
        await conn.close()


async def test_an_anchor_shows_a_log_restored_from_an_old_backup(log: Log, tmp_path: Path) -> None:
    vkey = str(log.setup.lineage_vkey)
    old = tmp_path / "old.checkpoint"
    taken = cli("checkpoint", "--target", log.lineage.address)
    assert taken.returncode == 0, taken.stderr
    old.write_text(taken.stdout)
    added = await append_more(log, 4)
    newest = SINGLES + BATCH + 4
    new = tmp_path / "new.checkpoint"
    new.write_text(cli("checkpoint", "--target", log.lineage.address).stdout)
    bundle = tmp_path / "proof.json"
    proved = cli("proof", added[1], "--newest", "--target", log.lineage.address, "-o", str(bundle))
    assert proved.returncode == 0, proved.stderr
    state = tmp_path / "witness-state.json"
    witness = Witness(cosigner=log.witness, log_key=log.key, origin=log.key.name, state_path=state)
    async with await LineageClient.connect(log.lineage.address) as client:
        cosigned = await witness.step(client)
    assert cosigned is not None and cosigned.size == newest

    # Before the restore every anchor is held, over the database and over the service.
    report = await audit_database(log, old, new, bundle, state)
    assert report.ok, report.findings
    assert [(a.anchor.size, a.status) for a in report.anchors] == [
        (SINGLES + BATCH, "held"),
        *[(newest, "held")] * 3,
    ]
    over_service = cli(
        "verify", "--target", log.lineage.address, "--vkey", vkey, "--anchor", str(new)
    )
    assert over_service.returncode == 0, over_service.stdout + over_service.stderr
    assert f"anchor {new}: size {newest}" in over_service.stdout

    await restore_backup_of(log, SINGLES + BATCH)

    # The restored log is a valid log: without an anchor nothing is wrong.
    assert (await audit_database(log)).ok
    plain = cli("verify", "--database-url", log.database_url, "--vkey", vkey)
    assert plain.returncode == 0, plain.stdout + plain.stderr

    report = await audit_database(log, old, new, bundle, state)
    assert [(a.anchor.label, a.status) for a in report.anchors] == [
        (str(old), "held"),
        (str(new), "rolled back"),
        (str(bundle), "rolled back"),
        (str(state), "rolled back"),
    ]
    assert {f.kind for f in report.findings} == {"anchor"} and len(report.findings) == 3
    first = report.first_difference()
    assert first is not None and first.tree_size == newest
    assert (first.first, first.last) == (SINGLES + BATCH, newest - 1)

    result = cli(
        "verify",
        "--database-url",
        log.database_url,
        "--vkey",
        vkey,
        "--anchor",
        str(old),
        "--anchor",
        str(bundle),
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"anchor {old}: size {SINGLES + BATCH}" in result.stdout
    assert (
        f"[anchor] anchor {bundle} commits to {newest} entries but the log holds only "
        f"{SINGLES + BATCH}: it was rolled back or truncated"
    ) in result.stdout
    as_json = cli(
        "verify",
        "--database-url",
        log.database_url,
        "--vkey",
        vkey,
        "--json",
        "--anchor",
        str(state),
    )
    doc = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and not doc["ok"]
    assert [(a["file"], a["tree_size"], a["status"]) for a in doc["anchors"]] == [
        (str(state), newest, "rolled back")
    ]


async def test_an_anchor_shows_a_fork_the_log_key_signed(log: Log, tmp_path: Path) -> None:
    anchors = {}
    async with await LineageClient.connect(log.lineage.address) as client:
        for size in (4, SINGLES + BATCH):
            anchors[size] = tmp_path / f"anchor-{size}"
            anchors[size].write_text((await client.checkpoint(size)).checkpoint)

    await fork_with_the_log_key(log, 5)

    source = await DatabaseSource.connect(log.database_url)
    try:
        assert (await audit(source, log_key=log.key)).ok
        report = await audit(
            source, log_key=log.key, anchors=[anchor(log, p) for p in anchors.values()]
        )
    finally:
        await source.close()
    assert [a.status for a in report.anchors] == ["held", "forked"]
    [finding] = report.findings
    assert (finding.kind, finding.first, finding.last, finding.tree_size) == (
        "anchor",
        4,
        SINGLES + BATCH - 1,
        SINGLES + BATCH,
    )

    result = cli(
        "verify",
        "--database-url",
        log.database_url,
        "--vkey",
        str(log.setup.lineage_vkey),
        *[a for p in anchors.values() for a in ("--anchor", str(p))],
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the log forked (an entry among 4..19 differs from what the anchor saw)" in (
        result.stdout
    )
    assert "first difference: an entry among 4..19" in result.stdout


async def test_an_anchor_the_log_key_did_not_sign_stops_the_audit(log: Log, tmp_path: Path) -> None:
    async with await LineageClient.connect(log.lineage.address) as client:
        root = (await client.checkpoint()).root_hash
    other = NoteSigner(log.key.name, Ed25519PrivateKey.generate())
    forged = tmp_path / "forged.checkpoint"
    forged.write_text(other.sign(Checkpoint(log.key.name, SINGLES + BATCH, root).text()))
    result = cli(
        "verify",
        "--database-url",
        log.database_url,
        "--vkey",
        str(log.setup.lineage_vkey),
        "--anchor",
        str(forged),
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"anchor {forged} is not a checkpoint signed by the log key" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


async def test_a_required_witness_must_have_cosigned_and_keep_up(log: Log) -> None:
    vkey = str(log.setup.lineage_vkey)
    w1 = log.witness.verifier.encode()
    w2 = Cosigner("witness.test/w2", Ed25519PrivateKey.generate()).verifier.encode()
    base = ("verify", "--database-url", log.database_url, "--vkey", vkey, "--witness", w1)

    witnessed = cli(*base, "--require-witness", log.witness.name, "--max-unwitnessed", "0")
    assert witnessed.returncode == 0, witnessed.stdout + witnessed.stderr
    assert (
        f"required witness {log.witness.name}: largest cosigned size {SINGLES + BATCH}, "
        "0 entries beyond it (at most 0)"
    ) in witnessed.stdout

    missing = cli(*base, "--witness", w2, "--require-witness", "witness.test/w2")
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert "[witness] required witness witness.test/w2 cosigned no checkpoint" in missing.stdout

    await append_more(log, 3)
    newest = SINGLES + BATCH + 3
    behind = cli(*base, "--require-witness", log.witness.name, "--max-unwitnessed", "2", "--json")
    doc = json.loads(behind.stdout)
    assert behind.returncode == 1 and not doc["ok"]
    assert doc["required_witnesses"] == [
        {
            "name": log.witness.name,
            "largest_witnessed_size": SINGLES + BATCH,
            "unwitnessed_entries": 3,
        }
    ]
    assert [f["kind"] for f in doc["findings"]] == ["witness"]
    assert (
        f"entries {SINGLES + BATCH}..{newest - 1} (3) lie beyond" in doc["findings"][0]["message"]
    )
    # Without a bound, entries not yet witnessed are reported, not a failure.
    unbounded = cli(*base, "--require-witness", log.witness.name)
    assert unbounded.returncode == 0, unbounded.stdout + unbounded.stderr
    assert "3 entries beyond it" in unbounded.stdout
    assert (
        cli(*base, "--require-witness", log.witness.name, "--max-unwitnessed", "3").returncode == 0
    )
