"""RFC 9162 hashing and proofs, checked against published Certificate Transparency vectors."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from govmesh.lineage import merkle
from govmesh.lineage.core import leaf_hash

DATA = Path(__file__).resolve().parents[1] / "data" / "lineage"
REFERENCE = json.loads((DATA / "rfc6962-reference-tree.json").read_text())
LEAVES = [bytes.fromhex(h) for h in REFERENCE["leaf_inputs_hex"]]
LEAF_HASHES = [leaf_hash(leaf) for leaf in LEAVES]
ROOTS = [bytes.fromhex(h) for h in REFERENCE["root_hashes_hex"]]


def _probes(kind: str) -> list[dict[str, Any]]:
    doc = json.loads((DATA / f"transparency-dev-{kind}-probes.json").read_text())
    probes: list[dict[str, Any]] = doc["probes"]
    return probes


def _b64(text: str) -> bytes:
    return base64.b64decode(text)


def _stored_tree(leaves: list[bytes]) -> dict[merkle.Range, bytes]:
    """The perfect subtree hashes a log of `leaves` stores, built by appending."""
    frontier = merkle.Frontier()
    stored: dict[merkle.Range, bytes] = {}
    for index, leaf in enumerate(leaves):
        stored[(index, index + 1)] = leaf
        for level, node in enumerate(frontier.append(leaf), start=1):
            stored[(index + 1 - (1 << level), index + 1)] = node
    return stored


def test_leaf_hashes_match_the_reference_tree() -> None:
    assert [h.hex() for h in LEAF_HASHES] == REFERENCE["node_hashes_hex"][0]


def test_every_stored_subtree_matches_the_reference_node_hashes() -> None:
    stored = _stored_tree(LEAF_HASHES)
    for level, row in enumerate(REFERENCE["node_hashes_hex"]):
        width = 1 << level
        for position, expected in enumerate(row):
            assert stored[(position * width, (position + 1) * width)].hex() == expected


def test_the_frontier_gives_every_reference_root() -> None:
    frontier = merkle.Frontier()
    assert frontier.root() == ROOTS[0] == merkle.EMPTY_ROOT
    for size, leaf in enumerate(LEAF_HASHES, start=1):
        frontier.append(leaf)
        assert frontier.root() == ROOTS[size], size
        assert merkle.reference_root(LEAF_HASHES[:size]) == ROOTS[size]


@pytest.mark.parametrize("vector", REFERENCE["inclusion_proofs"], ids=str)
def test_inclusion_proofs_are_the_published_ones(vector: dict[str, Any]) -> None:
    index, size = vector["index"], vector["tree_size"]
    stored = _stored_tree(LEAF_HASHES)
    proof = merkle.assemble(merkle.inclusion_ranges(index, size), stored)
    assert [h.hex() for h in proof] == vector["path_hex"]
    merkle.verify_inclusion(index, size, LEAF_HASHES[index], proof, ROOTS[size])


@pytest.mark.parametrize("vector", REFERENCE["consistency_proofs"], ids=str)
def test_consistency_proofs_are_the_published_ones(vector: dict[str, Any]) -> None:
    old, new = vector["old_size"], vector["new_size"]
    stored = _stored_tree(LEAF_HASHES)
    proof = merkle.assemble(merkle.consistency_ranges(old, new), stored)
    assert [h.hex() for h in proof] == vector["path_hex"]
    merkle.verify_consistency(old, new, ROOTS[old], ROOTS[new], proof)


@pytest.mark.parametrize("probe", _probes("inclusion"), ids=lambda p: p["file"])
def test_inclusion_verification_agrees_with_every_published_probe(probe: dict[str, Any]) -> None:
    args = (
        probe["leafIdx"],
        probe["treeSize"],
        _b64(probe["leafHash"]),
        [_b64(p) for p in probe["proof"] or []],
        _b64(probe["root"]),
    )
    if probe["wantErr"]:
        with pytest.raises(merkle.ProofError):
            merkle.verify_inclusion(*args)
    else:
        merkle.verify_inclusion(*args)


@pytest.mark.parametrize("probe", _probes("consistency"), ids=lambda p: p["file"])
def test_consistency_verification_agrees_with_every_published_probe(
    probe: dict[str, Any],
) -> None:
    args = (
        probe["size1"],
        probe["size2"],
        _b64(probe["root1"]),
        _b64(probe["root2"]),
        [_b64(p) for p in probe["proof"] or []],
    )
    if probe["wantErr"]:
        with pytest.raises(merkle.ProofError):
            merkle.verify_consistency(*args)
    else:
        merkle.verify_consistency(*args)


def test_the_probe_files_hold_both_valid_and_corrupted_proofs() -> None:
    for kind in ("inclusion", "consistency"):
        probes = _probes(kind)
        assert sum(not p["wantErr"] for p in probes) >= 5
        assert sum(p["wantErr"] for p in probes) >= 80


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))))
def test_inclusion_proofs_from_stored_subtrees_verify_at_any_size(case: tuple[int, int]) -> None:
    size, index = case
    leaves = _leaves(size)
    stored = _stored_tree(leaves)
    proof = merkle.assemble(merkle.inclusion_ranges(index, size), stored)
    root = merkle.reference_root(leaves)
    merkle.verify_inclusion(index, size, leaves[index], proof, root)
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(index, size, leaf_hash(b"other"), proof, root)
    if proof:
        with pytest.raises(merkle.ProofError):
            merkle.verify_inclusion(index, size, leaves[index], proof[:-1], root)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 300).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n))))
def test_consistency_proofs_from_stored_subtrees_verify_between_any_sizes(
    case: tuple[int, int],
) -> None:
    old, new = case
    leaves = _leaves(new)
    stored = _stored_tree(leaves)
    proof = merkle.assemble(merkle.consistency_ranges(old, new), stored)
    old_root, new_root = merkle.reference_root(leaves[:old]), merkle.reference_root(leaves)
    merkle.verify_consistency(old, new, old_root, new_root, proof)
    if old < new:
        forked = merkle.reference_root([*leaves[: old - 1], leaf_hash(b"fork"), *leaves[old:]])
        with pytest.raises(merkle.ProofError):
            merkle.verify_consistency(old, new, old_root, forked, proof)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 8, 1000, 1 << 20, 1_000_000, (1 << 40) + 12345])
def test_proofs_read_at_most_two_stored_hashes_per_level(size: int) -> None:
    levels = size.bit_length()
    for index in (0, size // 3, size - 1):
        needed = merkle.needed_perfect(merkle.inclusion_ranges(index, size))
        assert len(needed) <= 2 * levels
    for old in (1, size // 2 or 1, size - 1 or 1):
        needed = merkle.needed_perfect(merkle.consistency_ranges(old, size))
        assert len(needed) <= 2 * levels


def test_frontier_rebuilds_from_its_stored_parts() -> None:
    leaves = _leaves(77)
    stored = _stored_tree(leaves)
    ranges = merkle.frontier_ranges(77)
    rebuilt = merkle.Frontier.from_parts(77, [stored[r] for r in ranges])
    assert rebuilt.root() == merkle.reference_root(leaves)
    rebuilt.append(leaves[0])
    assert rebuilt.root() == merkle.reference_root([*leaves, leaves[0]])


def test_a_range_that_is_no_tree_node_is_refused() -> None:
    with pytest.raises(ValueError, match="not a node"):
        merkle.perfect_parts(1, 4)
    with pytest.raises(merkle.ProofError):
        merkle.inclusion_ranges(5, 5)
    with pytest.raises(merkle.ProofError):
        merkle.consistency_ranges(6, 5)
