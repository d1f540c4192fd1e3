"""Batched appends and the durable deny spool, over an in-memory lineage transport."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path

import pytest

from govmesh.artifacts.canonical import canonical_json
from govmesh.artifacts.entries import entry_problem, refusal_id, refusal_record, refuses
from govmesh.engine.lineage import BatchingLineage, FileSpool
from govmesh.engine.protocols import PeerError, PeerUnavailable
from govmesh.lineage.core import EntryRejected, check_entry, leaf_hash
from govmesh.v1 import common_pb2, lineage_pb2


def entry(**fields: object) -> tuple[bytes, str]:
    decision_id = str(uuid.uuid4())
    return canonical_json({"decision_id": decision_id, **fields}), decision_id


@dataclass
class MemoryTransport:
    """An honest in-memory log; faults are switched on per test."""

    log: dict[str, bytes] = field(default_factory=dict)
    batches: list[int] = field(default_factory=list)
    fail: PeerError | None = None
    corrupt_receipts: bool = False
    drop_last_result: bool = False
    delay: float = 0.0

    async def append_batch(
        self, requests: list[lineage_pb2.AppendRequest], *, timeout: float
    ) -> list[lineage_pb2.AppendResponse]:
        self.batches.append(len(requests))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        results = []
        for request in requests:
            response = lineage_pb2.AppendResponse(decision_id=request.decision_id)
            problem = self.refusal(request.entry, request.decision_id)
            if problem is not None:
                response.error = problem
            elif request.decision_id in self.log:
                response.error = "duplicate decision id"
            else:
                self.log[request.decision_id] = request.entry
                digest = leaf_hash(b"tampered" if self.corrupt_receipts else request.entry)
                response.receipt.CopyFrom(
                    common_pb2.LineageReceipt(
                        index=len(self.log) - 1, leaf_hash=digest, tree_size=len(self.log)
                    )
                )
            results.append(response)
        return results[:-1] if self.drop_last_result else results

    async def get_entry(self, decision_id: str, *, timeout: float) -> bytes | None:
        return self.log.get(decision_id)

    def refusal(self, data: bytes, decision_id: str) -> str | None:
        """Why lineage refuses this entry: its own rules, as the real service applies them."""
        try:
            check_entry(data, decision_id)
        except EntryRejected as exc:
            return str(exc)
        return None


async def test_concurrent_appends_travel_in_batches_and_each_gets_its_own_receipt() -> None:
    transport = MemoryTransport()
    batcher = BatchingLineage(transport=transport, max_batch=64, linger_s=0.005)
    batcher.start()
    try:
        entries = [entry(n=n) for n in range(200)]
        receipts = await asyncio.gather(
            *(batcher.append(data, did, timeout=5) for data, did in entries)
        )
    finally:
        await batcher.close()

    assert len(transport.batches) < 20
    assert max(transport.batches) <= 64
    for (data, _), receipt in zip(entries, receipts, strict=True):
        assert receipt.leaf_hash == leaf_hash(data)
    assert sorted(r.index for r in receipts) == list(range(200))


async def test_a_receipt_for_other_bytes_is_refused() -> None:
    batcher = BatchingLineage(transport=MemoryTransport(corrupt_receipts=True), linger_s=0)
    batcher.start()
    try:
        data, did = entry()
        with pytest.raises(PeerUnavailable, match="something else"):
            await batcher.append(data, did, timeout=5)
    finally:
        await batcher.close()


async def test_a_batch_answered_with_missing_results_fails_every_caller() -> None:
    batcher = BatchingLineage(
        transport=MemoryTransport(drop_last_result=True), max_batch=8, linger_s=0.01
    )
    batcher.start()
    try:
        results = await asyncio.gather(
            *(batcher.append(*entry(), timeout=5) for _ in range(4)), return_exceptions=True
        )
    finally:
        await batcher.close()

    assert all(isinstance(r, PeerUnavailable) for r in results)


async def test_a_transport_failure_fails_the_whole_batch() -> None:
    batcher = BatchingLineage(
        transport=MemoryTransport(fail=PeerUnavailable("down")), max_batch=8, linger_s=0.01
    )
    batcher.start()
    try:
        results = await asyncio.gather(
            *(batcher.append(*entry(), timeout=5) for _ in range(3)), return_exceptions=True
        )
    finally:
        await batcher.close()

    assert [type(r) for r in results] == [PeerUnavailable] * 3


async def test_a_refused_entry_fails_only_its_caller() -> None:
    transport = MemoryTransport()
    batcher = BatchingLineage(transport=transport, max_batch=8, linger_s=0.01)
    batcher.start()
    try:
        duplicate = entry()
        transport.log[duplicate[1]] = duplicate[0]
        fresh = entry()
        results = await asyncio.gather(
            batcher.append(*duplicate, timeout=5),
            batcher.append(*fresh, timeout=5),
            return_exceptions=True,
        )
    finally:
        await batcher.close()

    assert isinstance(results[0], PeerUnavailable)
    assert isinstance(results[1], common_pb2.LineageReceipt)


async def test_callers_that_gave_up_are_not_sent() -> None:
    transport = MemoryTransport()
    batcher = BatchingLineage(transport=transport, max_batch=8, linger_s=0.05)
    batcher.start()
    try:
        abandoned = asyncio.ensure_future(batcher.append(*entry(), timeout=5))
        await asyncio.sleep(0)
        abandoned.cancel()
        kept = await batcher.append(*entry(), timeout=5)
    finally:
        await batcher.close()

    assert kept.tree_size == 1
    assert transport.batches == [1]


async def test_an_append_lingers_only_while_other_decisions_are_on_their_way() -> None:
    transport = MemoryTransport()
    on_the_way = 0
    batcher = BatchingLineage(transport=transport, linger_s=10, expected=lambda: on_the_way)
    batcher.start()
    try:
        # Nobody else is coming: the append goes at once, not after 10 s.
        alone = await asyncio.wait_for(batcher.append(*entry(), timeout=5), 1.0)
        # One more decision is coming: the batch waits for it.
        on_the_way = 1
        first = asyncio.ensure_future(batcher.append(*entry(n=1), timeout=5))
        await asyncio.sleep(0.05)
        on_the_way = 0
        second = await asyncio.wait_for(batcher.append(*entry(n=2), timeout=5), 1.0)
        first_receipt = await asyncio.wait_for(first, 20.0)
    finally:
        await batcher.close()

    assert alone.tree_size == 1
    assert transport.batches == [1, 2]
    assert sorted([first_receipt.index, second.index]) == [1, 2]


async def test_closing_fails_what_is_still_queued() -> None:
    batcher = BatchingLineage(transport=MemoryTransport(), linger_s=10)
    batcher.start()
    pending = asyncio.ensure_future(batcher.append(*entry(), timeout=5))
    await asyncio.sleep(0.01)
    await batcher.close()

    with pytest.raises(PeerUnavailable):
        await pending


# --- the spool ----------------------------------------------------------------------------


async def test_spooled_denies_survive_a_restart_and_drain_in_order(tmp_path: Path) -> None:
    first = [entry(n=n, decision="DENY") for n in range(3)]
    spool = FileSpool(tmp_path / "spool")
    for data, did in first:
        await spool.put(data, did)

    reopened = FileSpool(tmp_path / "spool")  # a new engine process on the same disk
    transport = MemoryTransport()
    drained = await reopened.drain(transport)

    assert drained == 3
    assert list(transport.log) == [did for _, did in first]
    assert reopened.pending() == []


async def test_an_unfinished_spool_write_is_ignored(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    (tmp_path / f"1-{uuid.uuid4().hex[:8]}.spool.tmp").write_bytes(b'{"half')

    assert spool.pending() == []


async def test_a_spool_that_cannot_reach_lineage_keeps_everything(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    await spool.put(*entry())

    with pytest.raises(PeerUnavailable):
        await spool.drain(MemoryTransport(fail=PeerUnavailable("down")))
    assert len(spool.pending()) == 1


async def test_an_entry_already_logged_byte_for_byte_leaves_the_spool(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    data, did = entry()
    await spool.put(data, did)
    transport = MemoryTransport(log={did: data})

    assert await spool.drain(transport) == 1
    assert transport.log == {did: data}


async def test_an_allow_logged_late_is_amended_by_the_deny_that_was_answered(
    tmp_path: Path,
) -> None:
    # The engine gave up waiting for an ALLOW's receipt and answered DENY; the
    # ALLOW was committed afterwards. The log must say what the caller got.
    did = str(uuid.uuid4())
    allow = canonical_json({"decision_id": did, "decision": "ALLOW"})
    deny = canonical_json(
        {
            "decision_id": did,
            "decision": "DENY",
            "reason": "LINEAGE_UNAVAILABLE",
            "failed_checks": ["lineage"],
        }
    )
    spool = FileSpool(tmp_path)
    await spool.put(deny, did)
    transport = MemoryTransport(log={did: allow})

    assert await spool.drain(transport) == 1
    [amendment_id] = [k for k in transport.log if k != did]
    amendment = json.loads(transport.log[amendment_id])
    assert amendment["type"] == "amendment"
    assert amendment["amends"] == did
    assert amendment["decision"] == "DENY"
    assert amendment["reason"] == "LINEAGE_UNAVAILABLE"
    assert spool.pending() == []


async def test_denies_spooled_together_share_one_durable_write(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    entries = [entry(n=n) for n in range(50)]
    await asyncio.gather(*(spool.put(data, did) for data, did in entries))

    assert 1 <= len(spool.pending()) < 50
    transport = MemoryTransport()
    assert await spool.drain(transport) == 50
    assert transport.log == {did: data for data, did in entries}
    assert spool.pending() == []


async def test_a_drain_interrupted_midway_repeats_safely(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    entries = [entry(n=n) for n in range(3)]
    await asyncio.gather(*(spool.put(data, did) for data, did in entries))
    # The first entry reached lineage before the engine stopped; the group stayed.
    transport = MemoryTransport(log={entries[0][1]: entries[0][0]})

    assert await spool.drain(transport) == 3
    assert len(transport.log) == 3
    assert spool.pending() == []


async def test_a_disk_that_refuses_the_spool_fails_every_put_of_the_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = FileSpool(tmp_path)

    def full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("govmesh.runtime.durable.os.write", full)
    results = await asyncio.gather(*(spool.put(*entry()) for _ in range(3)), return_exceptions=True)

    assert all(isinstance(r, OSError) and r.errno == 28 for r in results)
    assert spool.pending() == []


async def test_a_spool_group_larger_than_a_call_drains_in_several(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    big = [entry(pad="é" * 20_000) for _ in range(300)]  # about 12 MB in one group
    await asyncio.gather(*(spool.put(data, did) for data, did in big))
    transport = MemoryTransport()

    assert await spool.drain(transport) == 300
    assert len(transport.batches) >= 4
    assert len(transport.log) == 300


async def test_a_group_that_cannot_drain_does_not_hold_back_the_others(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    stuck_data, stuck_id = entry(n=1)
    await spool.put(stuck_data, stuck_id)
    later = [entry(n=n) for n in range(2, 5)]
    for data, did in later:
        await spool.put(data, did)

    class RefusesOne(MemoryTransport):
        async def append_batch(
            self, requests: list[lineage_pb2.AppendRequest], *, timeout: float
        ) -> list[lineage_pb2.AppendResponse]:
            if any(r.decision_id == stuck_id for r in requests):
                raise PeerUnavailable("RESOURCE_EXHAUSTED")
            return await super().append_batch(requests, timeout=timeout)

    transport = RefusesOne()
    assert await spool.drain(transport) == 3
    assert set(transport.log) == {did for _, did in later}
    assert len(spool.pending()) == 1


async def test_a_retried_drain_does_not_amend_twice(tmp_path: Path) -> None:
    # Two denies whose ALLOWs were committed late: both need amendments. The
    # second amendment fails once, so the group is drained again.
    logged = {}
    denies = []
    for _ in range(2):
        did = str(uuid.uuid4())
        logged[did] = canonical_json({"decision_id": did, "decision": "ALLOW"})
        denies.append((canonical_json({"decision_id": did, "decision": "DENY"}), did))
    spool = FileSpool(tmp_path)
    await asyncio.gather(*(spool.put(data, did) for data, did in denies))  # one group

    class FailsThirdCall(MemoryTransport):
        calls = 0

        async def append_batch(
            self, requests: list[lineage_pb2.AppendRequest], *, timeout: float
        ) -> list[lineage_pb2.AppendResponse]:
            self.calls += 1
            if self.calls == 3:
                raise PeerUnavailable("lineage restarting")
            return await super().append_batch(requests, timeout=timeout)

    transport = FailsThirdCall(log=dict(logged))
    with contextlib.suppress(PeerUnavailable):
        await spool.drain(transport)
    assert len(spool.pending()) == 1
    await spool.drain(transport)

    amendments = [json.loads(e) for e in transport.log.values() if b'"amendment"' in e]
    assert sorted(a["amends"] for a in amendments) == sorted(logged)
    assert spool.pending() == []


# --- entries lineage refuses ------------------------------------------------------------


def engine_deny(seq: int, **fields: object) -> tuple[bytes, str]:
    return entry(
        v=1,
        type="decision",
        engine={"id": "engine-a", "seq": seq},
        decision="DENY",
        reason="LINEAGE_UNAVAILABLE",
        **fields,
    )


async def test_an_entry_lineage_refuses_is_moved_aside_and_a_refusal_takes_its_place(
    tmp_path: Path,
) -> None:
    # A deny spooled with a subject lineage cannot store (NUL), between two it can.
    before, refused, after = (
        engine_deny(0),
        engine_deny(1, subject="spiffe://test/agent\x00x"),
        engine_deny(2),
    )
    spool = FileSpool(tmp_path)
    await asyncio.gather(*(spool.put(data, did) for data, did in (before, refused, after)))
    transport = MemoryTransport()

    assert await spool.drain(transport) == 3

    # The spool moved on: nothing is left to drain, nothing is sent again.
    assert spool.pending() == []
    sent = len(transport.batches)
    assert await spool.drain(transport) == 0
    assert len(transport.batches) == sent
    # The log holds every decision id, the refused one as a refusal record.
    assert set(transport.log) == {before[1], refused[1], after[1]}
    record = json.loads(transport.log[refused[1]])
    assert record["type"] == "refused"
    assert record["entry_sha256"] == sha256(refused[0]).hexdigest()
    assert "NUL" in record["reason"]
    assert record["engine"] == {"id": "engine-a", "seq": 1}  # the counter stays whole
    assert record["decision"] == "DENY"
    assert check_entry(transport.log[refused[1]], refused[1]).kind == "refused"
    # The refused bytes are kept aside, durably, with the reason.
    [aside] = spool.quarantined()
    head, _, kept = aside.read_bytes().partition(b"\n")
    assert kept == refused[0]
    assert json.loads(head)["decision_id"] == refused[1]
    assert "NUL" in json.loads(head)["reason"]


class StricterLineage(MemoryTransport):
    """A lineage whose rules refuse what the engine's copy of them accepts
    (a newer lineage): the refusal only shows in its answer."""

    def refusal(self, data: bytes, decision_id: str) -> str | None:
        if b"forbidden-by-a-newer-rule" in data:
            return "entry field 'note' is refused by this lineage"
        return super().refusal(data, decision_id)


async def test_an_entry_lineage_refuses_remotely_is_replaced_not_retried_forever(
    tmp_path: Path,
) -> None:
    refused = engine_deny(0, note="forbidden-by-a-newer-rule")
    kept = engine_deny(1)
    spool = FileSpool(tmp_path)
    await asyncio.gather(spool.put(*refused), spool.put(*kept))
    transport = StricterLineage()

    assert await spool.drain(transport) == 2

    assert spool.pending() == []
    assert transport.log[kept[1]] == kept[0]
    record = json.loads(transport.log[refused[1]])
    assert record["type"] == "refused"
    assert record["reason"] == "entry field 'note' is refused by this lineage"
    assert record["entry_sha256"] == sha256(refused[0]).hexdigest()
    assert [p.read_bytes().partition(b"\n")[2] for p in spool.quarantined()] == [refused[0]]


async def test_an_interrupted_refusal_is_not_recorded_twice(tmp_path: Path) -> None:
    # The refusal record reached lineage, then the engine stopped before the
    # group left the spool: the next drain finds the record and moves on.
    refused = engine_deny(0, note="forbidden-by-a-newer-rule")
    spool = FileSpool(tmp_path)
    await spool.put(*refused)

    class FailsAfterTheRecord(StricterLineage):
        calls = 0

        async def append_batch(
            self, requests: list[lineage_pb2.AppendRequest], *, timeout: float
        ) -> list[lineage_pb2.AppendResponse]:
            results = await super().append_batch(requests, timeout=timeout)
            self.calls += 1
            if self.calls == 2:  # the record was appended; its answer is lost
                raise PeerUnavailable("lineage restarting")
            return results

    transport = FailsAfterTheRecord()
    with pytest.raises(PeerUnavailable):
        await spool.drain(transport)
    assert len(spool.pending()) == 1

    assert await spool.drain(transport) == 1
    assert spool.pending() == []
    assert list(transport.log) == [refused[1]]
    assert json.loads(transport.log[refused[1]])["type"] == "refused"


async def test_a_refusal_whose_id_another_entry_holds_takes_a_derived_id(tmp_path: Path) -> None:
    # Lineage logged an ALLOW under the id (committed late), and the deny the
    # engine answered is one lineage refuses: both stay visible.
    allow = canonical_json({"decision_id": (did := str(uuid.uuid4())), "decision": "ALLOW"})
    deny = canonical_json({"decision_id": did, "decision": "DENY", "subject": "agent\x00"})
    spool = FileSpool(tmp_path)
    await spool.put(deny, did)
    transport = MemoryTransport(log={did: allow})

    assert await spool.drain(transport) == 1

    assert transport.log[did] == allow
    [record] = [json.loads(e) for k, e in transport.log.items() if k != did]
    assert record["type"] == "refused"
    assert record["entry_sha256"] == sha256(deny).hexdigest()


async def test_a_damaged_spool_line_is_moved_aside_not_a_stuck_drain(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    good = engine_deny(0)
    await spool.put(*good)
    (tmp_path / "00000000000000000001-damaged0.spool").write_bytes(b"\xff\xfe {not json\n")

    assert await spool.drain(MemoryTransport()) == 2
    assert spool.pending() == []
    assert len(spool.quarantined()) == 1


@pytest.mark.parametrize(
    ("refused", "reason"),
    [
        (b"\xff\xfe not even UTF-8", "entry is not UTF-8"),
        (canonical_json({"engine": {"id": "e\x00", "seq": 1}}), "x"),
        (canonical_json({"engine": {"id": "e", "seq": -1}, "decision": "MAYBE"}), ""),
        (canonical_json({"decision": "DENY"}), "\x00\ud800" + "r" * 100_000),
    ],
)
def test_a_refusal_record_is_always_one_lineage_accepts(refused: bytes, reason: str) -> None:
    # Whatever was refused and whatever lineage said: the record must not be
    # refused in turn, or the spool would hold it for ever.
    record_id = refusal_id("not-a-uuid", refused)
    record, document = refusal_record(record_id, refused, reason, time=datetime.now(UTC))
    assert entry_problem(record, record_id) is None
    assert document["entry_sha256"] == sha256(refused).hexdigest()
    assert refuses(record, refused)


async def test_denies_a_full_disk_refuses_reach_lineage_when_it_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lineage is down and the spool's disk is full: the denies already answered
    # must still reach the log, not vanish with the failed write.
    spool = FileSpool(tmp_path)
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("govmesh.runtime.durable.os.write", full)
    entries = [entry(n=n, decision="DENY") for n in range(3)]
    results = await asyncio.gather(*(spool.put(*e) for e in entries), return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results)  # the engine knows: not durable
    assert spool.unwritten == 3
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # no half-written file

    with pytest.raises(PeerUnavailable):
        await spool.drain(MemoryTransport(fail=PeerUnavailable("down")))
    assert spool.unwritten == 3  # lineage down too: still held

    transport = MemoryTransport()
    assert await spool.drain(transport) == 3  # the disk is still full: straight to lineage
    assert transport.log == {did: data for data, did in entries}
    assert spool.unwritten == 0

    # Once the disk has room again, held denies go to disk first (surviving a restart).
    await asyncio.gather(*(spool.put(*entry()) for _ in range(2)), return_exceptions=True)
    monkeypatch.setattr("govmesh.runtime.durable.os.write", real_write)
    await spool.flush()
    assert spool.unwritten == 0
    reopened = FileSpool(tmp_path)
    assert await reopened.drain(MemoryTransport()) == 2
