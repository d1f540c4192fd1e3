"""The auditor: recompute the whole log and name the first entry that differs.

The database refuses changes to the log, but a superuser can switch that
off; the signed checkpoints cannot be forged without the log key. The
auditor trusts nothing but that key (and the witness keys and anchors it is
given):

1. Every checkpoint must carry a valid signature of the log key over its
   origin, size and root.
2. Entries must have contiguous indices from 0, each be canonical JSON that
   names the decision id it is stored under, and hash to its stored leaf
   hash; every stored subtree hash must equal its recomputation; the query
   columns must repeat what the bytes say.
3. The root recomputed over the first n leaves must equal the signed root
   of every checkpoint of size n; no checkpoint may be larger than the log.
4. Consecutive checkpoints must be consistent; where the source serves
   consistency proofs, each one must verify between the signed roots.
5. Each engine's counter must run from 0 with no gap and no repeat, and
   every amendment must name a decision logged before it. A refusal record
   (an entry lineage refused, kept aside by the engine's spool and named
   here by its SHA-256 and lineage's reason) holds the refused entry's
   place in its engine's counter; the report lists each one, and one that
   stands for an ALLOW is a finding: an ALLOW is never answered unlogged.
6. Cosignatures by the given witness keys must verify; the report lists
   which checkpoints each witness cosigned.
7. Anchors: a prefix of a valid log is itself valid, so a log restored from
   an old backup (newest entries and their checkpoints gone) passes 1-6.
   An anchor is a checkpoint the auditor saw before (a receipt's, a proof
   bundle's, a witness's state, `govmesh lineage checkpoint`); it must carry
   the log key's valid signature for the audited origin, or the audit does
   not start (`AuditSetupError`). For each anchor of size n the log must
   hold at least n entries (else it was rolled back or truncated) and the
   root recomputed over its first n leaves must be the anchor's root (else
   it forked, even if every checkpoint it now holds is validly signed).
8. Required witnesses: each required name must belong to a given witness
   key (else `AuditSetupError`), and that witness must have validly
   cosigned at least one checkpoint of the log. With `max_unwitnessed`,
   the entries beyond the largest checkpoint it cosigned must number at
   most that many. This says nothing of checkpoints the witness saw that
   the log no longer holds: only an anchor (such as the witness's state
   file) shows those.

Findings are collected, not raised, so one run reports everything it can;
`AuditReport.first_difference` combines them to name the first entry whose
stored form differs from what the log signed, as precisely as the evidence
allows (a checkpoint pins a difference to the entries it added).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from govmesh.lineage import merkle
from govmesh.lineage.core import EntryRejected, check_entry
from govmesh.lineage.notes import NoteError, VerifierKey, open_checkpoint, parse_note

#: Findings kept per kind beyond the first few (the rest are counted).
MAX_FINDINGS_PER_KIND = 20


class AuditSetupError(ValueError):
    """The audit was asked to check something it cannot: an anchor that is not a
    checkpoint signed by the log key, or a required witness without a key."""


@dataclass(frozen=True)
class Anchor:
    """A checkpoint of the log seen before this audit, its log signature verified."""

    label: str  # where it came from, e.g. its file name
    size: int
    root: bytes


def read_anchor(
    text: str, *, label: str, log_key: VerifierKey, origin: str | None = None
) -> Anchor:
    """The anchor in `text`: a bare checkpoint note, or JSON holding one under
    "checkpoint" (a proof bundle, a witness state) or "lineage"."checkpoint" (the
    answer `govmesh authorize` prints). Raises AuditSetupError unless the note
    carries the log key's valid signature for `origin` (default: the key's name)."""
    note = _anchor_note(text, label)
    try:
        signed = open_checkpoint(note, log_key, origin=origin)
    except NoteError as exc:
        raise AuditSetupError(
            f"anchor {label} is not a checkpoint signed by the log key "
            f"{log_key.name}+{log_key.key_id.hex()}: {exc}"
        ) from None
    return Anchor(label, signed.size, signed.root)


def _anchor_note(text: str, label: str) -> str:
    if not text.lstrip().startswith("{"):
        return text
    try:
        doc = json.loads(text)
    except ValueError:
        return text  # not JSON after all: let the note parser say what is wrong
    if isinstance(doc, dict):
        lineage = doc.get("lineage")
        for candidate in (
            doc.get("checkpoint"),
            lineage.get("checkpoint") if isinstance(lineage, dict) else None,
        ):
            if isinstance(candidate, str):
                return candidate
    raise AuditSetupError(
        f"anchor {label} is JSON without a checkpoint (a proof bundle, a witness state "
        "and the answer of `govmesh authorize` each hold one)"
    )


@dataclass
class AnchorCheck:
    """What the audit found for one anchor."""

    anchor: Anchor
    #: "held" (the log holds it), "rolled back" (the log is shorter), "forked"
    #: (another root at its size), or "not checked" (an earlier gap in the indices).
    status: str = "not checked"


@dataclass
class RequiredWitness:
    """How far a required witness has cosigned the log."""

    name: str
    largest: int | None = None  # the largest checkpoint size it validly cosigned
    unwitnessed: int = 0  # entries beyond `largest`


@dataclass(frozen=True)
class SourceCheckpoint:
    """A checkpoint as a source holds it."""

    tree_size: int
    note: str
    cosignatures: tuple[str, ...] = ()
    root_hash: bytes | None = None  # the separately stored root, where there is one


@dataclass(frozen=True)
class SourceEntry:
    """An entry as a source holds it; columns a source does not have are None."""

    index: int
    decision_id: str
    entry: bytes
    leaf_hash: bytes
    nodes: bytes | None = None
    kind: str | None = None
    decided_at: datetime | None = None
    subject: str | None = None
    trace_id: str | None = None
    has_columns: bool = False


class LogSource(Protocol):
    """Where the auditor reads a log from: a database, or the lineage service."""

    description: str

    def checkpoints(self) -> AsyncIterator[list[SourceCheckpoint]]:
        """Every checkpoint, smallest size first, in pages."""
        ...

    def entries(self) -> AsyncIterator[list[SourceEntry]]:
        """Every entry in index order, in pages."""
        ...

    async def locate(self, decision_ids: Sequence[str]) -> dict[str, tuple[int, str | None]]:
        """(index, type) of each decision id that is logged."""
        ...

    async def consistency_proof(self, first: int, second: int) -> list[bytes] | None:
        """The source's consistency proof, or None when it serves none."""
        ...

    async def head(self) -> tuple[int, bytes] | None:
        """The source's own idea of (size, root), when it keeps one."""
        ...


