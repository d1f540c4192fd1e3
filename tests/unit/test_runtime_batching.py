"""The batching core: batches cut by linger, count and cost; failures stay within their batch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import pytest

from govmesh.runtime.batching import BatchQueue, Limit, Pending


class Refused(Exception):
    """The error the queue's owner gives its callers."""


@dataclass
class Recorder:
    """A flush that answers each item with its double, once `release` is set."""

    batches: list[list[object]] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    failing: Callable[[list[object]], bool] = lambda items: False
    concurrent: int = 0
    most_concurrent: int = 0

    async def flush(self, batch: list[Pending[object, object]], slot: int) -> None:
        items = [p.item for p in batch]
        self.batches.append(items)
        self.slots.append(slot)
        self.concurrent += 1
        self.most_concurrent = max(self.most_concurrent, self.concurrent)
        try:
            await self.release.wait()
        finally:
            self.concurrent -= 1
        if self.failing(items):
            raise RuntimeError("the store fell over")
        for pending in batch:
            if not pending.future.done():
                pending.future.set_result(pending.item * 2)  # type: ignore[operator]


QueueOf = Callable[..., BatchQueue[object, object]]


@pytest.fixture
async def queue_of() -> AsyncIterator[QueueOf]:
    made: list[BatchQueue[object, object]] = []

    def make(recorder: Recorder, **options: object) -> BatchQueue[object, object]:
        queue: BatchQueue[object, object] = BatchQueue(
            name="test",
            flush=recorder.flush,
            error=Refused,
            **options,  # type: ignore[arg-type]
        )
        queue.start()
        made.append(queue)
        return queue

    yield make
    for queue in made:
        await queue.stop()


async def _settled(futures: Sequence[asyncio.Future[object]]) -> list[object]:
    return list(await asyncio.gather(*futures, return_exceptions=True))


async def test_a_lone_item_waits_out_the_linger_and_company_within_it_joins(
    queue_of: QueueOf,
) -> None:
    recorder = Recorder()
    recorder.release.set()
    queue = queue_of(recorder, linger_s=0.1, max_items=10)

    started = time.monotonic()
    first = queue.submit(1)
    await asyncio.sleep(0.03)
    second = queue.submit(2)
    assert await first == 2 and await second == 4
    waited = time.monotonic() - started

    assert recorder.batches == [[1, 2]]
    assert waited >= 0.09


async def test_a_lone_item_does_not_linger_when_no_company_is_on_its_way(
    queue_of: QueueOf,
) -> None:
    recorder = Recorder()
    recorder.release.set()
    on_the_way = 0
    queue = queue_of(recorder, linger_s=5.0, max_items=10, expected=lambda: on_the_way)

    answer = await asyncio.wait_for(queue.submit(1), 1.0)

    assert answer == 2
    assert recorder.batches == [[1]]


async def test_an_item_lingers_until_the_company_on_its_way_has_joined(
    queue_of: QueueOf,
) -> None:
    recorder = Recorder()
    recorder.release.set()
    on_the_way = 1
    queue = queue_of(recorder, linger_s=10.0, max_items=10, expected=lambda: on_the_way)

    first = queue.submit(1)
    await asyncio.sleep(0.05)
    assert not first.done()
    on_the_way = 0
    second = queue.submit(2)
    # The last one expected is queued: the batch goes then, not after 10 s.
    answers = await asyncio.wait_for(_settled([first, second]), 1.0)

    assert answers == [2, 4]
    assert recorder.batches == [[1, 2]]


async def test_a_full_batch_does_not_wait_out_the_linger(queue_of: QueueOf) -> None:
    recorder = Recorder()
    recorder.release.set()
    queue = queue_of(recorder, linger_s=5.0, max_items=3)

    answers = await asyncio.wait_for(_settled([queue.submit(n) for n in range(3)]), 1.0)

    assert answers == [0, 2, 4]
    assert recorder.batches == [[0, 1, 2]]


