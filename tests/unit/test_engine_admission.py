"""Admission: a bounded number of decisions at once, FIFO, and early refusals past that."""

from __future__ import annotations

import asyncio
import logging

import pytest

from govmesh.engine.admission import Admission, Refusal, Refused, Slot


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _admission(clock: Clock, *, limit: int = 2, queue: int = 4, budget_s: float = 0.1) -> Admission:
    return Admission(max_concurrent=limit, max_queue=queue, budget_s=budget_s, monotonic=clock)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_free_slots_admit_at_once_whatever_the_deadline() -> None:
    admission = _admission(Clock())
    # A deadline shorter than the budget with nothing to wait for: decided as
    # without admission control (the decision itself runs under the budget).
    first = await admission.admit(time_remaining=0.01)
    second = await admission.admit(time_remaining=None)
    assert admission.stats().active == 2
    first.release()
    second.release()
    assert admission.stats().active == 0
    assert admission.stats().admitted == 2


async def test_past_the_limit_requests_wait_in_fifo_order() -> None:
    admission = _admission(Clock(), limit=1, queue=8)
    held = await admission.admit(time_remaining=None)
    order: list[int] = []
    slots: list[Slot] = []

    async def wait(n: int) -> None:
        slot = await admission.admit(time_remaining=None)
        order.append(n)
        slots.append(slot)

    waiting = [asyncio.create_task(wait(n)) for n in range(4)]
    await _settle()
    assert order == []  # nobody passes the one decision in progress
    assert admission.stats().queued == 4
    held.release()
    for expected in range(4):
        await _settle()
        assert order == list(range(expected + 1))
        assert admission.stats().active == 1  # the slot moved on, never two at once
        slots[-1].release()
    await asyncio.gather(*waiting)
    assert admission.stats().active == 0


async def test_a_full_queue_refuses_at_once() -> None:
    admission = _admission(Clock(), limit=1, queue=2)
    held = await admission.admit(time_remaining=None)
    waiting = [asyncio.create_task(admission.admit(time_remaining=None)) for _ in range(2)]
    await _settle()

    with pytest.raises(Refused) as refused:
        await admission.admit(time_remaining=None)  # no deadline: it could wait for ever
    assert refused.value.why is Refusal.QUEUE_FULL
    assert str(refused.value) == "queue full"
    assert admission.stats().refused_queue_full == 1
    assert admission.stats().queued == 2  # the refused request took no place in line

    held.release()
    for task in waiting:
        (await task).release()


async def _measure(admission: Admission, clock: Clock, seconds: float, count: int = 50) -> None:
    for _ in range(count):
        slot = await admission.admit(time_remaining=None)
        clock.now += seconds
        slot.release()


async def test_a_deadline_that_cannot_cover_the_wait_plus_the_budget_is_refused() -> None:
    clock = Clock()
    admission = _admission(clock, limit=2, queue=16, budget_s=0.1)
    await _measure(admission, clock, 0.1, count=200)
    held = [await admission.admit(time_remaining=None) for _ in range(2)]
    # Decisions take 0.1 s: the first in line waits 0.1 / 2 = 0.05 s and
    # then needs the 0.1 s budget for its decision.
    assert admission.expected_wait(0) == pytest.approx(0.05, rel=1e-3)

    with pytest.raises(Refused) as refused:
        await admission.admit(time_remaining=0.149)
    assert refused.value.why is Refusal.DEADLINE
    assert refused.value.expected_wait_s == pytest.approx(0.05, rel=1e-3)
    assert str(refused.value) == "deadline cannot cover the wait"

    covered = asyncio.create_task(admission.admit(time_remaining=0.151))
    await _settle()
    assert admission.stats().queued == 1
    # Second in line: two slots must free up first.
    assert admission.expected_wait(1) == pytest.approx(0.1, rel=1e-3)
    with pytest.raises(Refused):
        await admission.admit(time_remaining=0.199)
    assert admission.stats().refused_deadline == 2

    held[0].release()
    (await covered).release()
    held[1].release()


async def test_before_any_decision_is_measured_a_caller_that_covers_the_budget_may_wait() -> None:
    clock = Clock()
    admission = _admission(clock, limit=1, queue=16, budget_s=0.1)
    held = await admission.admit(time_remaining=None)
    # Nothing measured: the wait is estimated as none, so a burst at start-up is not
    # refused on a guess; only a deadline below the budget itself is.
    waiting = [asyncio.create_task(admission.admit(time_remaining=0.2)) for _ in range(10)]
    await _settle()
    assert admission.stats().queued == 10
    with pytest.raises(Refused):
        await admission.admit(time_remaining=0.09)
    held.release()
    for task in waiting:
        await _settle()
        (await task).release()
    assert admission.stats().admitted == 11