@dataclass(frozen=True)
class Finding:
    """One thing that does not check out.

    `first`..`last` are the entries it can be pinned to (inclusive), None
    when it concerns no entry (a forged checkpoint, a cosignature).
    `direct` findings show an entry's own stored form is wrong; the others
    narrow where a difference lies.
    """

    kind: str
    message: str
    first: int | None = None
    last: int | None = None
    tree_size: int | None = None
    decision_id: str | None = None
    direct: bool = False


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
    suppressed: dict[str, int] = field(default_factory=dict)
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

    def add(self, finding: Finding) -> None:
        same = sum(1 for f in self.findings if f.kind == finding.kind)
        if same >= MAX_FINDINGS_PER_KIND:
            self.suppressed[finding.kind] = self.suppressed.get(finding.kind, 0) + 1
            return
        self.findings.append(finding)

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


@dataclass
class _Counter:
    """One engine's counter: the next expected value and values seen ahead of it."""

    next: int = 0
    last_index: int | None = None
    ahead: dict[int, int] = field(default_factory=dict)
    count: int = 0


async def audit(
    source: LogSource,
    *,
    log_key: VerifierKey,
    origin: str | None = None,
    witnesses: Sequence[VerifierKey] = (),
    anchors: Sequence[Anchor] = (),
    require_witnesses: Sequence[str] = (),
    max_unwitnessed: int | None = None,
) -> AuditReport:
    """Check every entry and checkpoint of `source`; see the module docstring.

    Raises AuditSetupError, before reading anything, for a required witness
    that is not among `witnesses` or a `max_unwitnessed` with nothing to bound.
    """
    check_required_witnesses(require_witnesses, witnesses, max_unwitnessed)
    report = AuditReport(source=source.description)
    summaries = [WitnessSummary(w.name, w.encode()) for w in witnesses]
    report.witnesses = summaries
    report.anchors = [AnchorCheck(a) for a in sorted(anchors, key=lambda a: a.size)]
    report.max_unwitnessed = max_unwitnessed

    # 1. Checkpoints: signature, origin, stored root.
    signed: dict[int, bytes] = {}
    bodies: dict[int, str] = {}
    async for checkpoint_page in source.checkpoints():
        for cp in checkpoint_page:
            report.checkpoints += 1
            try:
                opened = open_checkpoint(cp.note, log_key, origin=origin)
            except NoteError as exc:
                report.add(
                    Finding(
                        "checkpoint",
                        f"checkpoint stored at size {cp.tree_size} is not signed by the log: {exc}",
                        tree_size=cp.tree_size,
                    )
                )
                continue
            if opened.size != cp.tree_size or (
                cp.root_hash is not None and cp.root_hash != opened.root
            ):
                report.add(
                    Finding(
                        "checkpoint",
                        f"checkpoint stored at size {cp.tree_size} says size {opened.size} "
                        "or another root than stored beside it",
                        tree_size=cp.tree_size,
                    )
                )
                continue
            signed[opened.size] = opened.root
            bodies[opened.size] = opened.note.text
            # 6. Cosignatures on this checkpoint.
            _check_cosignatures(report, summaries, witnesses, opened.note.text, cp)

    # 2. and 3. Entries, leaf by leaf, and roots at every checkpoint size.
    frontier = merkle.Frontier()
    expected = 0
    shifted = False  # after a gap, stored subtree hashes no longer line up with positions
    counters: dict[str, _Counter] = {}
    amendments: list[tuple[int, str, str]] = []
    unproven: dict[int, str] | None = {}  # decision ids since the last matching checkpoint
    anchored: dict[int, list[AnchorCheck]] = {}
    for check in report.anchors:
        anchored.setdefault(check.anchor.size, []).append(check)
    _check_anchors(report, anchored.get(0, []), frontier, shifted=False)
    async for entry_page in source.entries():
        for row in entry_page:
            if row.index < expected:
                report.add(
                    Finding(
                        "order",
                        f"entry index {row.index} appears again after {expected - 1}",
                        first=row.index,
                        last=row.index,
                        direct=True,
                    )
                )
                continue
            if row.index > expected:
                report.add(
                    Finding(
                        "missing",
                        f"entries {_span(expected, row.index - 1)} are missing: "
                        f"index {expected - 1} is followed by {row.index}",
                        first=expected,
                        last=row.index - 1,
                        direct=True,
                    )
                )
                shifted = True
            expected = row.index + 1
            if unproven is not None:
                unproven[row.index] = row.decision_id
            _check_entry(report, row, counters, amendments)
            leaf = merkle.leaf_hash(row.entry)
            if leaf != row.leaf_hash:
                report.add(
                    Finding(
                        "leaf",
                        f"entry {row.index} ({row.decision_id}) does not hash to its "
                        "stored leaf hash: its bytes or its hash were changed",
                        first=row.index,
                        last=row.index,
                        decision_id=row.decision_id,
                        direct=True,
                    )
                )
            completed = frontier.append(leaf)
            if row.nodes is not None and not shifted:
                _check_nodes(report, row.index, completed, row.nodes)
            if frontier.size in anchored:
                _check_anchors(report, anchored[frontier.size], frontier, shifted=shifted)
            if frontier.size in signed:
                if frontier.root() == signed[frontier.size]:
                    report.matched_checkpoints.append(frontier.size)
                    if unproven is not None:
                        unproven.clear()
                else:
                    _mismatch(report, frontier.size)
                    if unproven is not None:
                        report.decision_ids.update(unproven)
                        unproven = None
    report.entries = frontier.size

    # 7. Anchors beyond the entries: the log was rolled back.
    for check in report.anchors:
        if check.status == "not checked" and check.anchor.size <= frontier.size:
            report.add(
                Finding(
                    "anchor",
                    f"anchor {check.anchor.label} of size {check.anchor.size} cannot be "
                    "checked: the indices have a gap before it",
                    tree_size=check.anchor.size,
                )
            )
        if check.anchor.size > frontier.size:
            check.status = "rolled back"
            report.add(
                Finding(
                    "anchor",
                    f"anchor {check.anchor.label} commits to {check.anchor.size} entries but "
                    f"the log holds only {frontier.size}: it was rolled back or truncated",
                    first=frontier.size,
                    last=check.anchor.size - 1,
                    tree_size=check.anchor.size,
                )
            )

    # 3. Checkpoints beyond the entries: entries were removed from the end.
    for size in sorted(s for s in signed if s > frontier.size):
        report.mismatched_checkpoints.append(size)
        report.add(
            Finding(
                "truncated",
                f"the log signed a checkpoint of {size} entries but holds only {frontier.size}",
                first=frontier.size,
                last=size - 1,
                tree_size=size,
            )
        )
    newest = max(signed, default=0)
    if frontier.size > newest:
        report.add(
            Finding(
                "unsigned",
                f"entries {_span(newest, frontier.size - 1)} are not covered by any checkpoint",
                first=newest,
                last=frontier.size - 1,
            )
        )
    if newest and newest in report.matched_checkpoints:
        report.tree_size, report.root = newest, signed[newest]

    head = await source.head()
    if head is not None and newest and head != (newest, signed[newest]):
        report.add(
            Finding(
                "head",
                f"the counter row says size {head[0]}, the newest checkpoint {newest}",
                tree_size=head[0],
            )
        )

    # 4. The consistency chain, as the source proves it.
    sizes = sorted(signed)
    for old, new in itertools.pairwise(sizes):
        try:
            proof = await source.consistency_proof(old, new)
            if proof is None:
                break
            report.proofs_checked += 1
            merkle.verify_consistency(old, new, signed[old], signed[new], proof)
        except merkle.ProofError as exc:
            report.add(
                Finding(
                    "consistency",
                    f"checkpoints {old} and {new} are not proven consistent: {exc}",
                    tree_size=new,
                )
            )

    # 5. Engine counters and amendments.
    for engine_id, counter in sorted(counters.items()):
        report.engines[engine_id] = counter.count
        if counter.ahead:
            first_seen = min(counter.ahead)
            report.add(
                Finding(
                    "engine",
                    f"engine {engine_id}: counter {_span(counter.next, first_seen - 1)} "
                    f"never logged (counter {first_seen} is at entry {counter.ahead[first_seen]})",
                    first=counter.ahead[first_seen],
                    last=counter.ahead[first_seen],
                )
            )
    if amendments:
        targets = await source.locate([target for _, _, target in amendments])
        for index, decision_id, target in amendments:
            found = targets.get(target)
            if found is None or found[0] >= index or found[1] != "decision":
                report.add(
                    Finding(
                        "amendment",
                        f"entry {index} amends {target}, which is not a decision logged before it",
                        first=index,
                        last=index,
                        decision_id=decision_id,
                        direct=True,
                    )
                )

    # 8. Required witnesses.
    for name in require_witnesses:
        cosigned = [s for w in summaries if w.name == name for s in w.cosigned]
        required = RequiredWitness(name, max(cosigned, default=None))
        report.required_witnesses.append(required)
        if required.largest is None:
            report.add(
                Finding("witness", f"required witness {name} cosigned no checkpoint of the log")
            )
            continue
        required.unwitnessed = max(0, report.entries - required.largest)
        if max_unwitnessed is not None and required.unwitnessed > max_unwitnessed:
            report.add(
                Finding(
                    "witness",
                    f"entries {_span(required.largest, report.entries - 1)} "
                    f"({required.unwitnessed}) lie beyond the largest checkpoint required "
                    f"witness {name} cosigned; at most {max_unwitnessed} may",
                )
            )
    return report