async def test_items_that_wait_for_a_slot_form_batches_cut_at_max_items(
    queue_of: QueueOf,
) -> None:
    recorder = Recorder()
    queue = queue_of(recorder, max_items=4, max_in_flight=1)

    first = queue.submit(0)
    await asyncio.sleep(0.01)  # in flight, holding the only slot
    rest = [queue.submit(n) for n in range(1, 11)]
    await asyncio.sleep(0.01)
    recorder.release.set()

    assert await _settled([first, *rest]) == [n * 2 for n in range(11)]
    assert recorder.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]


async def test_a_cost_limit_cuts_a_batch_and_an_oversized_item_travels_alone(
    queue_of: QueueOf,
) -> None:
    recorder = Recorder()
    queue = queue_of(recorder, limits=[Limit(10, len)], max_in_flight=1)

    first = queue.submit("a")
    await asyncio.sleep(0.01)
    rest = [queue.submit(s) for s in ("bbbb", "cccc", "dddd", "e" * 25, "ff")]
    await asyncio.sleep(0.01)
    recorder.release.set()
    await _settled([first, *rest])

    assert recorder.batches == [["a"], ["bbbb", "cccc"], ["dddd"], ["e" * 25], ["ff"]]


async def test_two_limits_each_cut_the_batch(queue_of: QueueOf) -> None:
    recorder = Recorder()
    queue = queue_of(
        recorder, limits=[Limit(100, len), Limit(3, lambda s: s.count("x"))], max_in_flight=1
    )

    first = queue.submit("-")
    await asyncio.sleep(0.01)
    rest = [queue.submit(s) for s in ("x", "xx", "x", "--", "x")]
    await asyncio.sleep(0.01)
    recorder.release.set()
    await _settled([first, *rest])

    assert recorder.batches == [["-"], ["x", "xx"], ["x", "--", "x"]]


async def test_a_failing_flush_fails_exactly_the_items_of_its_batch(queue_of: QueueOf) -> None:
    recorder = Recorder(failing=lambda items: 3 in items)
    queue = queue_of(recorder, max_items=2, max_in_flight=1)

    first = queue.submit(0)
    await asyncio.sleep(0.01)
    rest = [queue.submit(n) for n in range(1, 6)]
    await asyncio.sleep(0.01)
    recorder.release.set()
    answers = await _settled([first, *rest])

    assert recorder.batches == [[0], [1, 2], [3, 4], [5]]
    assert answers[:3] == [0, 2, 4] and answers[5] == 10
    for failed in answers[3:5]:
        assert isinstance(failed, Refused)
        assert "RuntimeError: the store fell over" in str(failed)
    # The queue outlives the batch that failed.
    assert await queue.submit(7) == 14


async def test_a_flush_that_answers_some_items_then_fails_leaves_those_answers(
    queue_of: QueueOf,
) -> None:
    async def flush(batch: list[Pending[object, object]], slot: int) -> None:
        batch[0].future.set_result("first")
        raise RuntimeError("then it broke")

    queue: BatchQueue[object, object] = BatchQueue(name="test", flush=flush, error=Refused)
    queue.start()
    try:
        answers = await _settled([queue.submit(n) for n in range(3)])
    finally:
        await queue.stop()

    assert answers[0] == "first"
    assert all(isinstance(a, Refused) for a in answers[1:])


async def test_a_flush_may_answer_its_items_after_it_returns(queue_of: QueueOf) -> None:
    # The lineage sequencer hands out receipts after its state-file write:
    # the core must not touch futures that a flush returned with unanswered.
    later: list[Pending[object, object]] = []

    async def flush(batch: list[Pending[object, object]], slot: int) -> None:
        later.extend(batch)

    queue: BatchQueue[object, object] = BatchQueue(name="test", flush=flush, error=Refused)
    queue.start()
    try:
        future = queue.submit(1)
        await asyncio.sleep(0.02)
        assert not future.done()
        later[0].future.set_result("receipt")
        assert await future == "receipt"
    finally:
        await queue.stop()


async def test_a_cancelled_waiting_item_is_never_flushed(queue_of: QueueOf) -> None:
    recorder = Recorder()
    queue = queue_of(recorder, max_in_flight=1)

    first = queue.submit(0)
    await asyncio.sleep(0.01)
    given_up, kept = queue.submit(1), queue.submit(2)
    given_up.cancel()
    recorder.release.set()

    assert await first == 0 and await kept == 4
    assert recorder.batches == [[0], [2]]


