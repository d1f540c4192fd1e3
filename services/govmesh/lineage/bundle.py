"""Offline proof bundles: one entry, its inclusion proof and the signed checkpoint.

A bundle is what `govmesh lineage proof DECISION_ID` writes and
`govmesh lineage check-proof FILE` verifies with no database and no network,
trusting only the log's verifier key (and witness keys, when given):

    {
      "format": "govmesh-lineage-proof/v1",
      "decision_id": "...", "index": 5, "tree_size": 9,
      "entry": "<base64 of the exact entry bytes>",
      "inclusion_proof": ["<base64 hash>", ...],
      "checkpoint": "<C2SP signed note, with any cosignatures>"
    }
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from govmesh.lineage import merkle
from govmesh.lineage.core import EntryRejected, check_entry
from govmesh.lineage.notes import NoteError, VerifierKey, open_checkpoint
from govmesh.runtime.errors import InvalidInput

FORMAT = "govmesh-lineage-proof/v1"


class BundleError(InvalidInput, ValueError):
    """A bundle that is malformed or does not prove what it claims."""


@dataclass(frozen=True)
class ProofBundle:
    """An entry with everything needed to check it offline."""

    decision_id: str
    index: int
    tree_size: int
    entry: bytes
    inclusion_proof: tuple[bytes, ...]
    checkpoint: str

    def to_json(self) -> str:
        return (
            json.dumps(
                {
                    "format": FORMAT,
                    "decision_id": self.decision_id,
                    "index": self.index,
                    "tree_size": self.tree_size,
                    "entry": base64.b64encode(self.entry).decode(),
                    "inclusion_proof": [base64.b64encode(h).decode() for h in self.inclusion_proof],
                    "checkpoint": self.checkpoint,
                },
                indent=2,
            )
            + "\n"
        )

    @classmethod
    def from_json(cls, text: str) -> ProofBundle:
        try:
            doc = json.loads(text)
        except ValueError:
            raise BundleError("the bundle is not JSON") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise BundleError(f"not a {FORMAT} bundle")
        try:
            return cls(
                decision_id=_typed(doc, "decision_id", str),
                index=_typed(doc, "index", int),
                tree_size=_typed(doc, "tree_size", int),
                entry=base64.b64decode(_typed(doc, "entry", str), validate=True),
                inclusion_proof=tuple(
                    base64.b64decode(_str(h), validate=True)
                    for h in _typed(doc, "inclusion_proof", list)
                ),
                checkpoint=_typed(doc, "checkpoint", str),
            )
        except (binascii.Error, ValueError) as exc:
            raise BundleError(f"the bundle is malformed: {exc}") from None


def _typed(doc: dict[str, Any], key: str, kind: type) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BundleError(f"bundle field {key!r} is missing or not a {kind.__name__}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise BundleError("an inclusion proof hash is not a string")
    return value


@dataclass
class BundleCheck:
    """What a verified bundle proves."""

    decision: dict[str, Any]
    index: int
    tree_size: int
    root: bytes
    witnessed_by: list[str] = field(default_factory=list)


def check_bundle(
    bundle: ProofBundle,
    *,
    log_key: VerifierKey,
    origin: str | None = None,
    witnesses: Sequence[VerifierKey] = (),
) -> BundleCheck:
    """Verify a bundle offline; raises BundleError naming the first thing that fails.

    1. The checkpoint carries the log key's valid signature, for the origin.
    2. Its size is the bundle's tree size.
    3. The entry is canonical JSON naming the bundle's decision id.
    4. The inclusion proof puts SHA-256(0x00 || entry) at the index under the signed root.
    5. Cosignatures by the given witness keys verify (a forged one fails the bundle).
    """
    # 1.
    try:
        signed = open_checkpoint(bundle.checkpoint, log_key, origin=origin)
    except NoteError as exc:
        raise BundleError(f"the checkpoint does not verify: {exc}") from None
    # 2.
    if signed.size != bundle.tree_size:
        raise BundleError(
            f"the checkpoint is of size {signed.size}, the proof of size {bundle.tree_size}"
        )
    # 3.
    try:
        check_entry(bundle.entry, bundle.decision_id)
    except EntryRejected as exc:
        raise BundleError(f"the entry is not a valid lineage entry: {exc}") from None
    # 4.
    try:
        merkle.verify_inclusion(
            bundle.index,
            bundle.tree_size,
            merkle.leaf_hash(bundle.entry),
            bundle.inclusion_proof,
            signed.root,
        )
    except merkle.ProofError as exc:
        raise BundleError(f"the entry is not in the signed tree: {exc}") from None
    # 5.
    witnessed = []
    for witness in witnesses:
        try:
            if signed.note.verified_by(witness) is not None:
                witnessed.append(witness.name)
        except NoteError as exc:
            raise BundleError(str(exc)) from None
    return BundleCheck(
        decision=json.loads(bundle.entry),
        index=bundle.index,
        tree_size=bundle.tree_size,
        root=signed.root,
        witnessed_by=witnessed,
    )
