"""Anchors: checkpoints the auditor saw before, and what the log does with them."""

from __future__ import annotations

import json
from collections.abc import Sequence

from govmesh.lineage.auditor.report import (
    Anchor,
    AnchorStatus,
    AuditSetupError,
    Finding,
    FindingKind,
    which_differs,
)
from govmesh.lineage.notes import NoteError, VerifierKey, open_checkpoint


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


def check_anchor_root(
    anchor: Anchor, *, size: int, root: bytes, largest_held: int
) -> tuple[AnchorStatus, Finding | None]:
    """Step 2, at an anchor's size: the root over the first `size` entries must be
    the anchor's. `largest_held` is the largest smaller anchor the log still holds,
    the first entry that can differ."""
    if root == anchor.root:
        return AnchorStatus.HELD, None
    if size == 0:
        return AnchorStatus.FORKED, Finding(
            FindingKind.ANCHOR,
            f"anchor {anchor.label} signs a tree of 0 entries whose root is not the empty tree's",
            tree_size=0,
        )
    return AnchorStatus.FORKED, Finding(
        FindingKind.ANCHOR,
        f"anchor {anchor.label} commits to another tree of "
        f"{anchor.size} entries than the log holds: the log forked "
        f"({which_differs(largest_held, size - 1)} from what the anchor saw)",
        first=largest_held,
        last=size - 1,
        tree_size=anchor.size,
    )


def check_anchors_beyond(
    anchors: Sequence[Anchor], statuses: Sequence[AnchorStatus], *, size: int
) -> tuple[list[AnchorStatus], list[Finding]]:
    """Step 3: an anchor larger than the log shows it was rolled back or truncated;
    one within it that the walk could not check is a finding too."""
    final: list[AnchorStatus] = []
    findings: list[Finding] = []
    for anchor, status in zip(anchors, statuses, strict=True):
        if status == AnchorStatus.NOT_CHECKED and anchor.size <= size:
            findings.append(
                Finding(
                    FindingKind.ANCHOR,
                    f"anchor {anchor.label} of size {anchor.size} cannot be "
                    "checked: the indices have a gap before it",
                    tree_size=anchor.size,
                )
            )
        if anchor.size > size:
            status = AnchorStatus.ROLLED_BACK
            findings.append(
                Finding(
                    FindingKind.ANCHOR,
                    f"anchor {anchor.label} commits to {anchor.size} entries but "
                    f"the log holds only {size}: it was rolled back or truncated",
                    first=size,
                    last=anchor.size - 1,
                    tree_size=anchor.size,
                )
            )
        final.append(status)
    return final, findings
