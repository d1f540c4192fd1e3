"""`govmesh up`'s restart schedule on a manual clock: backoff, reset, crash loop."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from govmesh.cli.up import Backoff, CrashLoop, RestartPolicy


@dataclass
class ManualClock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


POLICY = RestartPolicy(delay=0.5, max_delay=4.0, stable_after=30.0, max_restarts=10, window=60.0)


def test_delays_double_up_to_the_cap() -> None:
    clock = ManualClock()
    backoff = Backoff("lineage", POLICY, monotonic=clock)
    delays = []
    for _ in range(6):
        clock.now += 1.0
        delays.append(backoff.exited(1))
        backoff.started()
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_service_that_stayed_up_starts_again_from_the_shortest_delay() -> None:
    clock = ManualClock()
    backoff = Backoff("policy", POLICY, monotonic=clock)
    for _ in range(3):
        backoff.exited(1)
        backoff.started()
    assert backoff.exited(1) == 4.0
    backoff.started()
    clock.now += 29.0
    assert backoff.exited(1) == 4.0  # not stable yet: the delay stays capped
    backoff.started()
    clock.now += 30.0
    assert backoff.exited(1) == 0.5


def test_too_many_exits_within_the_window_is_a_crash_loop_naming_the_service() -> None:
    clock = ManualClock()
    policy = RestartPolicy(delay=0.5, max_delay=4.0, stable_after=30.0, max_restarts=2, window=60)
    backoff = Backoff("verification", policy, monotonic=clock)
    backoff.exited(-9)
    clock.now += 10
    backoff.exited(1)
    clock.now += 10
    with pytest.raises(CrashLoop) as raised:
        backoff.exited(-9)
    assert str(raised.value) == (
        "verification keeps crashing: it exited 3 times within 60 s "
        "(last exit codes: -9, 1, -9); stopping the mesh"
    )


def test_exits_spread_wider_than_the_window_are_not_a_loop() -> None:
    clock = ManualClock()
    policy = RestartPolicy(delay=0.5, max_delay=4.0, stable_after=30.0, max_restarts=2, window=60)
    backoff = Backoff("lineage", policy, monotonic=clock)
    for _ in range(20):
        backoff.exited(-9)
        clock.now += 31.0
