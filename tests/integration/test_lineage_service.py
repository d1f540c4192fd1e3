"""The lineage service as a real process: appends, proofs, queries, tail, crashes."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from govmesh.artifacts.canonical import canonical_json
from govmesh.cli.devsetup import DevSetup
from govmesh.engine.core import PeerUnavailable
from govmesh.engine.lineage import BatchingLineage
from govmesh.engine.peers import GrpcLineage
from govmesh.engine.streams import BatchStream
from govmesh.lineage import merkle
from govmesh.lineage.auditor import audit
from govmesh.lineage.client import LineageClient, LineageError
from govmesh.lineage.notes import VerifierKey, open_checkpoint
from govmesh.lineage.sources import DatabaseSource
from govmesh.v1 import lineage_pb2, lineage_pb2_grpc
from tests.support.database import fetch, roll_back_lineage
from tests.support.processes import ServiceProcess

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def decision(seq: int, *, engine: str = "engine-a", **fields: Any) -> tuple[bytes, str]:
    """(entry bytes, decision id) shaped like the engine's entries."""
    decision_id = str(uuid.uuid4())
    doc = {
        "v": 1,
        "type": "decision",
        "decision_id": decision_id,
        "engine": {"id": engine, "seq": seq},
        "time": (T0 + timedelta(seconds=seq)).isoformat(timespec="milliseconds"),
        "subject": "spiffe://govmesh.dev/agent/demo",
        "action": "payments.transfer",
        "resource": "account:acme/treasury",
        "decision": "DENY",
        "reason": "POLICY_MISMATCH",
        "failed_checks": ["policy"],
        "trace_id": f"{seq:032x}",
        "span_id": f"{seq:016x}",
        **fields,
    }
    return canonical_json(doc), decision_id


def log_key(setup: DevSetup) -> VerifierKey:
    return VerifierKey.parse(setup.lineage_vkey.read_text())


@pytest.fixture
def lineage_env(database_url: str, dev_setup: DevSetup) -> dict[str, str]:
    return {"GOVMESH_DATABASE_URL": database_url, "GOVMESH_KEYS_DIR": str(dev_setup.keys_dir)}


@pytest.fixture
def lineage(services: Callable[..., ServiceProcess], lineage_env: dict[str, str]) -> ServiceProcess:
    return services("lineage", lineage_env)


async def test_appends_return_receipts_whose_checkpoints_prove_the_entries(
    lineage: ServiceProcess, dev_setup: DevSetup, database_url: str
) -> None:
    key = log_key(dev_setup)
    entries = [decision(i) for i in range(10)]
    async with await LineageClient.connect(lineage.address) as client:
        answers = await client.append_batch(entries)
        assert [a.error for a in answers] == [""] * 10
        assert [a.receipt.index for a in answers] == list(range(10))
        for (data, decision_id), answer in zip(entries, answers, strict=True):
            assert answer.decision_id == decision_id
            assert answer.receipt.leaf_hash == merkle.leaf_hash(data)
            signed = open_checkpoint(answer.receipt.checkpoint, key)
            assert signed.size == answer.receipt.tree_size == 10
            proof = await client.inclusion_proof(decision_id)
            assert proof.entry == data and proof.index == answer.receipt.index
            merkle.verify_inclusion(
                proof.index, proof.tree_size, proof.leaf_hash, list(proof.hashes), signed.root
            )
        by_index = await client.entry(index=3)
        assert by_index.entry == entries[3][0]
        by_id = await client.entry(entries[3][1])
        assert by_id.index == 3
    rows = await fetch(database_url, "SELECT entry FROM lineage_entries ORDER BY idx")
    assert [bytes(r["entry"]) for r in rows] == [e for e, _ in entries]


async def test_proofs_for_any_tree_size_and_between_any_checkpoints(
    lineage: ServiceProcess, dev_setup: DevSetup
) -> None:
    key = log_key(dev_setup)
    async with await LineageClient.connect(lineage.address) as client:
        notes = {}
        for n in range(1, 8):
            answers = await client.append_batch([decision(j) for j in range(n)])
            notes[answers[0].receipt.tree_size] = answers[0].receipt.checkpoint
        sizes = sorted(notes)
        roots = {s: open_checkpoint(notes[s], key).root for s in sizes}
        for old in sizes:
            for new in sizes:
                if old > new:
                    continue
                consistency = await client.consistency_proof(old, new)
                merkle.verify_consistency(
                    old, new, roots[old], roots[new], list(consistency.hashes)
                )
        entries = [e async for page in client.list_entries() for e in page.entries]
        leaves = [merkle.leaf_hash(e.entry) for e in entries]
        for tree_size in (1, 5, 13, 27, len(leaves)):
            root = merkle.reference_root(leaves[:tree_size])
            for index in (0, tree_size - 1):
                proof = await client.inclusion_proof(index=index, tree_size=tree_size)
                merkle.verify_inclusion(index, tree_size, leaves[index], list(proof.hashes), root)
        listed = [c async for page in client.list_checkpoints() for c in page.checkpoints]
        assert [c.tree_size for c in listed] == sizes


