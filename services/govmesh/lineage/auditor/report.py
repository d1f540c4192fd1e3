"""What an audit reports: findings, their kinds, and the report that holds them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from govmesh.lineage import merkle
from govmesh.runtime.errors import InvalidInput

#: Findings kept per kind beyond the first few (the rest are counted).
MAX_FINDINGS_PER_KIND = 20


class AuditSetupError(InvalidInput, ValueError):
    """The audit was asked to check something it cannot: an anchor that is not a
    checkpoint signed by the log key, or a required witness without a key."""


class FindingKind(StrEnum):
    """What a finding is about; the value is printed and written to JSON."""

    CHECKPOINT = "checkpoint"
    COSIGNATURE = "cosignature"
    ORDER = "order"
    MISSING = "missing"
    ENTRY = "entry"
    COLUMNS = "columns"
    REFUSED = "refused"
    ENGINE = "engine"
    LEAF = "leaf"
    NODE = "node"
    ANCHOR = "anchor"
    TRUNCATED = "truncated"
    UNSIGNED = "unsigned"
    HEAD = "head"
    CONSISTENCY = "consistency"
    AMENDMENT = "amendment"
    WITNESS = "witness"


@dataclass(frozen=True)
class Finding:
    """One thing that does not check out.

    `first`..`last` are the entries it can be pinned to (inclusive), None
    when it concerns no entry (a forged checkpoint, a cosignature).
    `direct` findings show an entry's own stored form is wrong; the others
    narrow where a difference lies.
    """

    kind: FindingKind
    message: str
    first: int | None = None
    last: int | None = None
    tree_size: int | None = None
    decision_id: str | None = None
    direct: bool = False


class AnchorStatus(StrEnum):
    """What became of one anchor; the value is printed and written to JSON."""

    HELD = "held"  # the log holds it
    ROLLED_BACK = "rolled back"  # the log is shorter
    FORKED = "forked"  # another root at its size
    NOT_CHECKED = "not checked"  # an earlier gap in the indices


@dataclass(frozen=True)
class Anchor:
    """A checkpoint of the log seen before this audit, its log signature verified."""

    label: str  # where it came from, e.g. its file name
    size: int
    root: bytes


@dataclass
class AnchorCheck:
    """What the audit found for one anchor."""

    anchor: Anchor
    status: AnchorStatus = AnchorStatus.NOT_CHECKED


@dataclass
class RequiredWitness:
    """How far a required witness has cosigned the log."""

    name: str
    largest: int | None = None  # the largest checkpoint size it validly cosigned
    unwitnessed: int = 0  # entries beyond `largest`


@dataclass
class WitnessSummary:
    """What one trusted witness cosigned."""

    name: str
    vkey: str
    cosigned: list[int] = field(default_factory=list)

    @property
    def largest(self) -> int | None:
        return max(self.cosigned) if self.cosigned else None


@dataclass(frozen=True)
class RefusedEntry:
    """A refusal record: an entry lineage refused, and what stands in its place."""

    index: int
    decision_id: str
    entry_sha256: str
    reason: str


@dataclass
class AuditReport:
    """The outcome of one audit."""

    source: str
    entries: int = 0
    checkpoints: int = 0
    tree_size: int = 0
    root: bytes = merkle.EMPTY_ROOT
    findings: list[Finding] = field(default_factory=list)
    suppressed: dict[FindingKind, int] = field(default_factory=dict)
    engines: dict[str, int] = field(default_factory=dict)
    refused: list[RefusedEntry] = field(default_factory=list)
    witnesses: list[WitnessSummary] = field(default_factory=list)
    anchors: list[AnchorCheck] = field(default_factory=list)
    required_witnesses: list[RequiredWitness] = field(default_factory=list)
    max_unwitnessed: int | None = None
    unknown_cosignatures: int = 0
    proofs_checked: int = 0
    mismatched_checkpoints: list[int] = field(default_factory=list)
    matched_checkpoints: list[int] = field(default_factory=list)
    #: Decision ids of the entries after the last matching checkpoint before the first mismatch.
    decision_ids: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.findings

    def first_difference(self) -> Finding | None:
        """The first entry whose stored form differs from what was signed, or the
        first finding when no entry can be named."""
        if not self.findings:
            return None
        # Entries below the largest matching checkpoint under the first mismatch are proven.
        mismatch = min(self.mismatched_checkpoints, default=None)
        proven = max(
            (s for s in self.matched_checkpoints if mismatch is None or s < mismatch), default=0
        )
        direct = [f for f in self.findings if f.direct and f.first is not None]
        direct = [f for f in direct if f.first is not None and f.first >= proven] or direct
        if direct:
            return min(direct, key=lambda f: f.first if f.first is not None else 0)
        ranged = [
            f
            for f in self.findings
            if f.first is not None and f.last is not None and f.last >= proven
        ]
        if ranged:
            best = min(ranged, key=lambda f: (max(f.first or 0, proven), f.last))
            lo = max(best.first or 0, proven)
            hi = best.last if best.last is not None else lo
            if mismatch is not None:
                hi = min(hi, mismatch - 1)
            return Finding(
                kind=best.kind,
                message=best.message,
                first=lo,
                last=max(lo, hi),
                tree_size=best.tree_size,
                decision_id=(best.decision_id or self.decision_ids.get(lo)) if lo >= hi else None,
            )
        return self.findings[0]


def keep_first_of_each_kind(
    findings: Iterable[Finding],
) -> tuple[list[Finding], dict[FindingKind, int]]:
    """The findings to list (the first MAX_FINDINGS_PER_KIND of each kind, in order)
    and how many more of each kind there were."""
    kept: list[Finding] = []
    per_kind: dict[FindingKind, int] = {}
    suppressed: dict[FindingKind, int] = {}
    for finding in findings:
        if per_kind.get(finding.kind, 0) >= MAX_FINDINGS_PER_KIND:
            suppressed[finding.kind] = suppressed.get(finding.kind, 0) + 1
            continue
        per_kind[finding.kind] = per_kind.get(finding.kind, 0) + 1
        kept.append(finding)
    return kept, suppressed


def span(first: int, last: int) -> str:
    """`first`, or `first..last` when they differ."""
    return str(first) if first == last else f"{first}..{last}"


def which_differs(first: int, last: int) -> str:
    """`entry first differs`, or `an entry among first..last differs`."""
    return f"entry {first} differs" if first == last else f"an entry among {first}..{last} differs"