async def test_a_caller_cancelled_while_waiting_gives_up_its_item(queue_of: QueueOf) -> None:
    recorder = Recorder()
    queue = queue_of(recorder, max_in_flight=1)

    async def caller(n: int) -> object:
        return await queue.submit(n)

    first = asyncio.ensure_future(caller(0))
    await asyncio.sleep(0.01)
    impatient = asyncio.ensure_future(caller(1))
    await asyncio.sleep(0.01)
    impatient.cancel()
    await asyncio.sleep(0)
    recorder.release.set()

    assert await first == 0
    assert await queue.submit(3) == 6
    assert [1] not in recorder.batches and all(1 not in b for b in recorder.batches)


async def test_at_most_max_in_flight_batches_flush_at_once_each_on_its_own_slot(
    queue_of: QueueOf,
) -> None:
    recorder = Recorder()
    queue = queue_of(recorder, max_items=1, max_in_flight=3)

    futures = [queue.submit(n) for n in range(9)]
    await asyncio.sleep(0.02)
    assert len(recorder.batches) == 3
    assert sorted(recorder.slots) == [0, 1, 2]
    recorder.release.set()
    await _settled(futures)

    assert recorder.most_concurrent == 3
    assert len(recorder.batches) == 9


async def test_stop_without_grace_fails_queued_and_in_flight_items() -> None:
    recorder = Recorder()  # never released
    queue: BatchQueue[object, object] = BatchQueue(
        name="test", flush=recorder.flush, error=Refused, max_in_flight=1
    )
    queue.start()
    in_flight = queue.submit(0)
    await asyncio.sleep(0.01)
    queued = queue.submit(1)

    await asyncio.wait_for(queue.stop(), 1.0)

    for future in (in_flight, queued):
        with pytest.raises(Refused, match="test is stopping"):
            await future
    assert recorder.batches == [[0]]
    with pytest.raises(Refused, match="test is not running"):
        queue.submit(2)


async def test_stop_with_grace_drains_what_is_queued_then_refuses() -> None:
    recorder = Recorder()
    queue: BatchQueue[object, object] = BatchQueue(
        name="test", flush=recorder.flush, error=Refused, max_items=2, max_in_flight=1
    )
    queue.start()
    futures = [queue.submit(n) for n in range(5)]
    await asyncio.sleep(0.01)
    stopping = asyncio.ensure_future(queue.stop(grace=5.0))
    await asyncio.sleep(0.01)
    with pytest.raises(Refused, match="not running"):
        queue.submit(9)
    assert not stopping.done()
    recorder.release.set()
    await asyncio.wait_for(stopping, 1.0)

    assert await _settled(futures) == [0, 2, 4, 6, 8]


async def test_stop_with_grace_fails_what_does_not_finish_in_time() -> None:
    recorder = Recorder()  # never released
    queue: BatchQueue[object, object] = BatchQueue(
        name="test", flush=recorder.flush, error=Refused, max_in_flight=1
    )
    queue.start()
    futures = [queue.submit(n) for n in range(3)]
    await asyncio.sleep(0.01)

    started = time.monotonic()
    await asyncio.wait_for(queue.stop(grace=0.1), 1.0)

    assert time.monotonic() - started >= 0.09
    assert all(isinstance(a, Refused) for a in await _settled(futures))


async def test_a_queue_never_started_refuses() -> None:
    recorder = Recorder()
    queue: BatchQueue[object, object] = BatchQueue(name="idle", flush=recorder.flush, error=Refused)
    with pytest.raises(Refused, match="idle is not running"):
        queue.submit(1)


@pytest.mark.parametrize(
    "options",
    [
        {"max_items": 0},
        {"max_in_flight": 0},
        {"limits": [Limit(0, len)]},
        {"limits": [Limit(9, len)] * 3},
    ],
)
def test_a_queue_without_room_for_one_item_is_refused(options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="test"):
        BatchQueue(name="test", flush=Recorder().flush, error=Refused, **options)  # type: ignore[arg-type]
