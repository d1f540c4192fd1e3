"""What the callers saw, checked against the lineage log.

1. Every ALLOW a caller received has its entry at its receipt's index:
   that decision id, that leaf hash, decision ALLOW, and no amendment.
2. Every DENY a caller received is in the log exactly once under its
   decision id: as a DENY, or as the ALLOW the engine gave up on (lineage
   committed it after its deadline) followed by exactly one amendment to DENY.
3. No answer took longer than the engine's bound plus a margin, and no call
   ran into the caller's own deadline.
4. Nothing invalid was allowed: forged mandates and forbidden requests never,
   and no proof was allowed twice.
5. `govmesh lineage verify` passes over the whole log.

The log is read straight from the database (a superuser connection), not
through lineage: reconciliation must not depend on the service under test.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from govmesh.faults.load import Outcome
from govmesh.runtime.db import libpq_database_url


@dataclass(frozen=True)
class Logged:
    index: int
    decision_id: str
    leaf_hash: bytes
    entry: dict[str, Any]


class LogReader:
    """The log's entries, read incrementally by index."""

    def __init__(self, database_url: str) -> None:
        self._url = libpq_database_url(database_url)
        self.by_index: dict[int, Logged] = {}
        self.by_id: dict[str, Logged] = {}
        self.amendments: dict[str, list[Logged]] = {}

    async def refresh(self) -> None:
        start = len(self.by_index)
        conn = await asyncpg.connect(self._url)
        try:
            rows = await conn.fetch(
                "SELECT idx, decision_id::text AS id, entry, leaf_hash FROM lineage_entries "
                "WHERE idx >= $1 ORDER BY idx",
                start,
            )
        finally:
            await conn.close()
        for row in rows:
            logged = Logged(
                row["idx"], row["id"], bytes(row["leaf_hash"]), json.loads(row["entry"])
            )
            self.by_index[logged.index] = logged
            self.by_id[logged.decision_id] = logged
            if logged.entry.get("type") == "amendment":
                self.amendments.setdefault(str(logged.entry.get("amends")), []).append(logged)


@dataclass
class Reconciliation:
    """The counts of one reconciliation and everything that did not hold."""

    requests: int = 0
    allows: int = 0
    denies: int = 0
    unanswered: Counter[str] = field(default_factory=Counter)
    reconciled: int = 0
    amended: int = 0
    max_latency_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        """Answers whose decision the log does not hold as the caller saw it."""
        return self.requests - sum(self.unanswered.values()) - self.reconciled


def _deny_problem(outcome: Outcome, log: LogReader) -> str | None:
    logged = log.by_id.get(outcome.decision_id)
    if logged is None:
        return f"DENY {outcome.decision_id} ({outcome.reason}) is not in the log"
    amendments = log.amendments.get(outcome.decision_id, [])
    decided = logged.entry.get("decision")
    if decided == "DENY" and not amendments:
        return None
    if decided == "ALLOW" and [a.entry.get("decision") for a in amendments] == ["DENY"]:
        return None
    return f"DENY {outcome.decision_id} is logged as {decided} with {len(amendments)} amendments"


def _allow_problem(outcome: Outcome, log: LogReader) -> str | None:
    if outcome.receipt_index is None or not outcome.grant:
        return f"ALLOW {outcome.decision_id} came without a receipt or a grant"
    logged = log.by_index.get(outcome.receipt_index)
    if logged is None:
        return f"ALLOW {outcome.decision_id}: no entry at its receipt's index"
    if (
        logged.decision_id != outcome.decision_id
        or logged.leaf_hash != outcome.receipt_leaf
        or logged.entry.get("decision") != "ALLOW"
    ):
        return f"ALLOW {outcome.decision_id}: the entry at index {logged.index} is another"
    if log.amendments.get(outcome.decision_id):
        return f"ALLOW {outcome.decision_id} was amended: the engine logged it as not answered"
    return None


def _problem(outcome: Outcome, log: LogReader) -> str | None:
    if outcome.decision == "ALLOW":
        return _allow_problem(outcome, log)
    return _deny_problem(outcome, log)


async def reconcile(
    outcomes: Iterable[Outcome],
    database_url: str,
    *,
    bound_s: float,
    margin_s: float,
    drain_timeout_s: float,
    log: LogReader | None = None,
) -> Reconciliation:
    """Check `outcomes` against the log; denies spooled by the engine get `drain_timeout_s`."""
    outcomes = list(outcomes)
    log = log or LogReader(database_url)
    result = Reconciliation(requests=len(outcomes))
    answered = [o for o in outcomes if o.answered]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + drain_timeout_s
    while True:
        # A deny spooled while lineage was away, or an ALLOW lineage committed
        # after the engine gave up on it (amended on the drain), gets there late.
        await log.refresh()
        unsettled = [o for o in answered if _problem(o, log) is not None]
        if not unsettled or loop.time() > deadline:
            break
        await asyncio.sleep(0.5)

    allowed_proofs: Counter[str] = Counter()
    for outcome in outcomes:
        result.max_latency_s = max(result.max_latency_s, outcome.latency)
        # 3. Within the bound: an answer late, or a call the caller gave up on.
        if outcome.latency > bound_s + margin_s or outcome.code == "DEADLINE_EXCEEDED":
            result.problems.append(
                f"{outcome.phase}: {outcome.kind} call took {outcome.latency:.2f} s "
                f"({outcome.code} {outcome.decision} {outcome.reason}), "
                f"bound {bound_s:.2f} s + {margin_s:.2f} s"
            )
        if not outcome.answered:
            result.unanswered[outcome.code] += 1
            continue
        if outcome.decision == "ALLOW":
            result.allows += 1
            allowed_proofs[outcome.proof_jti] += 1
            problem = _allow_problem(outcome, log)  # 1.
            # 4. Nothing invalid allowed.
            if problem is None and outcome.kind in ("forged", "forbidden"):
                problem = f"a {outcome.kind} request was allowed ({outcome.decision_id})"
        else:
            result.denies += 1
            problem = _deny_problem(outcome, log)  # 2.
            if problem is None and outcome.decision_id in log.amendments:
                result.amended += 1
        if problem is None:
            result.reconciled += 1
        else:
            result.problems.append(f"{outcome.phase}: {problem}")
    for jti, count in allowed_proofs.items():
        if count > 1:
            result.problems.append(f"proof {jti} was allowed {count} times")
    return result


def audit(database_url: str, vkey: Path) -> tuple[int, str]:
    """`govmesh lineage verify` over the database; its exit code and output."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "govmesh.cli",
            "lineage",
            "verify",
            "--database-url",
            database_url,
            "--vkey",
            str(vkey),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    return run.returncode, run.stdout + run.stderr
