"""RFC 9162 Merkle trees: hashing, compact ranges, proof shapes and verification.

Pure logic, no I/O. Three ideas carry the whole log:

* A tree of n leaves is split at the largest power of two below n (RFC 9162
  section 2.1.1). Every node of such a tree is either a *perfect* subtree,
  2^k leaves aligned on a multiple of 2^k, or lies on the right edge of the
  tree. A perfect subtree never changes once its last leaf is appended, so
  the log stores its hash once, in the row of that last leaf
  (`nodes_ending_at`), and every proof is assembled from O(log n) of them.
* `Frontier` is the compact range of a tree: the perfect subtrees that make
  up its n leaves, one per set bit of n. It appends a leaf in amortized O(1)
  and yields the root in O(log n), so the sequencer never rehashes the log.
* Proofs are first described as the ranges of leaves whose subtree hashes
  they need (`inclusion_ranges`, `consistency_ranges`); each range resolves
  to at most log n perfect subtrees (`perfect_parts`), which the store reads
  in one query.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# The leaf hash is shared with every receipt check; the tree is built here.
from govmesh.artifacts.receipts import leaf_hash as leaf_hash
from govmesh.runtime.errors import OutOfRange

HASH_SIZE = 32

#: MTH({}) = SHA-256() (RFC 9162 section 2.1.1).
EMPTY_ROOT = hashlib.sha256(b"").digest()

Range = tuple[int, int]


class ProofError(OutOfRange, ValueError):
    """A proof that does not verify, or a request for one that cannot exist."""


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    if n < 2:
        raise ValueError("a tree of fewer than two leaves has no split")
    return 1 << ((n - 1).bit_length() - 1)


def is_perfect(start: int, end: int) -> bool:
    """Whether [start, end) is a perfect subtree: 2^k leaves aligned on 2^k."""
    size = end - start
    return size > 0 and size & (size - 1) == 0 and start % size == 0


def perfect_parts(start: int, end: int) -> list[Range]:
    """The perfect subtrees whose right fold is MTH(D[start:end]), left to right.

    [start, end) must be a node of an RFC 9162 tree (every range a proof
    names is): then its left children are perfect and its hash is
    H(p0, H(p1, ... pk)).
    """
    if not 0 <= start < end:
        raise ValueError(f"empty or negative range [{start}, {end})")
    parts: list[Range] = []
    while not is_perfect(start, end):
        k = split_point(end - start)
        if not is_perfect(start, start + k):
            raise ValueError(f"[{start}, {end}) is not a node of a Merkle tree")
        parts.append((start, start + k))
        start += k
    parts.append((start, end))
    return parts


def fold_right(hashes: Sequence[bytes]) -> bytes:
    """H(h0, H(h1, ... hk)): the hash of a node from its perfect parts."""
    if not hashes:
        raise ValueError("nothing to fold")
    result = hashes[-1]
    for h in reversed(hashes[:-1]):
        result = node_hash(h, result)
    return result


def nodes_ending_at(index: int) -> int:
    """How many perfect subtrees of height >= 1 end at leaf `index`.

    Leaf i closes one perfect subtree per trailing one bit of i: the
    subtrees of 2, 4, ... leaves ending there.
    """
    count = 0
    while index & 1:
        count += 1
        index >>= 1
    return count


def perfect_location(start: int, end: int) -> tuple[int, int]:
    """(row, level) where the hash of the perfect subtree [start, end) is stored."""
    if not is_perfect(start, end):
        raise ValueError(f"[{start}, {end}) is not a perfect subtree")
    return end - 1, (end - start).bit_length() - 1


# --- compact ranges ---------------------------------------------------------


@dataclass
class Frontier:
    """The compact range [0, size): one perfect subtree hash per set bit of size.

    `hashes[i]` covers 2^levels[i] leaves; levels strictly decrease.
    """

    size: int = 0
    hashes: list[bytes] = field(default_factory=list)
    levels: list[int] = field(default_factory=list)

    @classmethod
    def from_parts(cls, size: int, hashes: Sequence[bytes]) -> Frontier:
        """Rebuild from the hashes of `frontier_ranges(size)`, in that order."""
        ranges = frontier_ranges(size)
        if len(ranges) != len(hashes):
            raise ValueError(f"a tree of {size} leaves has {len(ranges)} frontier nodes")
        levels = [(end - start).bit_length() - 1 for start, end in ranges]
        return cls(size=size, hashes=list(hashes), levels=levels)

    def copy(self) -> Frontier:
        return Frontier(self.size, list(self.hashes), list(self.levels))

    def append(self, leaf: bytes) -> list[bytes]:
        """Add one leaf hash; returns the perfect subtrees it completes, by rising level."""
        self.hashes.append(leaf)
        self.levels.append(0)
        completed: list[bytes] = []
        while len(self.levels) >= 2 and self.levels[-1] == self.levels[-2]:
            right = self.hashes.pop()
            level = self.levels.pop()
            merged = node_hash(self.hashes[-1], right)
            self.hashes[-1] = merged
            self.levels[-1] = level + 1
            completed.append(merged)
        self.size += 1
        return completed

    def root(self) -> bytes:
        """MTH of the whole range."""
        return fold_right(self.hashes) if self.hashes else EMPTY_ROOT


def frontier_ranges(size: int) -> list[Range]:
    """The perfect subtrees of the compact range [0, size), left to right."""
    ranges: list[Range] = []
    start = 0
    for bit in reversed(range(size.bit_length())):
        width = 1 << bit
        if size & width:
            ranges.append((start, start + width))
            start += width
    return ranges


# --- proofs -----------------------------------------------------------------


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """The subtrees whose hashes make PATH(index, D[0:size]), in proof order."""
    if not 0 <= index < size:
        raise ProofError(f"index {index} is not in a tree of size {size}")
    ranges: list[Range] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = split_point(hi - lo)
        if index < lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
    ranges.reverse()
    return ranges


def consistency_ranges(old_size: int, new_size: int) -> list[Range]:
    """The subtrees whose hashes make PROOF(old_size, D[0:new_size]), in proof order."""
    if not 0 <= old_size <= new_size:
        raise ProofError(f"no consistency proof from size {old_size} to {new_size}")
    if old_size in (0, new_size):
        return []
    ranges: list[Range] = []
    m, lo, hi, whole = old_size, 0, new_size, True
    while m != hi - lo:
        k = split_point(hi - lo)
        if m <= k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
            m -= k
            whole = False
    if not whole:
        ranges.append((lo, hi))
    ranges.reverse()
    return ranges


def needed_perfect(ranges: Iterable[Range]) -> set[Range]:
    """Every perfect subtree the hashes of `ranges` are built from."""
    needed: set[Range] = set()
    for start, end in ranges:
        needed.update(perfect_parts(start, end))
    return needed


def assemble(ranges: Sequence[Range], perfect: Mapping[Range, bytes]) -> list[bytes]:
    """The hashes of `ranges`, each folded from the stored perfect subtrees."""
    return [fold_right([perfect[p] for p in perfect_parts(s, e)]) for s, e in ranges]


def _check_hashes(hashes: Sequence[bytes], *named: bytes) -> None:
    for h in (*hashes, *named):
        if not isinstance(h, bytes | bytearray) or len(h) != HASH_SIZE:
            raise ProofError("a hash is not 32 bytes")


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that `proof` puts `leaf` at `index` under (RFC 9162 2.1.3.2)."""
    _check_hashes(proof, leaf)
    if not 0 <= index < size:
        raise ProofError(f"index {index} is not in a tree of size {size}")
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise ProofError unless `proof` shows `leaf` at `index` in the tree `root` of `size`."""
    _check_hashes((), root)
    if root_from_inclusion(index, size, leaf, proof) != root:
        raise ProofError("inclusion proof does not lead to the root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Raise ProofError unless `proof` shows tree `old_root` is a prefix of `new_root`.

    RFC 9162 section 2.1.4.2. The empty tree has no consistency proof: it is
    a prefix of every tree, so a proof from it proves nothing.
    """
    if not 0 < old_size <= new_size:
        raise ProofError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size == new_size:
        if proof:
            raise ProofError("equal sizes need an empty proof")
        if old_root != new_root:
            raise ProofError("equal sizes with different roots")
        return
    _check_hashes(proof, old_root, new_root)
    if not proof:
        raise ProofError("consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is itself a node
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is too short")
    if fr != old_root:
        raise ProofError("consistency proof does not lead to the old root")
    if sr != new_root:
        raise ProofError("consistency proof does not lead to the new root")


# --- a tree in memory, for tests and small tools ------------------------------


def reference_root(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[0:n]) straight from the RFC 9162 recursion over leaf hashes."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = split_point(n)
    return node_hash(reference_root(leaves[:k]), reference_root(leaves[k:]))


def perfect_from_leaves(leaves: Sequence[bytes]) -> Callable[[Range], bytes]:
    """A lookup of perfect subtree hashes over in-memory leaf hashes."""

    def lookup(r: Range) -> bytes:
        return reference_root(leaves[r[0] : r[1]])

    return lookup
