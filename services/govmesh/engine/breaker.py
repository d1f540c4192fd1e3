"""A circuit breaker per peer: stop waiting on a peer that keeps failing.

Pure logic over an injected monotonic clock, no gRPC. The engine asks
`admit()` before each call to a peer and reports how the call went. After
`failure_threshold` consecutive failures the breaker opens: calls are refused
at once, so a decision denies PEER_UNAVAILABLE without spending its deadline
on a peer that is down. After `cool_down_s` seconds one call, the probe, is let
through (half-open); every other call is still refused until the probe's
outcome is known. A probe that gets a usable answer closes the breaker; one
that fails opens it for another cool-down. A peer seen answering otherwise
(`peer_answered`: its health check, see `recovery`) ends the cool-down early.

A breaker only ever refuses calls: it never supplies an answer, so it cannot
turn a decision into an ALLOW. A probe's answer is checked like any other,
and the engine reports it as a success only once it passed those checks.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)


class BreakerState(enum.IntEnum):
    """The state of a breaker; the values are what the metric exports."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True)
class Permit:
    """Leave to make one call, to be handed back through `succeeded`, `failed` or `released`."""

    generation: int
    probe: bool


#: Called with the peer's name, the old state and the new state on each change.
StateHook = Callable[[str, BreakerState, BreakerState], None]


class CircuitBreaker:
    """Closed, open and half-open, for one peer."""

    def __init__(
        self,
        *,
        peer: str,
        failure_threshold: int,
        cool_down_s: float,
        monotonic: Callable[[], float],
        on_change: StateHook | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if cool_down_s <= 0:
            raise ValueError("cool_down_s must be positive")
        self.peer = peer
        self._threshold = failure_threshold
        self._cool_down_s = cool_down_s
        self._monotonic = monotonic
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        # Each change of state starts a new generation: an outcome reported
        # under an older one (a call let through before the breaker opened)
        # says nothing about the peer now and is ignored.
        self._generation = 0

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker past its cool-down still reads OPEN until probed)."""
        return self._state

    def admit(self) -> Permit | None:
        """A permit for one call, or None: refuse the call without making it."""
        if self._state is BreakerState.CLOSED:
            return Permit(self._generation, probe=False)
        if self._state is BreakerState.OPEN:
            if self._monotonic() - self._opened_at < self._cool_down_s:
                return None
            self._change(BreakerState.HALF_OPEN)
        # Half-open: exactly one probe at a time; everyone else waits it out.
        if self._probing:
            return None
        self._probing = True
        return Permit(self._generation, probe=True)

    def succeeded(self, permit: Permit) -> None:
        """The call got an answer that passed the engine's checks."""
        if permit.generation != self._generation:
            return
        if permit.probe:
            self._probing = False
            self._change(BreakerState.CLOSED)
        else:
            self._failures = 0

    def failed(self, permit: Permit) -> None:
        """The call timed out or could not reach the peer."""
        if permit.generation != self._generation:
            return
        if permit.probe:
            self._probing = False
            self._open()
            return
        self._failures += 1
        if self._failures >= self._threshold:
            self._open()

    def released(self, permit: Permit) -> None:
        """The call was abandoned without an outcome (its decision was cancelled).

        A probe slot must not stay taken for ever: the next call may probe.
        """
        if permit.probe and permit.generation == self._generation:
            self._probing = False

    def peer_answered(self) -> None:
        """Something other than a call saw the peer answer (its health check): probe now.

        Ends an open breaker's cool-down early, so that the next call is the
        probe. Only the probe's answer, checked like any other, closes the
        breaker: a health check never lets more than that one call through.
        """
        if self._state is BreakerState.OPEN:
            self._opened_at = self._monotonic() - self._cool_down_s

    def _open(self) -> None:
        self._opened_at = self._monotonic()
        self._change(BreakerState.OPEN)

    def _change(self, state: BreakerState) -> None:
        old = self._state
        self._state = state
        self._generation += 1
        self._failures = 0
        if old is state:
            return
        log = logger.warning if state is BreakerState.OPEN else logger.info
        log(
            "circuit breaker of %s: %s -> %s",
            self.peer,
            old.name.lower(),
            state.name.lower(),
            extra={"peer": self.peer, "breaker_state": state.name.lower()},
        )
        if self._on_change is not None:
            self._on_change(self.peer, old, state)
