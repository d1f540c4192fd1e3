"""Offline proof bundles: a valid one checks out, every altered one fails."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from govmesh.artifacts.canonical import canonical_json
from govmesh.lineage import merkle
from govmesh.lineage.bundle import BundleError, ProofBundle, check_bundle
from govmesh.lineage.notes import Checkpoint, Cosigner, NoteSigner

LOG = NoteSigner("govmesh.test/lineage", Ed25519PrivateKey.generate())
WITNESS = Cosigner("witness.test/w1", Ed25519PrivateKey.generate())


def _entry(i: int) -> tuple[bytes, str]:
    decision_id = str(uuid.uuid4())
    doc = {"v": 1, "type": "decision", "decision_id": decision_id, "decision": "DENY", "n": i}
    return canonical_json(doc), decision_id


def make_bundle(index: int = 6, size: int = 11, *, cosign: bool = True) -> ProofBundle:
    entries = [_entry(i) for i in range(size)]
    leaves = [merkle.leaf_hash(e) for e, _ in entries]
    stored = {}
    frontier = merkle.Frontier()
    for i, leaf in enumerate(leaves):
        stored[(i, i + 1)] = leaf
        for level, node in enumerate(frontier.append(leaf), start=1):
            stored[(i + 1 - (1 << level), i + 1)] = node
    text = Checkpoint(LOG.name, size, frontier.root()).text()
    note = LOG.sign(text) + (WITNESS.signature_line(text, 1_800_000_000) if cosign else "")
    return ProofBundle(
        decision_id=entries[index][1],
        index=index,
        tree_size=size,
        entry=entries[index][0],
        inclusion_proof=tuple(merkle.assemble(merkle.inclusion_ranges(index, size), stored)),
        checkpoint=note,
    )


def test_a_valid_bundle_checks_out_through_json_with_its_witness() -> None:
    bundle = ProofBundle.from_json(make_bundle().to_json())
    result = check_bundle(bundle, log_key=LOG.verifier, witnesses=[WITNESS.verifier])
    assert result.index == 6 and result.tree_size == 11
    assert result.decision["decision_id"] == bundle.decision_id
    assert result.witnessed_by == ["witness.test/w1"]


def _flip(data: bytes) -> bytes:
    return bytes([data[0] ^ 1]) + data[1:]


ALTERATIONS: dict[str, Callable[[ProofBundle], ProofBundle]] = {
    "entry changed": lambda b: replace(b, entry=b.entry.replace(b'"DENY"', b'"ALLOW"')),
    "index changed": lambda b: replace(b, index=b.index + 1),
    "tree size changed": lambda b: replace(b, tree_size=b.tree_size + 1),
    "proof hash flipped": lambda b: replace(
        b, inclusion_proof=(_flip(b.inclusion_proof[0]), *b.inclusion_proof[1:])
    ),
    "proof shortened": lambda b: replace(b, inclusion_proof=b.inclusion_proof[:-1]),
    "decision id changed": lambda b: replace(b, decision_id=str(uuid.uuid4())),
    "checkpoint signed by another key": lambda b: replace(
        b,
        checkpoint=NoteSigner(LOG.name, Ed25519PrivateKey.generate()).sign(
            b.checkpoint.split("\n\n")[0] + "\n"
        ),
    ),
    "checkpoint root changed": lambda b: replace(
        b, checkpoint=b.checkpoint.replace(b.checkpoint.split("\n")[2], "A" * 43 + "=", 1)
    ),
}


@pytest.mark.parametrize("alteration", ALTERATIONS)
def test_every_alteration_fails(alteration: str) -> None:
    altered = ALTERATIONS[alteration](make_bundle())
    with pytest.raises(BundleError):
        check_bundle(ProofBundle.from_json(altered.to_json()), log_key=LOG.verifier)


def test_a_forged_cosignature_fails_the_bundle() -> None:
    bundle = make_bundle(cosign=False)
    text = bundle.checkpoint.split("\n\n")[0] + "\n"
    impostor = Cosigner(WITNESS.name, Ed25519PrivateKey.generate())
    line = impostor.signature_line(text, 1)
    sig = base64.b64decode(line.split(" ")[-1])
    forged = line.replace(
        line.split(" ")[-1].strip(), base64.b64encode(WITNESS.verifier.key_id + sig[4:]).decode()
    )
    with pytest.raises(BundleError, match="does not verify"):
        check_bundle(
            replace(bundle, checkpoint=bundle.checkpoint + forged),
            log_key=LOG.verifier,
            witnesses=[WITNESS.verifier],
        )


@pytest.mark.parametrize(
    "doc",
    [
        "not json",
        {"format": "something-else"},
        {"format": "govmesh-lineage-proof/v1"},
        {
            "format": "govmesh-lineage-proof/v1",
            "decision_id": "x",
            "index": "7",
            "tree_size": 1,
            "entry": "",
            "inclusion_proof": [],
            "checkpoint": "",
        },
        {
            "format": "govmesh-lineage-proof/v1",
            "decision_id": "x",
            "index": 0,
            "tree_size": 1,
            "entry": "!!",
            "inclusion_proof": [],
            "checkpoint": "",
        },
    ],
)
def test_malformed_bundles_are_refused_with_a_message(doc: Any) -> None:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    with pytest.raises(BundleError):
        ProofBundle.from_json(text)
