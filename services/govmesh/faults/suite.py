"""The faults, injected one after another while the load runs, and the report.

For each fault: the load is labelled with its name, the fault is injected
and held, then cleared; the mesh must return to ALLOWs on its own within
`resume_timeout_s`; then what the callers saw so far is reconciled with the
log (`reconcile.py`). After the last fault the load stops, everything is
reconciled once more and `govmesh lineage verify` runs over the whole log.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from govmesh.faults.load import LoadGenerator, Outcome
from govmesh.faults.mesh import PEERS, FaultMesh
from govmesh.faults.reconcile import LogReader, Reconciliation, audit, reconcile

logger = logging.getLogger(__name__)

#: Added to the engine's own bound (budget + spool timeout) before a wait counts
#: as too long: the caller's clock also runs over gRPC transport, the client's
#: event loop and a busy machine's scheduler, none of which the engine controls.
LATENCY_MARGIN_S = 1.0
#: How long the mesh may take to answer ALLOW again once a fault is cleared
#: (a restarted peer imports and connects; a policy replica re-reads its store).
RESUME_TIMEOUT_S = 45.0
#: How long spooled denies may take to reach the log once lineage is back.
DRAIN_TIMEOUT_S = 30.0
#: What the engine logs when the spool's disk refuses a write (engine/lineage.py).
SPOOL_REFUSED = "the spool's disk refuses denies"


@dataclass
class FaultResult:
    """One fault: what the callers saw while it lasted, and how the mesh came back."""

    name: str
    felt: int = 0  # valid requests not allowed while the fault was on
    resumed_after_s: float | None = None
    reconciliation: Reconciliation | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        found = list(self.notes)
        if self.resumed_after_s is None:
            found.append(f"{self.name}: no ALLOW within {RESUME_TIMEOUT_S:.0f} s after clearing")
        if self.reconciliation is not None:
            found.extend(self.reconciliation.problems)
        return found


@dataclass
class SuiteReport:
    """The counts the suite prints."""

    faults: list[FaultResult]
    total: Reconciliation
    audit_code: int
    audit_output: str
    elapsed_s: float

    @property
    def problems(self) -> list[str]:
        found = [p for f in self.faults for p in f.problems]
        found.extend(self.total.problems)
        if self.audit_code != 0:
            found.append(f"govmesh lineage verify exited {self.audit_code}:\n{self.audit_output}")
        return list(dict.fromkeys(found))

    def summary(self) -> str:
        t = self.total
        unanswered = ", ".join(f"{k} {v}" for k, v in sorted(t.unanswered.items())) or "none"
        lines = [
            f"requests {t.requests}, faults injected {len(self.faults)}, "
            f"decisions reconciled {t.reconciled} (ALLOW {t.allows}, DENY {t.denies}, "
            f"of them amended ALLOWs {t.amended}), lost {t.lost}",
            f"no answer (not decisions): {unanswered}",
            f"longest wait {t.max_latency_s:.2f} s; audit exit {self.audit_code}; "
            f"{self.elapsed_s:.0f} s",
        ]
        for f in self.faults:
            resumed = "never" if f.resumed_after_s is None else f"{f.resumed_after_s:.1f} s"
            lines.append(
                f"  {f.name}: felt by {f.felt} valid requests, ALLOW again after {resumed}"
            )
        return "\n".join(lines)


Fault = Callable[[FaultMesh, "Hold"], Awaitable[None]]


@dataclass
class Hold:
    """How long a fault is held, and what to note while it is."""

    seconds: float
    notes: list[str] = field(default_factory=list)

    async def __call__(self) -> None:
        await asyncio.sleep(self.seconds)


# --- the faults ---------------------------------------------------------------------


def kill(peer: str) -> Fault:
    async def inject(mesh: FaultMesh, hold: Hold) -> None:
        await mesh.services[peer].kill()
        await hold()
        await mesh.services[peer].start()

    return inject


def pause(peer: str) -> Fault:
    async def inject(mesh: FaultMesh, hold: Hold) -> None:
        mesh.services[peer].signal(signal.SIGSTOP)
        try:
            await hold()
        finally:
            mesh.services[peer].signal(signal.SIGCONT)

    return inject


def slow(peer: str) -> Fault:
    async def inject(mesh: FaultMesh, hold: Hold) -> None:
        # Just past the deadline: every answer arrives, none in time.
        delay = mesh.deadlines.peer_timeout_s(peer) * 1.2
        mesh.proxies[peer].set_mode("delay", delay)
        try:
            await hold()
        finally:
            mesh.proxies[peer].set_mode("pass")

    return inject


async def restart_postgres(mesh: FaultMesh, hold: Hold) -> None:
    await mesh.postgres.stop()
    try:
        await hold()
    finally:
        await mesh.postgres.resume()


async def spool_disk_full(mesh: FaultMesh, hold: Hold) -> None:
    # A full disk matters only to denies that must wait in the spool: lineage
    # is down while the disk is full.
    refusals = mesh.engine.log_count(SPOOL_REFUSED)
    async with mesh.spool.full():
        await mesh.services["lineage"].kill()
        await hold()
    if mesh.engine.log_count(SPOOL_REFUSED) == refusals:
        hold.notes.append("the spool's disk never refused a deny: the fault was not injected")
    await mesh.services["lineage"].start()


async def restart_engine_with_spool(mesh: FaultMesh, hold: Hold) -> None:
    await mesh.services["lineage"].kill()
    await hold()
    code = await mesh.engine.terminate()
    pending = len(mesh.spool.pending())
    if code != 0:
        hold.notes.append(f"engine exited {code} on SIGTERM")
    if not pending:
        hold.notes.append("the engine stopped with an empty spool: the fault was not injected")
    await mesh.services["lineage"].start()
    await mesh.engine.start()


def all_faults() -> list[tuple[str, Fault]]:
    """Every fault of the suite, in the order it runs them."""
    faults: list[tuple[str, Fault]] = []
    for peer in PEERS:
        faults.append((f"SIGKILL {peer}", kill(peer)))
    for peer in PEERS:
        faults.append((f"SIGSTOP {peer}", pause(peer)))
    for peer in PEERS:
        faults.append((f"slow {peer}", slow(peer)))
    faults.append(("restart Postgres", restart_postgres))
    faults.append(("spool disk full", spool_disk_full))
    faults.append(("restart engine with spooled denies", restart_engine_with_spool))
    return faults


# --- running them -----------------------------------------------------------------


async def _resumed(load: LoadGenerator, since: float, timeout: float) -> float | None:
    """Seconds from `since` until a valid request sent after it was allowed, or None."""
    found = asyncio.get_running_loop().create_future()

    def watch(outcome: Outcome) -> None:
        valid_allow = outcome.kind == "valid" and outcome.decision == "ALLOW"
        if valid_allow and outcome.started >= since and not found.done():
            found.set_result(outcome.started + outcome.latency)

    for outcome in load.outcomes:
        watch(outcome)
    load.listeners.append(watch)
    try:
        return float(await asyncio.wait_for(found, timeout)) - since
    except TimeoutError:
        return None
    finally:
        load.listeners.remove(watch)


async def run_suite(
    mesh: FaultMesh,
    *,
    faults: list[tuple[str, Fault]] | None = None,
    rounds: int = 1,
    hold_s: float = 2.5,
    rate: float = 40.0,
    concurrency: int = 32,
    duration_s: float | None = None,
) -> SuiteReport:
    """Run the faults under load (`rounds` times, or until `duration_s` has passed)."""
    started = time.monotonic()
    faults = faults if faults is not None else all_faults()
    bound = mesh.deadlines.answer_bound_s
    load = LoadGenerator(
        mesh.engine_target,
        mesh.setup,
        rate=rate,
        concurrency=concurrency,
        # Past the bound and its margin: a call that runs into this is itself a finding.
        timeout=bound + LATENCY_MARGIN_S + 2.0,
    )
    log = LogReader(mesh.database_url)
    stop = asyncio.Event()
    running = asyncio.create_task(load.run(stop))
    results: list[FaultResult] = []
    try:
        await asyncio.sleep(2.0)  # steady state first
        round_ = 0
        if not faults:
            # Load alone, for the duration: the same counts, with nothing injected.
            await asyncio.sleep(duration_s or 10.0)
        while faults:
            for name, inject in faults:
                label = name if rounds == 1 and duration_s is None else f"{name} #{round_ + 1}"
                results.append(await _one(mesh, load, log, label, inject, hold_s, bound))
            round_ += 1
            if duration_s is None and round_ >= rounds:
                break
            if duration_s is not None and time.monotonic() - started >= duration_s:
                break
    finally:
        load.phase = "end"
        stop.set()
        await running
    total = await reconcile(
        load.outcomes,
        mesh.database_url,
        bound_s=bound,
        margin_s=LATENCY_MARGIN_S,
        drain_timeout_s=DRAIN_TIMEOUT_S,
        log=log,
    )
    code, output = await asyncio.to_thread(audit, mesh.database_url, mesh.setup.lineage_vkey)
    return SuiteReport(results, total, code, output, time.monotonic() - started)


async def _one(
    mesh: FaultMesh,
    load: LoadGenerator,
    log: LogReader,
    name: str,
    inject: Fault,
    hold_s: float,
    bound: float,
) -> FaultResult:
    logger.info("fault: %s", name)
    result = FaultResult(name)
    load.phase = name
    hold = Hold(hold_s)
    await inject(mesh, hold)
    result.notes.extend(f"{name}: {note}" for note in hold.notes)
    cleared = time.monotonic()
    result.resumed_after_s = await _resumed(load, cleared, RESUME_TIMEOUT_S)
    load.phase = f"after {name}"
    mine = [o for o in load.outcomes if o.phase == name]
    result.felt = sum(1 for o in mine if o.kind == "valid" and o.decision != "ALLOW")
    if not result.felt:
        result.notes.append(f"{name}: no valid request was refused: the fault was not felt")
    result.reconciliation = await reconcile(
        mine,
        mesh.database_url,
        bound_s=bound,
        margin_s=LATENCY_MARGIN_S,
        drain_timeout_s=DRAIN_TIMEOUT_S,
        log=log,
    )
    logger.info("fault %s: %s", name, result.reconciliation)
    return result
