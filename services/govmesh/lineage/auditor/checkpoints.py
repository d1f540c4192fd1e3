"""The audit's checks of checkpoints: signatures, cosignatures, the log's end, consistency."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from govmesh.lineage import merkle
from govmesh.lineage.auditor.report import Finding, FindingKind, WitnessSummary, span
from govmesh.lineage.auditor.source import LogSource, SourceCheckpoint
from govmesh.lineage.notes import (
    NoteError,
    SignedCheckpoint,
    VerifierKey,
    open_checkpoint,
    parse_note,
)


@dataclass(frozen=True)
class SignedCheckpoints:
    """What step 1 read: the checkpoints the log key signed, and who cosigned them."""

    count: int  # checkpoints the source holds, signed or not
    roots: dict[int, bytes]  # signed root by tree size
    witnesses: list[WitnessSummary]
    unknown_cosignatures: int
    findings: list[Finding]

    @property
    def newest(self) -> int:
        return max(self.roots, default=0)


async def read_checkpoints(
    source: LogSource,
    *,
    log_key: VerifierKey,
    origin: str | None,
    witnesses: Sequence[VerifierKey],
) -> SignedCheckpoints:
    """Step 1: each checkpoint's log signature, origin and stored root, then its
    cosignatures by the given witnesses."""
    count = 0
    roots: dict[int, bytes] = {}
    cosigned: list[list[int]] = [[] for _ in witnesses]
    unknown = 0
    findings: list[Finding] = []
    async for page in source.checkpoints():
        for cp in page:
            count += 1
            opened = _open(cp, log_key, origin)
            if isinstance(opened, Finding):
                findings.append(opened)
                continue
            roots[opened.size] = opened.root
            sizes, unknown_here, cosignature_findings = _check_cosignatures(
                cp, opened.note.text, witnesses
            )
            for so_far, here in zip(cosigned, sizes, strict=True):
                so_far.extend(here)
            unknown += unknown_here
            findings += cosignature_findings
    summaries = [
        WitnessSummary(w.name, w.encode(), sizes)
        for w, sizes in zip(witnesses, cosigned, strict=True)
    ]
    return SignedCheckpoints(count, roots, summaries, unknown, findings)


def _open(
    cp: SourceCheckpoint, log_key: VerifierKey, origin: str | None
) -> SignedCheckpoint | Finding:
    """The checkpoint with its log signature verified, or why it cannot be trusted."""
    try:
        opened = open_checkpoint(cp.note, log_key, origin=origin)
    except NoteError as exc:
        return Finding(
            FindingKind.CHECKPOINT,
            f"checkpoint stored at size {cp.tree_size} is not signed by the log: {exc}",
            tree_size=cp.tree_size,
        )
    if opened.size != cp.tree_size or (cp.root_hash is not None and cp.root_hash != opened.root):
        return Finding(
            FindingKind.CHECKPOINT,
            f"checkpoint stored at size {cp.tree_size} says size {opened.size} "
            "or another root than stored beside it",
            tree_size=cp.tree_size,
        )
    return opened


def _check_cosignatures(
    cp: SourceCheckpoint, text: str, witnesses: Sequence[VerifierKey]
) -> tuple[list[list[int]], int, list[Finding]]:
    """Per witness, the sizes it validly cosigned here (this one or none); the
    cosignature lines no given witness made; and the lines that do not verify."""
    cosigned: list[list[int]] = [[] for _ in witnesses]
    unknown = 0
    findings: list[Finding] = []
    for line in cp.cosignatures:
        try:
            note = parse_note(text + "\n" + line)
        except NoteError as exc:
            findings.append(
                Finding(
                    FindingKind.COSIGNATURE,
                    f"checkpoint {cp.tree_size}: {exc}",
                    tree_size=cp.tree_size,
                )
            )
            continue
        known = False
        for witness, sizes in zip(witnesses, cosigned, strict=True):
            try:
                if note.verified_by(witness) is not None:
                    sizes.append(cp.tree_size)
                    known = True
            except NoteError as exc:
                known = True
                findings.append(
                    Finding(
                        FindingKind.COSIGNATURE,
                        f"checkpoint {cp.tree_size}: the cosignature of {witness.name} "
                        f"does not verify: {exc}",
                        tree_size=cp.tree_size,
                    )
                )
        if not known:
            unknown += 1
    return cosigned, unknown, findings


@dataclass(frozen=True)
class LogEnd:
    """What step 4 found where the entries end."""

    mismatched: list[int]  # signed sizes beyond the entries
    tree_size: int  # the newest checkpoint, when the entries match it (else 0)
    root: bytes
    findings: list[Finding]


async def check_log_end(
    source: LogSource, checkpoints: SignedCheckpoints, *, size: int, matched: Sequence[int]
) -> LogEnd:
    """Step 4, where the entries end: no checkpoint may be larger than the log
    (entries were removed from the end), every entry must be covered by one, and
    the source's head must be the newest checkpoint."""
    roots = checkpoints.roots
    findings: list[Finding] = []
    beyond = sorted(s for s in roots if s > size)
    for signed in beyond:
        findings.append(
            Finding(
                FindingKind.TRUNCATED,
                f"the log signed a checkpoint of {signed} entries but holds only {size}",
                first=size,
                last=signed - 1,
                tree_size=signed,
            )
        )
    newest = checkpoints.newest
    if size > newest:
        findings.append(
            Finding(
                FindingKind.UNSIGNED,
                f"entries {span(newest, size - 1)} are not covered by any checkpoint",
                first=newest,
                last=size - 1,
            )
        )
    verified = bool(newest) and newest in matched
    head = await source.head()
    if head is not None and newest and head != (newest, roots[newest]):
        findings.append(
            Finding(
                FindingKind.HEAD,
                f"the counter row says size {head[0]}, the newest checkpoint {newest}",
                tree_size=head[0],
            )
        )
    return LogEnd(
        mismatched=beyond,
        tree_size=newest if verified else 0,
        root=roots[newest] if verified else merkle.EMPTY_ROOT,
        findings=findings,
    )


async def check_consistency(
    source: LogSource, checkpoints: SignedCheckpoints
) -> tuple[int, list[Finding]]:
    """Step 5: consecutive checkpoints, as the source proves them consistent (while
    it serves proofs). Returns how many proofs were checked, and the failures."""
    roots = checkpoints.roots
    checked = 0
    findings: list[Finding] = []
    for old, new in itertools.pairwise(sorted(roots)):
        try:
            proof = await source.consistency_proof(old, new)
            if proof is None:
                break
            checked += 1
            merkle.verify_consistency(old, new, roots[old], roots[new], proof)
        except merkle.ProofError as exc:
            findings.append(
                Finding(
                    FindingKind.CONSISTENCY,
                    f"checkpoints {old} and {new} are not proven consistent: {exc}",
                    tree_size=new,
                )
            )
    return checked, findings
