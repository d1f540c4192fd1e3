"""Lineage entries and their hashes: pure logic, no gRPC, no database."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass

from govmesh.artifacts.canonical import CanonicalizationError, canonical_json

MAX_ENTRY_BYTES = 64 * 1024


class EntryRejected(ValueError):
    """An entry the log refuses to store."""


@dataclass(frozen=True)
class Entry:
    """A checked entry: its bytes are exactly what is stored and hashed."""

    decision_id: uuid.UUID
    data: bytes
    leaf_hash: bytes


@dataclass(frozen=True)
class Receipt:
    """Where a committed entry sits."""

    index: int
    leaf_hash: bytes
    tree_size: int
    checkpoint: str


def leaf_hash(entry: bytes) -> bytes:
    """RFC 9162 section 2.1.1: SHA-256(0x00 || entry)."""
    return hashlib.sha256(b"\x00" + entry).digest()


def check_entry(data: bytes, decision_id: str) -> Entry:
    """Accept only RFC 8785 canonical JSON objects that name `decision_id`."""
    if not data or len(data) > MAX_ENTRY_BYTES:
        raise EntryRejected(f"entry must be 1..{MAX_ENTRY_BYTES} bytes")
    try:
        document = json.loads(data)
        canonical = canonical_json(document)
    except (ValueError, CanonicalizationError) as exc:
        raise EntryRejected(f"entry is not JSON: {exc}") from None
    if canonical != data:
        raise EntryRejected("entry is not RFC 8785 canonical JSON")
    if not isinstance(document, dict) or document.get("decision_id") != decision_id:
        raise EntryRejected("entry does not carry its decision_id")
    try:
        parsed = uuid.UUID(decision_id)
    except ValueError:
        raise EntryRejected(f"decision_id {decision_id!r} is not a UUID") from None
    return Entry(decision_id=parsed, data=data, leaf_hash=leaf_hash(data))