async def test_bad_requests_get_clear_errors_not_crashes(lineage: ServiceProcess) -> None:
    async with await LineageClient.connect(lineage.address) as client:
        good = decision(0)
        answers = await client.append_batch(
            [(b'{"not":"canonical", "x":1}', str(uuid.uuid4())), good, good, (good[0], "x")]
        )
        assert "canonical" in answers[0].error and not answers[0].HasField("receipt")
        assert answers[1].receipt.index == 0
        assert "already logged" in answers[2].error
        assert "decision_id" in answers[3].error
        # An entry Postgres could not store fails alone, not the batch it came in.
        unstorable = decision(1, subject="agent\u0000x")
        answers = await client.append_batch([decision(1), unstorable, decision(2)])
        assert "NUL" in answers[1].error
        assert [answers[0].receipt.index, answers[2].receipt.index] == [1, 2]
        cases: list[tuple[Any, grpc.StatusCode]] = [
            (client.append_batch([]), grpc.StatusCode.INVALID_ARGUMENT),
            (client.entry("not-a-uuid"), grpc.StatusCode.INVALID_ARGUMENT),
            (client.entry(str(uuid.uuid4())), grpc.StatusCode.NOT_FOUND),
            (client.inclusion_proof(str(uuid.uuid4())), grpc.StatusCode.NOT_FOUND),
            (client.inclusion_proof(index=0, tree_size=5), grpc.StatusCode.OUT_OF_RANGE),
            (client.consistency_proof(0, 1), grpc.StatusCode.INVALID_ARGUMENT),
            (client.consistency_proof(1, 9), grpc.StatusCode.OUT_OF_RANGE),
            (client.query(), grpc.StatusCode.INVALID_ARGUMENT),
            (client.checkpoint(tree_size=77), grpc.StatusCode.NOT_FOUND),
            (client.add_cosignature("garbage"), grpc.StatusCode.FAILED_PRECONDITION),
        ]
        for call, code in cases:
            with pytest.raises(LineageError) as raised:
                await call
            assert raised.value.code == code, raised.value


async def test_queries_by_decision_trace_subject_and_time(lineage: ServiceProcess) -> None:
    async with await LineageClient.connect(lineage.address) as client:
        entries = [decision(i) for i in range(30)]
        entries.append(decision(30, subject="spiffe://govmesh.dev/agent/other"))
        await client.append_batch(entries)

        page = await client.query(decision_id=entries[7][1])
        assert [e.index for e in page.entries] == [7]
        page = await client.query(trace_id=f"{12:032x}")
        assert [e.index for e in page.entries] == [12]
        page = await client.query(subject="spiffe://govmesh.dev/agent/other")
        assert [e.index for e in page.entries] == [30]
        page = await client.query(
            since=T0 + timedelta(seconds=10), until=T0 + timedelta(seconds=15)
        )
        assert [e.index for e in page.entries] == [10, 11, 12, 13, 14]
        # Paging through a subject's decisions.
        seen: list[int] = []
        after = None
        while True:
            page = await client.query(
                subject="spiffe://govmesh.dev/agent/demo", after_index=after, limit=7
            )
            seen += [e.index for e in page.entries]
            if not page.more:
                break
            after = page.entries[-1].index
        assert seen == list(range(30))
        assert json.loads(page.entries[-1].entry)["decision_id"] == entries[29][1]


async def test_tail_follows_new_entries_live(lineage: ServiceProcess) -> None:
    async with await LineageClient.connect(lineage.address) as client:
        await client.append_batch([decision(i) for i in range(3)])
        received: list[int] = []

        async def follow() -> None:
            async for entry in client.tail(1):
                received.append(entry.index)
                if len(received) == 6:
                    return

        task = asyncio.create_task(follow())
        await asyncio.sleep(0.3)
        assert received == [1, 2]
        for i in range(3, 7):
            await client.append_batch([decision(i)])
        await asyncio.wait_for(task, 10)
        assert received == [1, 2, 3, 4, 5, 6]