async def test_the_first_slow_decisions_of_a_cold_start_do_not_set_the_estimate_alone() -> None:
    clock = Clock()
    admission = _admission(clock, limit=1, queue=16, budget_s=1.0)
    await _measure(admission, clock, 0.5, count=4)  # a cold start
    assert admission.stats().decision_time_s < 0.1
    await _measure(admission, clock, 0.01, count=100)
    assert admission.stats().decision_time_s == pytest.approx(0.01, abs=0.001)


async def test_the_expected_wait_follows_the_measured_decision_time() -> None:
    clock = Clock()
    admission = _admission(clock, limit=1, queue=16, budget_s=1.0)
    await _measure(admission, clock, 0.5)
    # Decisions that now take 10 ms, far below their 1 s budget, pull the average down.
    await _measure(admission, clock, 0.010, count=200)
    assert admission.stats().decision_time_s == pytest.approx(0.010, abs=0.001)
    held = await admission.admit(time_remaining=None)
    waiting = [asyncio.create_task(admission.admit(time_remaining=None)) for _ in range(9)]
    await _settle()
    assert admission.expected_wait(9) == pytest.approx(0.100, abs=0.01)
    # 1.09 s covers ten decisions' wait and the budget; 1.05 s does not.
    late = asyncio.create_task(admission.admit(time_remaining=1.11))
    await _settle()
    assert not late.done()
    with pytest.raises(Refused):
        await admission.admit(time_remaining=1.05)

    held.release()
    for task in [*waiting, late]:
        await _settle()
        (await task).release()


async def test_a_caller_who_leaves_the_line_is_never_admitted_and_frees_its_place() -> None:
    admission = _admission(Clock(), limit=1, queue=1)
    held = await admission.admit(time_remaining=None)
    leaving = asyncio.create_task(admission.admit(time_remaining=None))
    await _settle()
    assert admission.stats().queued == 1
    leaving.cancel()
    await _settle()
    assert leaving.cancelled()
    assert admission.stats().queued == 0
    # Its place is free again, and the slot goes to the next caller, not to the one who left.
    staying = asyncio.create_task(admission.admit(time_remaining=None))
    await _settle()
    held.release()
    slot = await staying
    assert admission.stats().active == 1
    assert admission.stats().admitted == 2
    slot.release()
    assert admission.stats().active == 0


async def test_a_slot_handed_to_a_caller_who_just_left_passes_to_the_next() -> None:
    admission = _admission(Clock(), limit=1, queue=4)
    held = await admission.admit(time_remaining=None)
    leaving = asyncio.create_task(admission.admit(time_remaining=None))
    staying = asyncio.create_task(admission.admit(time_remaining=None))
    await _settle()
    held.release()  # hands the slot to `leaving`, which has not run yet...
    leaving.cancel()  # ...and is cancelled before it does
    await _settle()
    assert leaving.cancelled()
    slot = await staying
    assert admission.stats().active == 1
    slot.release()
    assert admission.stats().active == 0


async def test_a_caller_whose_deadline_ran_out_in_line_is_refused_not_decided() -> None:
    clock = Clock()
    admission = _admission(clock, limit=1, queue=4, budget_s=0.1)
    held = await admission.admit(time_remaining=None)
    waiting = asyncio.create_task(admission.admit(time_remaining=0.5))
    await _settle()
    clock.now += 0.45  # the decision ahead took far longer than estimated
    held.release()
    with pytest.raises(Refused) as refused:
        await waiting
    assert refused.value.why is Refusal.DEADLINE
    assert admission.stats().active == 0  # the slot was given back
    assert admission.stats().admitted == 1


async def test_releasing_twice_frees_one_slot() -> None:
    admission = _admission(Clock(), limit=1, queue=0)
    slot = await admission.admit(time_remaining=None)
    slot.release()
    slot.release()
    assert admission.stats().active == 0
    again = await admission.admit(time_remaining=None)
    with pytest.raises(Refused):
        await admission.admit(time_remaining=None)  # a queue of 0: any wait is refused
    again.release()


async def test_refusals_are_logged_at_most_once_a_second_with_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    admission = _admission(clock, limit=1, queue=0)
    held = await admission.admit(time_remaining=None)
    with caplog.at_level(logging.WARNING, logger="govmesh.engine.admission"):
        for _ in range(50):
            with pytest.raises(Refused):
                await admission.admit(time_remaining=None)
            clock.now += 0.01
        clock.now += 1.0
        with pytest.raises(Refused):
            await admission.admit(time_remaining=None)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("refused 1 requests")
    assert lines[1].startswith("refused 50 requests")  # 49 since the first line, and this one
    assert admission.stats().refused == 51
    held.release()


def test_an_admission_without_a_slot_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="slot"):
        Admission(max_concurrent=0, max_queue=1, budget_s=0.1, monotonic=Clock())