def check_required_witnesses(
    names: Sequence[str], witnesses: Sequence[VerifierKey], max_unwitnessed: int | None
) -> None:
    """Raise AuditSetupError unless every required witness has a key given and
    `max_unwitnessed`, when set, is a bound on at least one required witness."""
    keys = {w.name for w in witnesses}
    for name in names:
        if name not in keys:
            raise AuditSetupError(
                f"required witness {name} is not among the witness keys given "
                f"({', '.join(sorted(keys)) or 'none'}): give its key with --witness"
            )
    if max_unwitnessed is not None:
        if max_unwitnessed < 0:
            raise AuditSetupError("the number of unwitnessed entries allowed is 0 or more")
        if not names:
            raise AuditSetupError(
                "a bound on unwitnessed entries needs a required witness to count them for"
            )


def _check_anchors(
    report: AuditReport, checks: list[AnchorCheck], frontier: merkle.Frontier, *, shifted: bool
) -> None:
    """Compare the root over the entries read so far with the anchors of that size."""
    if shifted:
        # A gap in the indices is its own finding; the leaves no longer sit
        # where the anchors saw them, so their root says nothing more.
        return
    root = frontier.root()
    for check in checks:
        if root == check.anchor.root:
            check.status = "held"
            continue
        check.status = "forked"
        if frontier.size == 0:
            report.add(
                Finding(
                    "anchor",
                    f"anchor {check.anchor.label} signs a tree of 0 entries whose root is "
                    "not the empty tree's",
                    tree_size=0,
                )
            )
            continue
        held = max(
            (
                c.anchor.size
                for c in report.anchors
                if c.status == "held" and c.anchor.size < frontier.size
            ),
            default=0,
        )
        report.add(
            Finding(
                "anchor",
                f"anchor {check.anchor.label} commits to another tree of "
                f"{check.anchor.size} entries than the log holds: the log forked "
                + (
                    f"(entry {held} differs"
                    if held == frontier.size - 1
                    else f"(an entry among {held}..{frontier.size - 1} differs"
                )
                + " from what the anchor saw)",
                first=held,
                last=frontier.size - 1,
                tree_size=check.anchor.size,
            )
        )


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}..{last}"