async def test_a_killed_service_loses_no_receipted_entry_and_leaves_no_gap(
    services: Callable[..., ServiceProcess],
    lineage_env: dict[str, str],
    database_url: str,
    dev_setup: DevSetup,
) -> None:
    first = services("lineage", lineage_env)
    receipted: dict[str, int] = {}
    enough = asyncio.Event()
    async with await LineageClient.connect(first.address) as client:

        async def writer(n: int) -> None:
            for i in range(1000):
                batch = [decision(i, engine=f"writer-{n}") for _ in range(20)]
                try:
                    answers = await client.append_batch(batch)
                except LineageError:
                    return
                for answer in answers:
                    receipted[answer.decision_id] = answer.receipt.index
                if len(receipted) >= 400:
                    enough.set()

        tasks = [asyncio.create_task(writer(n)) for n in range(4)]
        await asyncio.wait_for(enough.wait(), 30)
        first.kill()  # SIGKILL mid-stream: transactions in flight die with it
        await asyncio.gather(*tasks)

    second = services("lineage", lineage_env)
    async with await LineageClient.connect(second.address) as client:
        answers = await client.append_batch([decision(0, engine="after-restart")])
        size = answers[0].receipt.tree_size
    rows = await fetch(database_url, "SELECT idx, decision_id FROM lineage_entries ORDER BY idx")
    assert [r["idx"] for r in rows] == list(range(size))
    stored = {str(r["decision_id"]): r["idx"] for r in rows}
    for decision_id, index in receipted.items():
        assert stored[decision_id] == index
    source = await DatabaseSource.connect(database_url)
    try:
        report = await audit(source, log_key=log_key(dev_setup))
    finally:
        await source.close()
    # Writers reuse counters on purpose here; only the log's own integrity matters.
    assert [f for f in report.findings if f.kind != "engine"] == []
    assert report.tree_size == size


async def test_the_append_stream_answers_each_concurrent_append_after_commit(
    lineage: ServiceProcess, dev_setup: DevSetup
) -> None:
    key = log_key(dev_setup)
    channel = grpc.aio.insecure_channel(lineage.address)
    # The engine's own appends: batches on AppendStream.
    transport = GrpcLineage(channel)
    stream = BatchingLineage(transport=transport, max_batch=32, linger_s=0.002)
    stream.start()
    try:
        entries = [decision(i) for i in range(300)]
        receipts = await asyncio.gather(
            *(stream.append(data, decision_id, timeout=20) for data, decision_id in entries)
        )
        assert sorted(r.index for r in receipts) == list(range(300))
        for (data, _), receipt in zip(entries, receipts, strict=True):
            assert receipt.leaf_hash == merkle.leaf_hash(data)
            assert open_checkpoint(receipt.checkpoint, key).size == receipt.tree_size
        with pytest.raises(PeerUnavailable, match="already logged"):
            await stream.append(*entries[0], timeout=20)
        with pytest.raises(PeerUnavailable, match="canonical"):
            await stream.append(b'{"a": 1}', str(uuid.uuid4()), timeout=20)
        # The stream is still usable after refusals.
        more = await stream.append(*decision(300), timeout=20)
        assert more.index == 300
    finally:
        await stream.close()
        await transport.close()
        await channel.close()


async def test_two_replicas_share_one_contiguous_log_and_tail_each_others_commits(
    services: Callable[..., ServiceProcess],
    lineage_env: dict[str, str],
    database_url: str,
    dev_setup: DevSetup,
    tmp_path: Path,
) -> None:
    # Each replica records what it signed in a state file of its own.
    replicas = [
        services(
            "lineage", {**lineage_env, "GOVMESH_LINEAGE_STATE_FILE": str(tmp_path / f"r{i}.floor")}
        )
        for i in range(2)
    ]
    async with (
        await LineageClient.connect(replicas[0].address) as first,
        await LineageClient.connect(replicas[1].address) as second,
    ):
        received: list[int] = []

        async def follow() -> None:
            async for entry in first.tail(from_end=True):
                received.append(entry.index)
                if len(received) == 5:
                    return

        tailing = asyncio.create_task(follow())
        await asyncio.sleep(0.3)
        # Commits through the second replica reach a tail on the first (LISTEN/NOTIFY).
        for i in range(5):
            await second.append_batch([decision(i, engine="second")])
        await asyncio.wait_for(tailing, 10)
        assert received == [0, 1, 2, 3, 4]

        async def write(client: LineageClient, engine: str) -> None:
            for i in range(30):
                answers = await client.append_batch([decision(i, engine=engine) for _ in range(3)])
                assert all(a.receipt.tree_size for a in answers), answers

        await asyncio.gather(write(first, "a"), write(second, "b"))
    rows = await fetch(database_url, "SELECT idx FROM lineage_entries ORDER BY idx")
    assert [r["idx"] for r in rows] == list(range(5 + 180))
    source = await DatabaseSource.connect(database_url)
    try:
        report = await audit(source, log_key=log_key(dev_setup))
    finally:
        await source.close()
    assert [f for f in report.findings if f.kind != "engine"] == []


