"""The walk over the entries, and what only the whole walk shows (counters, amendments)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from govmesh.lineage import merkle
from govmesh.lineage.auditor.anchors import check_anchor_root
from govmesh.lineage.auditor.report import (
    Anchor,
    AnchorStatus,
    Finding,
    FindingKind,
    RefusedEntry,
    span,
    which_differs,
)
from govmesh.lineage.auditor.source import LogSource, SourceEntry
from govmesh.lineage.core import EntryRejected, check_entry

#: The decision a refusal record may not stand for: an ALLOW is answered only once logged.
_ALLOW = "ALLOW"


class EntryType(StrEnum):
    """The entry types the auditor treats apart (an entry's "type")."""

    DECISION = "decision"
    AMENDMENT = "amendment"
    REFUSED = "refused"


@dataclass(frozen=True)
class Amendment:
    """An amendment entry and the decision it names, checked once the walk is done."""

    index: int
    decision_id: str
    target: str


@dataclass
class Counter:
    """One engine's counter: the next expected value and values seen ahead of it."""

    next: int = 0
    ahead: dict[int, int] = field(default_factory=dict)  # counter value -> entry index
    count: int = 0


@dataclass(frozen=True)
class Walk:
    """What step 2 found walking the entries in index order."""

    size: int  # entries read
    anchor_statuses: list[AnchorStatus]  # one per anchor, in the order given
    matched: list[int]  # checkpoint sizes whose signed root the entries hash to
    mismatched: list[int]  # checkpoint sizes whose signed root they do not
    decision_ids: dict[int, str]  # entries between the last match and the first mismatch
    counters: dict[str, Counter]
    amendments: list[Amendment]
    refused: list[RefusedEntry]
    findings: list[Finding]


async def walk_entries(
    source: LogSource, *, roots: Mapping[int, bytes], anchors: Sequence[Anchor]
) -> Walk:
    """Step 2: each entry in index order, and the root at every anchor's and every
    signed checkpoint's size. `anchors` must be sorted by size."""
    frontier = merkle.Frontier()
    expected = 0
    shifted = False  # after a gap, stored subtree hashes no longer line up with positions
    statuses = [AnchorStatus.NOT_CHECKED for _ in anchors]
    by_size: dict[int, list[int]] = {}
    for position, anchor in enumerate(anchors):
        by_size.setdefault(anchor.size, []).append(position)
    largest_held = 0  # the largest anchor the entries read so far hold
    matched: list[int] = []
    mismatched: list[int] = []
    decision_ids: dict[int, str] = {}
    unproven: dict[int, str] | None = {}  # decision ids since the last matching checkpoint
    counters: dict[str, Counter] = {}
    amendments: list[Amendment] = []
    refused: list[RefusedEntry] = []
    findings: list[Finding] = []

    # A gap in the indices is its own finding; the leaves no longer sit where
    # the anchors saw them, so their root says nothing more (`shifted`).
    if 0 in by_size:
        largest_held, found = _check_anchors_at(
            anchors, by_size[0], statuses, size=0, root=frontier.root(), largest_held=0
        )
        findings += found
    async for page in source.entries():
        for row in page:
            misplaced = _check_position(row, expected)
            if misplaced is not None:
                findings.append(misplaced)
                if misplaced.kind == FindingKind.ORDER:
                    continue  # a repeated index is not walked again
                shifted = True
            expected = row.index + 1
            if unproven is not None:
                unproven[row.index] = row.decision_id
            findings += _check_entry(row, counters, amendments, refused)
            leaf = merkle.leaf_hash(row.entry)
            if leaf != row.leaf_hash:
                findings.append(_leaf_differs(row))
            completed = frontier.append(leaf)
            if row.nodes is not None and not shifted:
                findings += _check_nodes(row.index, completed, row.nodes)
            if frontier.size in by_size and not shifted:
                largest_held, found = _check_anchors_at(
                    anchors,
                    by_size[frontier.size],
                    statuses,
                    size=frontier.size,
                    root=frontier.root(),
                    largest_held=largest_held,
                )
                findings += found
            if frontier.size in roots:
                if frontier.root() == roots[frontier.size]:
                    matched.append(frontier.size)
                    if unproven is not None:
                        unproven.clear()
                else:
                    findings.append(_root_differs(frontier.size, max(matched, default=0)))
                    mismatched.append(frontier.size)
                    if unproven is not None:
                        decision_ids.update(unproven)
                        unproven = None
    return Walk(
        size=frontier.size,
        anchor_statuses=statuses,
        matched=matched,
        mismatched=mismatched,
        decision_ids=decision_ids,
        counters=counters,
        amendments=amendments,
        refused=refused,
        findings=findings,
    )


def _check_anchors_at(
    anchors: Sequence[Anchor],
    positions: Sequence[int],
    statuses: list[AnchorStatus],
    *,
    size: int,
    root: bytes,
    largest_held: int,
) -> tuple[int, list[Finding]]:
    """Check the anchors at `positions` (all of `size`) against the root over the
    first `size` entries, setting their `statuses`. Returns the largest anchor now
    held, and the forks."""
    findings: list[Finding] = []
    held = largest_held
    for position in positions:
        statuses[position], finding = check_anchor_root(
            anchors[position], size=size, root=root, largest_held=largest_held
        )
        if finding is not None:
            findings.append(finding)
        if statuses[position] == AnchorStatus.HELD:
            held = size
    return held, findings


def _check_position(row: SourceEntry, expected: int) -> Finding | None:
    """The index must be the next one: an earlier one repeats, a later one leaves a gap."""
    if row.index < expected:
        return Finding(
            FindingKind.ORDER,
            f"entry index {row.index} appears again after {expected - 1}",
            first=row.index,
            last=row.index,
            direct=True,
        )
    if row.index > expected:
        return Finding(
            FindingKind.MISSING,
            f"entries {span(expected, row.index - 1)} are missing: "
            f"index {expected - 1} is followed by {row.index}",
            first=expected,
            last=row.index - 1,
            direct=True,
        )
    return None


def _wrong(row: SourceEntry, kind: FindingKind, message: str) -> Finding:
    """A finding that this entry's own stored form is wrong."""
    return Finding(
        kind, message, first=row.index, last=row.index, decision_id=row.decision_id, direct=True
    )


def _leaf_differs(row: SourceEntry) -> Finding:
    return _wrong(
        row,
        FindingKind.LEAF,
        f"entry {row.index} ({row.decision_id}) does not hash to its "
        "stored leaf hash: its bytes or its hash were changed",
    )


def _root_differs(size: int, proven: int) -> Finding:
    """The first `size` entries do not hash to the checkpoint of that size; those
    below `proven` (the largest matching checkpoint) do."""
    return Finding(
        FindingKind.CHECKPOINT,
        f"the first {size} entries do not hash to the signed checkpoint of size {size}: "
        f"{which_differs(proven, size - 1)} from what the log signed",
        first=proven,
        last=size - 1,
        tree_size=size,
    )


def _check_nodes(index: int, completed: list[bytes], nodes: bytes) -> list[Finding]:
    """The stored subtree hashes an entry completes must equal their recomputation."""
    stored = [nodes[i : i + 32] for i in range(0, len(nodes), 32)]
    if len(stored) != len(completed) or len(nodes) % 32:
        return [
            Finding(
                FindingKind.NODE,
                f"entry {index} stores {len(stored)} subtree hashes, expected {len(completed)}",
                first=index,
                last=index,
            )
        ]
    for level, (mine, theirs) in enumerate(zip(completed, stored, strict=True), start=1):
        if mine != theirs:
            start = index + 1 - (1 << level)
            return [
                Finding(
                    FindingKind.NODE,
                    f"the stored hash of entries {start}..{index} differs from their "
                    "recomputed hash",
                    first=start,
                    last=index,
                )
            ]
    return []


def _check_entry(
    row: SourceEntry,
    counters: dict[str, Counter],
    amendments: list[Amendment],
    refused: list[RefusedEntry],
) -> list[Finding]:
    """The entry's own rules and columns; it is added to `amendments` or `refused`
    when it is one, and its engine's counter in `counters` moves on."""
    try:
        entry = check_entry(row.entry, row.decision_id)
    except EntryRejected as exc:
        return [
            _wrong(
                row,
                FindingKind.ENTRY,
                f"entry {row.index} ({row.decision_id}) is not a valid entry: {exc}",
            )
        ]
    findings: list[Finding] = []
    if row.has_columns and (
        row.kind != entry.kind
        or row.subject != entry.subject
        or row.trace_id != entry.trace_id
        or row.decided_at != entry.time
    ):
        findings.append(
            _wrong(
                row,
                FindingKind.COLUMNS,
                f"the query columns of entry {row.index} do not repeat its bytes",
            )
        )
    if entry.kind == EntryType.AMENDMENT and entry.amends is not None:
        amendments.append(Amendment(row.index, row.decision_id, str(entry.amends)))
    if entry.kind == EntryType.REFUSED:
        # The rules checked the hash and the reason; what remains is what it claims.
        document = json.loads(row.entry)
        refused.append(
            RefusedEntry(row.index, row.decision_id, document["entry_sha256"], document["reason"])
        )
        if document.get("decision") == _ALLOW:
            findings.append(
                _wrong(
                    row,
                    FindingKind.REFUSED,
                    f"entry {row.index} records a refused ALLOW: an ALLOW is answered "
                    "only once its own entry is logged",
                )
            )
    if entry.engine_id is None or entry.engine_seq is None:
        return findings
    counter = counters.setdefault(entry.engine_id, Counter())
    counter.count += 1
    seq = entry.engine_seq
    if seq < counter.next or seq in counter.ahead:
        findings.append(
            _wrong(
                row,
                FindingKind.ENGINE,
                f"engine {entry.engine_id}: counter {seq} appears again at entry {row.index}",
            )
        )
        return findings
    counter.ahead[seq] = row.index
    while counter.next in counter.ahead:
        counter.ahead.pop(counter.next)
        counter.next += 1
    return findings


def check_counters(counters: Mapping[str, Counter]) -> tuple[dict[str, int], list[Finding]]:
    """Step 6: each engine's counter must run from 0 with no gap. Returns the
    decisions logged per engine, and the gaps."""
    engines: dict[str, int] = {}
    findings: list[Finding] = []
    for engine_id, counter in sorted(counters.items()):
        engines[engine_id] = counter.count
        if counter.ahead:
            first_seen = min(counter.ahead)
            findings.append(
                Finding(
                    FindingKind.ENGINE,
                    f"engine {engine_id}: counter {span(counter.next, first_seen - 1)} "
                    f"never logged (counter {first_seen} is at entry {counter.ahead[first_seen]})",
                    first=counter.ahead[first_seen],
                    last=counter.ahead[first_seen],
                )
            )
    return engines, findings


async def check_amendments(source: LogSource, amendments: Sequence[Amendment]) -> list[Finding]:
    """Step 6: every amendment must name a decision logged before it."""
    if not amendments:
        return []
    targets = await source.locate([a.target for a in amendments])
    findings: list[Finding] = []
    for amendment in amendments:
        found = targets.get(amendment.target)
        if found is None or found[0] >= amendment.index or found[1] != EntryType.DECISION:
            findings.append(
                Finding(
                    FindingKind.AMENDMENT,
                    f"entry {amendment.index} amends {amendment.target}, which is not a "
                    "decision logged before it",
                    first=amendment.index,
                    last=amendment.index,
                    decision_id=amendment.decision_id,
                    direct=True,
                )
            )
    return findings
