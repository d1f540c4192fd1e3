"""Lineage receipts: the one check that a receipt is for exactly the bytes appended.

The engine (its AppendBatch batcher and its deny spool) and the lineage
client (its AppendStream) both accept a receipt only through
`receipt_problem`; each turns a problem into its own error.
"""

from __future__ import annotations

import hashlib

from govmesh.v1 import lineage_pb2


def leaf_hash(entry: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d), the leaf hash of RFC 9162 section 2.1.1."""
    return hashlib.sha256(b"\x00" + entry).digest()


def receipt_problem(entry: bytes, answer: lineage_pb2.AppendResponse) -> str | None:
    """Why `answer` is not a receipt for exactly `entry` in a tree that holds it, or None."""
    if answer.error or not answer.HasField("receipt"):
        return f"lineage refused the entry: {answer.error or 'no receipt'}"
    receipt = answer.receipt
    if receipt.leaf_hash != leaf_hash(entry) or receipt.tree_size <= receipt.index:
        return "lineage answered with a receipt for something else"
    return None