class ShortLivedStreams:
    """The engine's AppendStream transport, its streams replaced every `max_age` seconds."""

    def __init__(self, channel: grpc.aio.Channel, *, max_age_s: float) -> None:
        self._stream: BatchStream[lineage_pb2.AppendBatchRequest, lineage_pb2.AppendBatchResponse]
        self._stream = BatchStream(
            peer="lineage",
            open_stream=lineage_pb2_grpc.LineageStub(channel).AppendStream,
            streams=1,
            max_age_s=max_age_s,
        )

    async def append_batch(
        self, requests: list[lineage_pb2.AppendRequest], *, timeout: float
    ) -> list[lineage_pb2.AppendResponse]:
        request = lineage_pb2.AppendBatchRequest(entries=requests)
        return list((await self._stream.call(request, timeout)).results)

    async def get_entry(self, decision_id: str, *, timeout: float) -> bytes | None:
        raise AssertionError("not asked for here")

    async def close(self) -> None:
        await self._stream.close()


async def test_the_append_stream_rotates_without_losing_an_append(lineage: ServiceProcess) -> None:
    channel = grpc.aio.insecure_channel(lineage.address)
    transport = ShortLivedStreams(channel, max_age_s=0.1)
    stream = BatchingLineage(transport=transport, max_batch=8, linger_s=0.001)
    stream.start()
    try:
        receipts = []
        for round_ in range(8):
            receipts += await asyncio.gather(
                *(stream.append(*decision(round_ * 10 + i), timeout=20) for i in range(10))
            )
            await asyncio.sleep(0.05)
        assert sorted(r.index for r in receipts) == list(range(80))
    finally:
        await stream.close()
        await transport.close()
        await channel.close()


async def test_a_restarted_service_refuses_a_database_that_went_back_in_time(
    services: Callable[..., ServiceProcess], lineage_env: dict[str, str], database_url: str
) -> None:
    first = services("lineage", lineage_env)
    async with await LineageClient.connect(first.address) as client:
        for i in range(3):
            await client.append_batch([decision(i)])
    assert first.terminate() == 0
    await roll_back_lineage(database_url, 1)

    with pytest.raises(RuntimeError, match="went back in time: it holds 1 entries") as refused:
        services("lineage", lineage_env)
    assert "exited with 2" in str(refused.value)
    assert "Traceback" not in str(refused.value)


async def test_pages_of_large_entries_stay_inside_the_message_limit(
    lineage: ServiceProcess,
) -> None:
    # 120 entries of about 60 KiB: 7 MiB, beyond one 4 MiB gRPC message.
    padding = "x" * 60_000
    async with await LineageClient.connect(lineage.address) as client:
        for start in range(0, 120, 20):
            answers = await client.append_batch(
                [decision(i, attribution=padding) for i in range(start, start + 20)]
            )
            assert all(a.HasField("receipt") for a in answers), answers[0].error
        listed = [e.index async for page in client.list_entries() for e in page.entries]
        assert listed == list(range(120))

        found: list[int] = []
        after = None
        while True:
            page = await client.query(
                subject="spiffe://govmesh.dev/agent/demo", after_index=after, limit=1000
            )
            found += [e.index for e in page.entries]
            if not page.more:
                break
            assert 0 < len(page.entries) < 120
            after = page.entries[-1].index
        assert found == list(range(120))

        tailed: list[int] = []
        async for entry in client.tail(start=0):
            tailed.append(entry.index)
            if len(tailed) == 120:
                break
        assert tailed == list(range(120))
