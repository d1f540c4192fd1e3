"""The auditor: recompute the whole log and name the first entry that differs.

The database refuses changes to the log, but a superuser can switch that
off; the signed checkpoints cannot be forged without the log key. The
auditor trusts nothing but that key (and the witness keys and anchors it is
given). Before it reads anything, each required witness must belong to a
given witness key and `max_unwitnessed` must bound one (else
`AuditSetupError`). Then, in this order:

1. Checkpoints, one by one: each must carry a valid signature of the log
   key over its origin, size and root, and agree with the size and root
   stored beside it. Cosignatures on it by the given witness keys must
   verify; the report lists which checkpoints each witness cosigned.
2. Entries, walked in index order: indices must be contiguous from 0; each
   entry must be canonical JSON that names the decision id it is stored
   under, and the query columns must repeat what the bytes say. A refusal
   record (an entry lineage refused, kept aside by the engine's spool and
   named here by its SHA-256 and lineage's reason) holds the refused
   entry's place in its engine's counter; the report lists each one, and
   one that stands for an ALLOW is a finding: an ALLOW is never answered
   unlogged. No engine's counter may repeat. Each entry must hash to its
   stored leaf hash, and every stored subtree hash must equal its
   recomputation. At each size n the root recomputed over the first n
   leaves must be the root of every anchor of size n (else the log forked,
   even if every checkpoint it now holds is validly signed) and the signed
   root of every checkpoint of size n.
3. Anchors beyond the entries. A prefix of a valid log is itself valid, so a
   log restored from an old backup (newest entries and their checkpoints
   gone) passes every other step. An anchor is a checkpoint the auditor saw
   before (a receipt's, a proof bundle's, a witness's state, `govmesh
   lineage checkpoint`); `read_anchor` accepts it only with the log key's
   valid signature for the audited origin (else `AuditSetupError`). For
   each anchor of size n the log must hold at least n entries, else it was
   rolled back or truncated. An anchor within the log that step 2 could not
   check (a gap in the indices before it) is a finding too.
4. The log's end: no checkpoint may be larger than the log, every entry
   must be covered by a checkpoint, and the source's head (where it keeps
   one) must be the newest checkpoint.
5. Consecutive checkpoints must be consistent; where the source serves
   consistency proofs, each one must verify between the signed roots.
6. Each engine's counter must run from 0 with no gap, and every amendment
   must name a decision logged before it.
7. Required witnesses: each must have validly cosigned at least one
   checkpoint of the log. With `max_unwitnessed`, the entries beyond the
   largest checkpoint it cosigned must number at most that many. This says
   nothing of checkpoints the witness saw that the log no longer holds:
   only an anchor (such as the witness's state file) shows those.

Findings are collected, not raised, so one run reports everything it can,
listed in the order of the steps; `AuditReport.first_difference` combines
them to name the first entry whose stored form differs from what the log
signed, as precisely as the evidence allows (a checkpoint pins a difference
to the entries it added).

The steps live in sibling modules: `checkpoints` (1, 4, 5), `entries` (2, 6),
`anchors` (3, and reading anchors), `witnesses` (7); `report` holds what an
audit reports and `source` what it reads from.
"""

from __future__ import annotations

from collections.abc import Sequence

from govmesh.lineage.auditor.anchors import check_anchors_beyond, read_anchor
from govmesh.lineage.auditor.checkpoints import (
    check_consistency,
    check_log_end,
    read_checkpoints,
)
from govmesh.lineage.auditor.entries import check_amendments, check_counters, walk_entries
from govmesh.lineage.auditor.report import (
    MAX_FINDINGS_PER_KIND,
    Anchor,
    AnchorCheck,
    AnchorStatus,
    AuditReport,
    AuditSetupError,
    Finding,
    FindingKind,
    RefusedEntry,
    RequiredWitness,
    WitnessSummary,
    keep_first_of_each_kind,
)
from govmesh.lineage.auditor.source import LogSource, SourceCheckpoint, SourceEntry
from govmesh.lineage.auditor.witnesses import check_required_witnesses, check_witnessed
from govmesh.lineage.notes import VerifierKey

__all__ = [
    "MAX_FINDINGS_PER_KIND",
    "Anchor",
    "AnchorCheck",
    "AnchorStatus",
    "AuditReport",
    "AuditSetupError",
    "Finding",
    "FindingKind",
    "LogSource",
    "RefusedEntry",
    "RequiredWitness",
    "SourceCheckpoint",
    "SourceEntry",
    "WitnessSummary",
    "audit",
    "check_required_witnesses",
    "read_anchor",
]


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
    by_size = sorted(anchors, key=lambda a: a.size)
    # 1. Checkpoints and their cosignatures.
    checkpoints = await read_checkpoints(
        source, log_key=log_key, origin=origin, witnesses=witnesses
    )
    # 2. Entries, and the roots at anchor and checkpoint sizes.
    walk = await walk_entries(source, roots=checkpoints.roots, anchors=by_size)
    # 3. Anchors beyond the entries.
    anchor_statuses, beyond_anchors = check_anchors_beyond(
        by_size, walk.anchor_statuses, size=walk.size
    )
    # 4. The log's end.
    end = await check_log_end(source, checkpoints, size=walk.size, matched=walk.matched)
    # 5. The consistency chain.
    proofs_checked, inconsistent = await check_consistency(source, checkpoints)
    # 6. Engine counters and amendments.
    engines, gaps = check_counters(walk.counters)
    unamended = await check_amendments(source, walk.amendments)
    # 7. Required witnesses.
    required, unwitnessed = check_witnessed(
        require_witnesses,
        checkpoints.witnesses,
        entries=walk.size,
        max_unwitnessed=max_unwitnessed,
    )

    findings, suppressed = keep_first_of_each_kind(
        [
            *checkpoints.findings,
            *walk.findings,
            *beyond_anchors,
            *end.findings,
            *inconsistent,
            *gaps,
            *unamended,
            *unwitnessed,
        ]
    )
    return AuditReport(
        source=source.description,
        entries=walk.size,
        checkpoints=checkpoints.count,
        tree_size=end.tree_size,
        root=end.root,
        findings=findings,
        suppressed=suppressed,
        engines=engines,
        refused=walk.refused,
        witnesses=checkpoints.witnesses,
        anchors=[
            AnchorCheck(anchor, status)
            for anchor, status in zip(by_size, anchor_statuses, strict=True)
        ],
        required_witnesses=required,
        max_unwitnessed=max_unwitnessed,
        unknown_cosignatures=checkpoints.unknown_cosignatures,
        proofs_checked=proofs_checked,
        mismatched_checkpoints=walk.mismatched + end.mismatched,
        matched_checkpoints=walk.matched,
        decision_ids=walk.decision_ids,
    )
