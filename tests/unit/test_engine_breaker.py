"""Circuit breakers per peer: the state machine on a manual clock, then inside the engine."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from govmesh.engine.breaker import BreakerState, CircuitBreaker
from govmesh.engine.core import DecisionConfig
from govmesh.engine.metrics import EngineMetrics
from govmesh.engine.protocols import PeerTimeout, PeerUnavailable
from govmesh.v1 import common_pb2, engine_pb2, verification_pb2
from tests.unit.engine_fakes import (
    FakeLineage,
    FakePolicy,
    FakeVerification,
    authorize_request,
    build_engine,
    passing_verification,
)

ALLOW = common_pb2.ALLOW
DENY = common_pb2.DENY


@dataclass
class ManualClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(
    clock: ManualClock, changes: list[tuple[str, str, str]] | None = None
) -> CircuitBreaker:
    def record(peer: str, old: BreakerState, new: BreakerState) -> None:
        if changes is not None:
            changes.append((peer, old.name, new.name))

    return CircuitBreaker(
        peer="verification", failure_threshold=3, cool_down_s=2.0, monotonic=clock, on_change=record
    )


def state_of(b: CircuitBreaker) -> BreakerState:
    # Through a call, so that mypy does not narrow the state across the steps of a test.
    return b.state


def fail_times(b: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        permit = b.admit()
        assert permit is not None
        b.failed(permit)


def reason(response: engine_pb2.AuthorizeResponse) -> str:
    return common_pb2.DenyReason.Name(response.reason)


# --- the state machine ---------------------------------------------------------


def test_opens_after_consecutive_failures_only() -> None:
    clock = ManualClock()
    changes: list[tuple[str, str, str]] = []
    b = breaker(clock, changes)
    fail_times(b, 2)
    ok = b.admit()
    assert ok is not None
    b.succeeded(ok)  # a success in between starts the count again
    fail_times(b, 2)
    assert state_of(b) is BreakerState.CLOSED
    fail_times(b, 1)
    assert state_of(b) is BreakerState.OPEN
    assert changes == [("verification", "CLOSED", "OPEN")]


def test_open_refuses_until_the_cool_down_then_lets_exactly_one_probe_through() -> None:
    clock = ManualClock()
    b = breaker(clock)
    fail_times(b, 3)
    clock.now += 1.9
    assert b.admit() is None
    clock.now += 0.2
    probe = b.admit()
    assert probe is not None and probe.probe
    assert state_of(b) is BreakerState.HALF_OPEN
    # Everyone racing the probe is refused, however many they are.
    assert [b.admit() for _ in range(100)] == [None] * 100
    b.succeeded(probe)
    assert state_of(b) is BreakerState.CLOSED
    assert b.admit() is not None


def test_a_failed_probe_opens_it_for_another_full_cool_down() -> None:
    clock = ManualClock()
    changes: list[tuple[str, str, str]] = []
    b = breaker(clock, changes)
    fail_times(b, 3)
    clock.now += 2.0
    probe = b.admit()
    assert probe is not None
    clock.now += 0.5  # the probe took a while to fail
    b.failed(probe)
    assert state_of(b) is BreakerState.OPEN
    clock.now += 1.9
    assert b.admit() is None
    clock.now += 0.1
    assert b.admit() is not None
    assert changes == [
        ("verification", "CLOSED", "OPEN"),
        ("verification", "OPEN", "HALF_OPEN"),
        ("verification", "HALF_OPEN", "OPEN"),
        ("verification", "OPEN", "HALF_OPEN"),
    ]


def test_a_straggler_admitted_before_it_opened_cannot_close_it() -> None:
    clock = ManualClock()
    b = breaker(clock)
    straggler = b.admit()
    assert straggler is not None
    fail_times(b, 3)
    b.succeeded(straggler)  # an old call that happened to answer
    assert state_of(b) is BreakerState.OPEN
    assert b.admit() is None
    clock.now += 2.0
    probe = b.admit()
    assert probe is not None
    b.succeeded(straggler)  # nor can it stand in for the probe
    assert state_of(b) is BreakerState.HALF_OPEN
    assert b.admit() is None


def test_an_abandoned_probe_frees_the_slot_without_closing() -> None:
    clock = ManualClock()
    b = breaker(clock)
    fail_times(b, 3)
    clock.now += 2.0
    probe = b.admit()
    assert probe is not None
    b.released(probe)
    assert state_of(b) is BreakerState.HALF_OPEN
    again = b.admit()
    assert again is not None and again.probe
    assert b.admit() is None


def test_a_peer_seen_answering_ends_the_cool_down_and_the_probe_still_decides() -> None:
    clock = ManualClock()
    b = breaker(clock)
    b.peer_answered()  # closed: nothing to end
    assert state_of(b) is BreakerState.CLOSED
    fail_times(b, 3)
    assert b.admit() is None

    b.peer_answered()
    # Still open until a call comes: that call is the one probe, everyone else waits.
    assert state_of(b) is BreakerState.OPEN
    probe = b.admit()
    assert probe is not None and probe.probe
    assert b.admit() is None
    b.peer_answered()  # half-open: no second probe for it
    assert b.admit() is None
    b.failed(probe)
    # A failed probe opens it for a full cool-down again.
    assert state_of(b) is BreakerState.OPEN
    clock.now += 1.9
    assert b.admit() is None


def test_the_state_is_exported_as_a_gauge_per_peer() -> None:
    clock = ManualClock()
    registry = CollectorRegistry()
    metrics = EngineMetrics(registry)
    b = CircuitBreaker(
        peer="policy",
        failure_threshold=1,
        cool_down_s=1.0,
        monotonic=clock,
        on_change=metrics.on_breaker_change,
    )

    def exported() -> float | None:
        return registry.get_sample_value("govmesh_engine_peer_breaker_state", {"peer": "policy"})

    assert exported() == 0.0

    fail_times(b, 1)
    assert exported() == 2.0
    clock.now += 1.0
    probe = b.admit()
    assert probe is not None
    assert exported() == 1.0
    b.succeeded(probe)
    assert exported() == 0.0


@pytest.mark.parametrize(("threshold", "cool_down"), [(0, 1.0), (3, 0.0), (3, -1.0)])
def test_nonsense_settings_are_refused(threshold: int, cool_down: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        CircuitBreaker(
            peer="p", failure_threshold=threshold, cool_down_s=cool_down, monotonic=time.monotonic
        )


# --- in the engine -------------------------------------------------------------


def config() -> DecisionConfig:
    return DecisionConfig(
        verification_timeout_s=0.3,
        policy_timeout_s=0.3,
        lineage_timeout_s=0.3,
        budget_s=0.5,
        breaker_failures=3,
        breaker_cool_down_s=5.0,
    )


async def test_with_the_breaker_open_denies_come_back_at_once_without_asking_the_peer() -> None:
    # A peer that hangs: every call costs the full deadline until the breaker opens.
    verification = FakeVerification(delay=10.0)
    h = build_engine(verification=verification, config=config())
    for _ in range(3):
        response = await h.engine.authorize(authorize_request())
        assert response.decision == DENY
        assert reason(response) == "PEER_TIMEOUT"
    assert state_of(h.engine.breakers["verification"]) is BreakerState.OPEN
    asked = len(verification.calls)

    started = time.monotonic()
    responses = [await h.engine.authorize(authorize_request()) for _ in range(5)]
    elapsed = time.monotonic() - started

    for response in responses:
        assert response.decision == DENY
        assert reason(response) == "PEER_UNAVAILABLE"
        assert "verification unavailable: circuit open" in response.message
    assert len(verification.calls) == asked
    # Five decisions together in less than one peer deadline (0.3 s): none waited for it.
    assert elapsed < 0.3, f"an open breaker still waited: {elapsed:.3f} s for five decisions"
    # The denies are recorded like any other.
    assert [e["decision"] for e in h.lineage.decoded()[-5:]] == ["DENY"] * 5


async def test_half_open_lets_one_probe_through_a_crowd_and_recovers_on_its_own() -> None:
    clock = ManualClock()
    verification = FakeVerification(error=PeerUnavailable("UNAVAILABLE: connection refused"))
    h = build_engine(verification=verification, config=config(), monotonic=clock)
    for _ in range(3):
        await h.engine.authorize(authorize_request())
    assert state_of(h.engine.breakers["verification"]) is BreakerState.OPEN

    # The peer is back; the cool-down is over; fifty decisions race for the probe.
    verification.error = None
    verification.delay = 0.05
    clock.now += 5.0
    before = len(verification.calls)
    answers = await asyncio.gather(*(h.engine.authorize(authorize_request()) for _ in range(50)))

    assert len(verification.calls) - before == 1
    assert sum(a.decision == ALLOW for a in answers) == 1
    refused = [a for a in answers if a.decision == DENY]
    assert len(refused) == 49
    assert all("circuit open" in a.message for a in refused)
    assert state_of(h.engine.breakers["verification"]) is BreakerState.CLOSED
    assert (await h.engine.authorize(authorize_request())).decision == ALLOW


async def test_a_probe_answered_wrongly_neither_allows_nor_closes_the_breaker() -> None:
    clock = ManualClock()
    verification = FakeVerification(error=PeerTimeout("verification: deadline exceeded"))
    h = build_engine(verification=verification, config=config(), monotonic=clock)
    for _ in range(3):
        await h.engine.authorize(authorize_request())
    clock.now += 5.0

    def wrong(request: verification_pb2.VerifyRequest) -> verification_pb2.VerifyResponse:
        answer = passing_verification(request)
        answer.request_digest = "for-another-request"
        return answer

    verification.error = None
    verification.answer = wrong
    response = await h.engine.authorize(authorize_request())
    assert response.decision == DENY
    assert reason(response) == "INCONSISTENT_ANSWERS"
    assert state_of(h.engine.breakers["verification"]) is BreakerState.HALF_OPEN

    # The next decision probes again; an honest answer then closes it.
    verification.answer = passing_verification
    assert (await h.engine.authorize(authorize_request())).decision == ALLOW
    assert state_of(h.engine.breakers["verification"]) is BreakerState.CLOSED


async def test_answers_that_disagree_never_open_a_breaker() -> None:
    # What a request carries can make answers inconsistent; a caller must not
    # be able to cut every other caller off from a healthy peer that way.
    def wrong(request: verification_pb2.VerifyRequest) -> verification_pb2.VerifyResponse:
        answer = passing_verification(request)
        answer.request_digest = "for-another-request"
        return answer

    h = build_engine(verification=FakeVerification(answer=wrong), config=config())
    for _ in range(10):
        response = await h.engine.authorize(authorize_request())
        assert reason(response) == "INCONSISTENT_ANSWERS"
    assert state_of(h.engine.breakers["verification"]) is BreakerState.CLOSED


async def test_policy_has_its_own_breaker() -> None:
    policy = FakePolicy(error=PeerUnavailable("UNAVAILABLE: connection refused"))
    h = build_engine(policy=policy, config=config())
    for _ in range(3):
        await h.engine.authorize(authorize_request())
    asked = len(policy.calls)
    response = await h.engine.authorize(authorize_request())
    assert response.decision == DENY
    assert reason(response) == "PEER_UNAVAILABLE"
    assert "policy unavailable: circuit open" in response.message
    assert len(policy.calls) == asked
    assert state_of(h.engine.breakers["policy"]) is BreakerState.OPEN
    assert state_of(h.engine.breakers["verification"]) is BreakerState.CLOSED


async def test_an_open_lineage_breaker_turns_allows_into_denies_and_still_spools_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    lineage = FakeLineage(error=PeerUnavailable("UNAVAILABLE: connection refused"))
    h = build_engine(lineage=lineage, config=config(), monotonic=clock)
    with caplog.at_level(logging.WARNING, logger="govmesh.engine.breaker"):
        for _ in range(3):
            response = await h.engine.authorize(authorize_request())
            assert reason(response) == "LINEAGE_UNAVAILABLE"
    assert state_of(h.engine.breakers["lineage"]) is BreakerState.OPEN
    assert "circuit breaker of lineage: closed -> open" in caplog.text

    # The lineage is back, but the breaker is open: nothing is appended, nothing allowed.
    lineage.error = None
    spooled = len(h.spool.entries)
    response = await h.engine.authorize(authorize_request())
    assert response.decision == DENY
    assert reason(response) == "LINEAGE_UNAVAILABLE"
    assert "circuit open" in response.message
    assert not response.grant
    assert lineage.entries == []
    assert len(h.spool.entries) == spooled + 1
    assert b'"decision":"DENY"' in h.spool.entries[-1][0]

    # After the cool-down the probe appends, the breaker closes, ALLOW returns.
    clock.now += 5.0
    response = await h.engine.authorize(authorize_request())
    assert response.decision == ALLOW
    assert response.lineage.tree_size == 1
    assert state_of(h.engine.breakers["lineage"]) is BreakerState.CLOSED
