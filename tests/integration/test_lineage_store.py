"""The log in a real Postgres: group commit, contiguity, duplicates, proofs, immutability."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from govmesh.artifacts.canonical import canonical_json
from govmesh.lineage import merkle
from govmesh.lineage.core import Entry, EntryRejected, Receipt, check_entry
from govmesh.lineage.floor import SignedTree, StateFile, StateFileError
from govmesh.lineage.notes import Checkpoint, NoteSigner, open_checkpoint
from govmesh.lineage.sequencer import Sequencer
from govmesh.lineage.store import LogCorrupted, LogStore
from govmesh.runtime.db import libpq_database_url
from tests.support.database import execute, fetch, roll_back_lineage

ORIGIN = "test.govmesh.local/lineage"


def make_entry(n: int = 0, **fields: Any) -> Entry:
    decision_id = str(uuid.uuid4())
    doc = {
        "v": 1,
        "type": "decision",
        "decision_id": decision_id,
        "engine": {"id": "engine-a", "seq": n},
        "time": "2026-11-26T10:00:00.000+00:00",
        "subject": "spiffe://govmesh.dev/agent/demo",
        "decision": "DENY",
        "trace_id": None,
        **fields,
    }
    return check_entry(canonical_json(doc), decision_id)


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner(ORIGIN, Ed25519PrivateKey.generate())


StateFileAt = Callable[..., StateFile]


@pytest.fixture
def state_file_at(tmp_path: Path) -> StateFileAt:
    """The state file of one lineage process, by name (a restarted process reuses its name)."""

    def make(name: str = "lineage") -> StateFile:
        return StateFile(tmp_path / "state" / f"{name}.floor")

    return make


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[LogStore]:
    opened = await LogStore.open(database_url)
    yield opened
    await opened.close()


@pytest.fixture
async def sequencer(
    store: LogStore, signer: NoteSigner, state_file_at: StateFileAt
) -> AsyncIterator[Sequencer]:
    seq = Sequencer(store=store, signer=signer, origin=ORIGIN, state_file=state_file_at())
    await seq.start()
    yield seq
    await seq.close()


def receipts(results: list[Receipt | EntryRejected]) -> list[Receipt]:
    assert all(isinstance(r, Receipt) for r in results), results
    return [r for r in results if isinstance(r, Receipt)]


async def all_leaves(store: LogStore) -> list[bytes]:
    rows = await store.entries(0, limit=1_000_000)
    return [merkle.leaf_hash(r.entry) for r in rows]


async def test_receipts_come_after_commit_with_a_checkpoint_that_proves_the_entry(
    store: LogStore, sequencer: Sequencer, signer: NoteSigner, database_url: str
) -> None:
    entries = [make_entry(i) for i in range(5)]
    got = receipts(await sequencer.append(entries))

    assert [r.index for r in got] == [0, 1, 2, 3, 4]
    assert {r.tree_size for r in got} == {5}
    signed = open_checkpoint(got[0].checkpoint, signer.verifier, origin=ORIGIN)
    assert signed.size == 5
    for entry, receipt in zip(entries, got, strict=True):
        assert receipt.leaf_hash == merkle.leaf_hash(entry.data)
        proof = await store.tree_hashes(merkle.inclusion_ranges(receipt.index, 5))
        merkle.verify_inclusion(receipt.index, 5, receipt.leaf_hash, proof, signed.root)
    # Stored byte for byte, and visible to another connection: committed.
    rows = await fetch(database_url, "SELECT idx, entry FROM lineage_entries ORDER BY idx")
    assert [bytes(r["entry"]) for r in rows] == [e.data for e in entries]


async def test_duplicate_decision_ids_are_refused_and_the_rest_commit(
    sequencer: Sequencer,
) -> None:
    first = make_entry(0)
    receipts(await sequencer.append([first]))
    again = make_entry(1)
    results = await sequencer.append([first, again, again, make_entry(2)])

    assert isinstance(results[0], EntryRejected) and "already logged" in str(results[0])
    assert isinstance(results[1], Receipt) and results[1].index == 1
    assert isinstance(results[2], EntryRejected)
    assert isinstance(results[3], Receipt) and results[3].index == 2


async def test_a_batch_of_only_duplicates_signs_nothing(
    sequencer: Sequencer, store: LogStore
) -> None:
    entry = make_entry()
    receipts(await sequencer.append([entry]))
    results = await sequencer.append([entry])
    assert isinstance(results[0], EntryRejected)
    assert [c.tree_size for c in await store.checkpoints()] == [1]


async def test_concurrent_appends_are_grouped_into_few_transactions(
    sequencer: Sequencer, store: LogStore
) -> None:
    results = await asyncio.gather(*(sequencer.append([make_entry(i)]) for i in range(200)))
    indices = sorted(r.index for group in results for r in receipts(group))
    assert indices == list(range(200))
    # Queued together, committed together: a handful of transactions, not 200.
    assert sequencer.batches <= 5
    # Every receipt's checkpoint is one the log stored.
    sizes = {c.tree_size for c in await store.checkpoints()}
    assert {r.tree_size for group in results for r in receipts(group)} <= sizes


async def test_a_transaction_never_holds_more_than_the_batch_bound(
    store: LogStore, signer: NoteSigner, state_file_at: StateFileAt
) -> None:
    seq = Sequencer(
        store=store, signer=signer, origin=ORIGIN, state_file=state_file_at(), max_batch=8
    )
    await seq.start()
    try:
        results = await asyncio.gather(*(seq.append([make_entry(i)]) for i in range(50)))
        # A group larger than the bound still commits, alone, in one transaction.
        big = receipts(await seq.append([make_entry(i) for i in range(50, 70)]))
    finally:
        await seq.close()
    assert sorted(r.index for group in results for r in receipts(group)) == list(range(50))
    sizes = [c.tree_size for c in await store.checkpoints()]
    steps = [b - a for a, b in zip([0, *sizes], sizes, strict=False)]
    assert max(steps[:-1]) == 8 and sum(steps[:-1]) == 50
    assert steps[-1] == 20 and {r.tree_size for r in big} == {70}
    assert seq.batches == len(sizes) <= 10


async def test_two_writers_on_one_database_keep_indices_contiguous_and_checkpoints_consistent(
    database_url: str, signer: NoteSigner, state_file_at: StateFileAt
) -> None:
    stores = [await LogStore.open(database_url) for _ in range(2)]
    writers = [
        Sequencer(store=s, signer=signer, origin=ORIGIN, state_file=state_file_at(f"writer-{i}"))
        for i, s in enumerate(stores)
    ]
    for w in writers:
        await w.start()
    try:

        async def write(w: Sequencer, n: int) -> list[Receipt]:
            out = []
            for i in range(n):
                out += receipts(await w.append([make_entry(i), make_entry(i)]))
            return out

        got = await asyncio.gather(write(writers[0], 40), write(writers[1], 40))
    finally:
        for w in writers:
            await w.close()
    indices = sorted(r.index for rs in got for r in rs)
    assert indices == list(range(160))
    leaves = await all_leaves(stores[0])
    for cp in await stores[0].checkpoints():
        signed = open_checkpoint(cp.note, signer.verifier, origin=ORIGIN)
        assert signed.root == merkle.reference_root(leaves[: signed.size])
    for s in stores:
        await s.close()


async def _crash(*args: Any, **kwargs: Any) -> Any:
    raise ConnectionResetError("the database went away mid-commit")


async def _moved(*args: Any, **kwargs: Any) -> str:
    return "moved"


@pytest.mark.parametrize("path", ["one-statement append", "locked transaction"])
async def test_a_failed_append_leaves_no_trace_and_no_gap(
    sequencer: Sequencer, store: LogStore, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    from govmesh.lineage import store as store_module

    receipts(await sequencer.append([make_entry(0)]))
    with monkeypatch.context() as patched:
        if path == "one-statement append":
            patched.setattr(store_module.LogStore, "append_if_head", _crash)
        else:
            patched.setattr(store_module.LogStore, "append_if_head", _moved)
            patched.setattr(store_module.LogTransaction, "publish", _crash)
        with pytest.raises(ConnectionResetError):
            await sequencer.append([make_entry(1), make_entry(2)])

    assert await store.head() == (1, (await store.checkpoint(1)).root_hash)  # type: ignore[union-attr]
    got = receipts(await sequencer.append([make_entry(3)]))
    assert got[0].index == 1
    assert len(await store.entries(0)) == 2


async def test_a_connection_given_back_after_a_failed_transaction_holds_no_lock(
    store: LogStore, database_url: str
) -> None:
    # The pool gives connections back without asyncpg's reset query; what a
    # failed block left open must still be rolled back before the next user.
    async def fail_half_way() -> None:
        async with store.transaction() as tx:
            await tx.lock_head()
            raise RuntimeError("the append failed half way")

    other = await LogStore.open(database_url)
    try:
        for _ in range(3):  # more than one pooled connection takes its turn
            with pytest.raises(RuntimeError):
                await fail_half_way()
            async with asyncio.timeout(5), other.transaction() as tx:
                assert await tx.lock_head() == await store.head()
    finally:
        await other.close()


async def test_the_locked_path_appends_when_the_head_moved_under_a_writer(
    store: LogStore, signer: NoteSigner, state_file_at: StateFileAt
) -> None:
    first = Sequencer(store=store, signer=signer, origin=ORIGIN, state_file=state_file_at("first"))
    second = Sequencer(
        store=store, signer=signer, origin=ORIGIN, state_file=state_file_at("second")
    )
    await first.start()
    await second.start()
    try:
        receipts(await first.append([make_entry(0)]))
        # `second` still trusts the empty tree: its one-statement append is
        # refused, and its locked path verifies the moved head and appends.
        got = receipts(await second.append([make_entry(1)]))
        assert got[0].index == 1
        again = await second.append([make_entry(2), *[make_entry(3)] * 2])
        assert isinstance(again[2], EntryRejected)
    finally:
        await first.close()
        await second.close()
    leaves = await all_leaves(store)
    for cp in await store.checkpoints():
        assert cp.root_hash == merkle.reference_root(leaves[: cp.tree_size])


async def test_proofs_from_stored_hashes_hold_for_every_tree_size(
    sequencer: Sequencer, store: LogStore
) -> None:
    for n in range(1, 40):
        receipts(await sequencer.append([make_entry(j) for j in range(n % 3 + 1)]))
    leaves = await all_leaves(store)
    size = len(leaves)
    for tree_size in range(1, size + 1):
        root = merkle.reference_root(leaves[:tree_size])
        for index in {0, tree_size // 2, tree_size - 1}:
            proof = await store.tree_hashes(merkle.inclusion_ranges(index, tree_size))
            merkle.verify_inclusion(index, tree_size, leaves[index], proof, root)
        for old in {1, tree_size // 3 or 1, tree_size - 1 or 1}:
            proof = await store.tree_hashes(merkle.consistency_ranges(old, tree_size))
            merkle.verify_consistency(
                old, tree_size, merkle.reference_root(leaves[:old]), root, proof
            )


async def test_a_restarted_sequencer_continues_the_same_tree(
    store: LogStore, signer: NoteSigner, state_file_at: StateFileAt
) -> None:
    first = Sequencer(store=store, signer=signer, origin=ORIGIN, state_file=state_file_at())
    await first.start()
    receipts(await first.append([make_entry(i) for i in range(7)]))
    await first.close()
    second = Sequencer(store=store, signer=signer, origin=ORIGIN, state_file=state_file_at())
    await second.start()
    got = receipts(await second.append([make_entry(7)]))
    await second.close()
    assert got[0].index == 7
    leaves = await all_leaves(store)
    signed = open_checkpoint(got[0].checkpoint, signer.verifier, origin=ORIGIN)
    assert signed.root == merkle.reference_root(leaves)


DISABLE = "ALTER TABLE lineage_entries DISABLE TRIGGER lineage_entries_append_only"


@pytest.mark.parametrize(
    "tamper",
    [
        # A stored subtree hash altered: the compact range no longer hashes to the head.
        lambda: (
            DISABLE,
            "UPDATE lineage_entries SET nodes = sha256(nodes) WHERE idx = 3",
        ),
        # The head's checkpoint replaced by one signed with another key.
        lambda: (
            "ALTER TABLE lineage_checkpoints DISABLE TRIGGER lineage_checkpoints_append_only",
            "UPDATE lineage_checkpoints SET note = replace(note, 'test.govmesh', 'evil') "
            "WHERE tree_size = 4",
        ),
    ],
)
async def test_a_new_writer_refuses_to_sign_over_a_tampered_head(
    store: LogStore,
    signer: NoteSigner,
    database_url: str,
    tamper: Callable[[], tuple[str, ...]],
    state_file_at: StateFileAt,
) -> None:
    first = Sequencer(store=store, signer=signer, origin=ORIGIN, state_file=state_file_at())
    await first.start()
    receipts(await first.append([make_entry(i) for i in range(4)]))
    await first.close()
    await execute(database_url, *tamper())

    second = Sequencer(store=store, signer=signer, origin=ORIGIN, state_file=state_file_at())
    with pytest.raises(LogCorrupted):
        await second.start()


async def test_a_database_rolled_back_behind_the_state_file_is_never_signed_over(
    store: LogStore, signer: NoteSigner, database_url: str, state_file_at: StateFileAt
) -> None:
    first = Sequencer(store=store, signer=signer, origin=ORIGIN, state_file=state_file_at())
    await first.start()
    receipts(await first.append([make_entry(i) for i in range(4)]))
    later = receipts(await first.append([make_entry(i) for i in range(4, 7)]))
    await first.close()
    await roll_back_lineage(database_url, 4)

    # The restored log is a valid, signed prefix: a process without the state
    # file would take it and sign a second, different checkpoint of size 7.
    restarted = Sequencer(store=store, signer=signer, origin=ORIGIN, state_file=state_file_at())
    with pytest.raises(LogCorrupted, match="went back in time: it holds 4 entries"):
        await restarted.start()
    assert await store.head() == (4, (await store.checkpoint(4)).root_hash)  # type: ignore[union-attr]
    assert later[0].tree_size == 7


@pytest.mark.parametrize("fork_size", [7, 9])
async def test_a_forked_log_of_equal_or_larger_size_is_refused(
    store: LogStore,
    signer: NoteSigner,
    database_url: str,
    state_file_at: StateFileAt,
    fork_size: int,
) -> None:
    first = Sequencer(store=store, signer=signer, origin=ORIGIN, state_file=state_file_at())
    await first.start()
    receipts(await first.append([make_entry(i) for i in range(4)]))
    receipts(await first.append([make_entry(i) for i in range(4, 7)]))
    await first.close()
    await roll_back_lineage(database_url, 4)
    # Another process, with no record of what was signed, grows the restored log.
    other = Sequencer(store=store, signer=signer, origin=ORIGIN, state_file=state_file_at("other"))
    await other.start()
    receipts(await other.append([make_entry(i) for i in range(4, fork_size)]))
    await other.close()

    restarted = Sequencer(store=store, signer=signer, origin=ORIGIN, state_file=state_file_at())
    expected = "another root" if fork_size == 7 else "not consistent with size 7"
    with pytest.raises(LogCorrupted, match=expected):
        await restarted.start()


async def test_a_log_that_grew_under_another_writer_is_accepted_after_restart(
    store: LogStore, signer: NoteSigner, state_file_at: StateFileAt
) -> None:
    first = Sequencer(store=store, signer=signer, origin=ORIGIN, state_file=state_file_at())
    await first.start()
    receipts(await first.append([make_entry(i) for i in range(3)]))
    await first.close()
    other = Sequencer(store=store, signer=signer, origin=ORIGIN, state_file=state_file_at("other"))
    await other.start()
    receipts(await other.append([make_entry(i) for i in range(3, 8)]))
    await other.close()

    restarted = Sequencer(store=store, signer=signer, origin=ORIGIN, state_file=state_file_at())
    await restarted.start()
    got = receipts(await restarted.append([make_entry(8)]))
    await restarted.close()
    assert got[0].index == 8
    recorded = state_file_at()
    assert recorded.open() == SignedTree(ORIGIN, 9, merkle.reference_root(await all_leaves(store)))
    recorded.close()


async def test_a_state_file_of_another_log_is_refused(
    store: LogStore, signer: NoteSigner, state_file_at: StateFileAt
) -> None:
    first = Sequencer(store=store, signer=signer, origin=ORIGIN, state_file=state_file_at())
    await first.start()
    receipts(await first.append([make_entry(0)]))
    await first.close()
    other_signer = NoteSigner("other.govmesh.local/lineage", Ed25519PrivateKey.generate())
    other = Sequencer(
        store=store,
        signer=other_signer,
        origin="other.govmesh.local/lineage",
        state_file=state_file_at(),
    )
    with pytest.raises(LogCorrupted, match="belongs to the log"):
        await other.start()


async def test_no_receipt_leaves_before_the_signed_tree_is_recorded(
    sequencer: Sequencer, store: LogStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(self: StateFile, tree: object) -> None:
        raise StateFileError(
            f"cannot record the signed tree in {self.path}: No space left on device"
        )

    receipts(await sequencer.append([make_entry(0)]))
    with monkeypatch.context() as patched:
        patched.setattr(StateFile, "record", full_disk)
        with pytest.raises(StateFileError, match="No space left"):
            await sequencer.append([make_entry(1)])
    # Once the disk takes writes again, the log goes on from the committed tree.
    got = receipts(await sequencer.append([make_entry(2)]))
    assert got[0].index == 2


async def rehash_all(conn: asyncpg.Connection) -> list[bytes]:
    """What a careful tamperer does after editing entries: recompute every stored hash."""
    rows = await conn.fetch("SELECT idx, entry FROM lineage_entries ORDER BY idx")
    frontier = merkle.Frontier()
    leaves = []
    for row in rows:
        leaf = merkle.leaf_hash(bytes(row["entry"]))
        nodes = b"".join(frontier.append(leaf))
        await conn.execute(
            "UPDATE lineage_entries SET leaf_hash = $2, nodes = $3 WHERE idx = $1",
            row["idx"],
            leaf,
            nodes,
        )
        leaves.append(leaf)
    return leaves


async def test_a_running_writer_never_signs_over_a_fork_even_one_signed_with_its_key(
    sequencer: Sequencer, store: LogStore, signer: NoteSigner, database_url: str
) -> None:
    receipts(await sequencer.append([make_entry(i) for i in range(4)]))
    # Someone holding the log key rewrites entry 1, appends entry 4 and signs a
    # checkpoint for the forked tree of size 5. The running writer trusted
    # size 4; the fork is not an extension of it, so it must stop signing.
    forged, extra = make_entry(1, decision="ALLOW"), make_entry(4)
    conn = await asyncpg.connect(libpq_database_url(database_url))
    try:
        await conn.execute(DISABLE)
        await conn.execute(
            "UPDATE lineage_entries SET entry = $1, decision_id = $2 WHERE idx = 1",
            forged.data,
            forged.decision_id,
        )
        await conn.execute(
            "INSERT INTO lineage_entries (idx, decision_id, entry, leaf_hash, nodes, logged_at) "
            "VALUES (4, $1, $2, $3, '', now())",
            extra.decision_id,
            extra.data,
            extra.leaf_hash,
        )
        root = merkle.reference_root(await rehash_all(conn))
        await conn.execute(
            "INSERT INTO lineage_checkpoints (tree_size, root_hash, note) VALUES (5, $1, $2)",
            root,
            signer.sign(Checkpoint(ORIGIN, 5, root).text()),
        )
        await conn.execute("UPDATE lineage_head SET size = 5, root_hash = $1", root)
    finally:
        await conn.close()

    with pytest.raises(LogCorrupted, match="not consistent"):
        await sequencer.append([make_entry(5)])
    assert [c.tree_size for c in await store.checkpoints()] == [4, 5]


# --- immutability in the database ------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE lineage_entries SET entry = 'x' WHERE idx = 0",
        "DELETE FROM lineage_entries WHERE idx = 0",
        "TRUNCATE lineage_entries CASCADE",
        "UPDATE lineage_checkpoints SET note = 'x'",
        "DELETE FROM lineage_checkpoints",
        "TRUNCATE lineage_checkpoints CASCADE",
        "UPDATE lineage_cosignatures SET line = 'x'",
        "DELETE FROM lineage_cosignatures",
        "TRUNCATE lineage_cosignatures",
        "DELETE FROM lineage_head",
        "TRUNCATE lineage_head",
        "UPDATE lineage_head SET size = 0",
        "UPDATE lineage_head SET size = 9",
    ],
)
async def test_the_database_refuses_changes_to_the_log_even_for_replicas(
    sequencer: Sequencer, database_url: str, statement: str
) -> None:
    receipts(await sequencer.append([make_entry(0), make_entry(1)]))
    conn = await asyncpg.connect(libpq_database_url(database_url))
    try:
        # Triggers ENABLED ALWAYS fire even where replication skips ordinary ones.
        await conn.execute("SET session_replication_role = replica")
        with pytest.raises(
            asyncpg.PostgresError, match=r"append-only|may only grow|does not match"
        ):
            await conn.execute(statement)
    finally:
        await conn.close()
    rows = await fetch(database_url, "SELECT count(*) AS n FROM lineage_entries")
    assert rows[0]["n"] == 2


async def test_the_writer_role_may_only_insert_and_select(
    sequencer: Sequencer, database_url: str, signer: NoteSigner, state_file_at: StateFileAt
) -> None:
    receipts(await sequencer.append([make_entry(0)]))
    role = f"lineage_svc_{uuid.uuid4().hex[:8]}"
    await execute(database_url, f"CREATE ROLE {role} LOGIN IN ROLE govmesh_lineage_writer")
    try:
        from sqlalchemy.engine import make_url

        url = make_url(libpq_database_url(database_url)).set(username=role)
        as_service = url.render_as_string(hide_password=False)
        limited = await LogStore.open(as_service)
        try:
            seq = Sequencer(
                store=limited, signer=signer, origin=ORIGIN, state_file=state_file_at("limited")
            )
            await seq.start()
            got = receipts(await seq.append([make_entry(1)]))
            await seq.close()
            assert got[0].index == 1
        finally:
            await limited.close()
        conn = await asyncpg.connect(as_service)
        try:
            for statement in (
                "UPDATE lineage_entries SET entry = 'x'",
                "DELETE FROM lineage_entries",
                "TRUNCATE lineage_entries",
                "ALTER TABLE lineage_entries DISABLE TRIGGER lineage_entries_append_only",
                "UPDATE lineage_checkpoints SET note = 'x'",
            ):
                with pytest.raises(
                    (asyncpg.InsufficientPrivilegeError, asyncpg.PostgresError),
                    match=r"permission denied|must be owner",
                ):
                    await conn.execute(statement)
        finally:
            await conn.close()
    finally:
        await execute(database_url, f"DROP OWNED BY {role}", f"DROP ROLE {role}")


class _SlowStateFile(StateFile):
    """A state file whose first durable write waits until released (a slow fdatasync)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.release = threading.Event()
        self.writes: list[int] = []

    def record(self, tree: SignedTree) -> None:
        if not self.writes:
            self.writes.append(-1)
            self.release.wait(10)
        super().record(tree)
        self.writes.append(tree.size)


async def test_the_next_batch_commits_while_the_state_file_is_written_but_no_receipt_leaves_early(
    store: LogStore, signer: NoteSigner, tmp_path: Path
) -> None:
    state_file = _SlowStateFile(tmp_path / "state" / "slow.floor")
    seq = Sequencer(store=store, signer=signer, origin=ORIGIN, state_file=state_file)
    await seq.start()
    try:
        state_file.writes.clear()  # the start-up record is not the one held
        first = asyncio.ensure_future(seq.append([make_entry(1)]))
        await asyncio.sleep(0.3)
        second = asyncio.ensure_future(seq.append([make_entry(2)]))
        # The second batch commits while the first one's state-file write hangs...
        for _ in range(100):
            if len(await all_leaves(store)) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(await all_leaves(store)) == 2
        # ...but no receipt leaves before a tree that holds it is durable.
        assert not first.done() and not second.done()
        state_file.release.set()
        [a], [b] = receipts(await first), receipts(await second)
    finally:
        state_file.release.set()
        await seq.close()
    assert (a.index, b.index) == (0, 1)
    assert state_file.floor is not None and state_file.floor.size == 2
    # State-file writes stayed one at a time and in order.
    assert state_file.writes == [-1, 1, 2]