def _mismatch(report: AuditReport, size: int) -> None:
    report.mismatched_checkpoints.append(size)
    proven = max(report.matched_checkpoints, default=0)
    report.add(
        Finding(
            "checkpoint",
            f"the first {size} entries do not hash to the signed checkpoint of size {size}: "
            + (
                f"entry {proven} differs"
                if proven == size - 1
                else f"an entry among {proven}..{size - 1} differs"
            )
            + " from what the log signed",
            first=proven,
            last=size - 1,
            tree_size=size,
        )
    )


def _check_nodes(report: AuditReport, index: int, completed: list[bytes], nodes: bytes) -> None:
    stored = [nodes[i : i + 32] for i in range(0, len(nodes), 32)]
    if len(stored) != len(completed) or len(nodes) % 32:
        report.add(
            Finding(
                "node",
                f"entry {index} stores {len(stored)} subtree hashes, expected {len(completed)}",
                first=index,
                last=index,
            )
        )
        return
    for level, (mine, theirs) in enumerate(zip(completed, stored, strict=True), start=1):
        if mine != theirs:
            start = index + 1 - (1 << level)
            report.add(
                Finding(
                    "node",
                    f"the stored hash of entries {start}..{index} differs from their "
                    "recomputed hash",
                    first=start,
                    last=index,
                )
            )
            return


def _check_entry(
    report: AuditReport,
    row: SourceEntry,
    counters: dict[str, _Counter],
    amendments: list[tuple[int, str, str]],
) -> None:
    try:
        entry = check_entry(row.entry, row.decision_id)
    except EntryRejected as exc:
        report.add(
            Finding(
                "entry",
                f"entry {row.index} ({row.decision_id}) is not a valid entry: {exc}",
                first=row.index,
                last=row.index,
                decision_id=row.decision_id,
                direct=True,
            )
        )
        return
    if row.has_columns and (
        row.kind != entry.kind
        or row.subject != entry.subject
        or row.trace_id != entry.trace_id
        or row.decided_at != entry.time
    ):
        report.add(
            Finding(
                "columns",
                f"the query columns of entry {row.index} do not repeat its bytes",
                first=row.index,
                last=row.index,
                decision_id=row.decision_id,
                direct=True,
            )
        )
    if entry.kind == "amendment" and entry.amends is not None:
        amendments.append((row.index, row.decision_id, str(entry.amends)))
    if entry.kind == "refused":
        # The rules checked the hash and the reason; what remains is what it claims.
        document = json.loads(row.entry)
        report.refused.append(
            RefusedEntry(row.index, row.decision_id, document["entry_sha256"], document["reason"])
        )
        if document.get("decision") == "ALLOW":
            report.add(
                Finding(
                    "refused",
                    f"entry {row.index} records a refused ALLOW: an ALLOW is answered "
                    "only once its own entry is logged",
                    first=row.index,
                    last=row.index,
                    decision_id=row.decision_id,
                    direct=True,
                )
            )
    if entry.engine_id is None or entry.engine_seq is None:
        return
    counter = counters.setdefault(entry.engine_id, _Counter())
    counter.count += 1
    seq = entry.engine_seq
    if seq < counter.next or seq in counter.ahead:
        report.add(
            Finding(
                "engine",
                f"engine {entry.engine_id}: counter {seq} appears again at entry {row.index}",
                first=row.index,
                last=row.index,
                decision_id=row.decision_id,
                direct=True,
            )
        )
        return
    counter.ahead[seq] = row.index
    while counter.next in counter.ahead:
        counter.last_index = counter.ahead.pop(counter.next)
        counter.next += 1


def _check_cosignatures(
    report: AuditReport,
    summaries: list[WitnessSummary],
    witnesses: Sequence[VerifierKey],
    text: str,
    cp: SourceCheckpoint,
) -> None:
    for line in cp.cosignatures:
        try:
            note = parse_note(text + "\n" + line)
        except NoteError as exc:
            report.add(
                Finding("cosignature", f"checkpoint {cp.tree_size}: {exc}", tree_size=cp.tree_size)
            )
            continue
        known = False
        for witness, summary in zip(witnesses, summaries, strict=True):
            try:
                if note.verified_by(witness) is not None:
                    summary.cosigned.append(cp.tree_size)
                    known = True
            except NoteError as exc:
                known = True
                report.add(
                    Finding(
                        "cosignature",
                        f"checkpoint {cp.tree_size}: the cosignature of {witness.name} "
                        f"does not verify: {exc}",
                        tree_size=cp.tree_size,
                    )
                )
        if not known:
            report.unknown_cosignatures += 1
