"""Lineage entries: what the log accepts, stores and hashes. Pure logic, no I/O.

An entry is one decision (or an amendment of one) as RFC 8785 canonical
JSON. The log stores exactly the bytes it was given and hashes exactly those
bytes (RFC 9162 leaf hash), so it refuses anything that is not already
canonical: two encodings of one decision must never be two different leaves.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

from govmesh.artifacts.canonical import CanonicalizationError, canonical_json
from govmesh.lineage.merkle import leaf_hash

MAX_ENTRY_BYTES = 64 * 1024
#: Integers beyond ±2^53 have no exact RFC 8785 (IEEE 754 double) form.
_SAFE_INTEGER = 2**53 - 1

__all__ = [
    "MAX_ENTRY_BYTES",
    "Entry",
    "EntryRejected",
    "Receipt",
    "check_entry",
    "is_canonical",
    "leaf_hash",
]


class EntryRejected(ValueError):
    """An entry the log refuses to store; the message says why."""


class Entry(NamedTuple):
    """A checked entry: `data` is exactly what is stored and hashed.

    The other fields are read from `data` for the query indexes; they are
    never trusted over the bytes (the auditor re-reads the bytes).
    """

    decision_id: uuid.UUID
    data: bytes
    leaf_hash: bytes
    kind: str | None = None
    time: datetime | None = None
    subject: str | None = None
    trace_id: str | None = None
    engine_id: str | None = None
    engine_seq: int | None = None
    amends: uuid.UUID | None = None


@dataclass(frozen=True)
class Receipt:
    """Where a committed entry sits, and the signed checkpoint that commits to it."""

    index: int
    leaf_hash: bytes
    tree_size: int
    checkpoint: str


class _NotFast(Exception):
    pass


def _reject_constant(text: str) -> Any:
    raise EntryRejected(f"entry holds {text}, which JSON does not allow")


def _plain(value: Any) -> bool:
    """No floats and no integers beyond ±2^53 anywhere in `value`."""
    containers = [value]
    while containers:
        container = containers.pop()
        for item in container.values() if type(container) is dict else container:
            kind = type(item)
            if kind is str or item is None or kind is bool:
                continue
            if kind is dict or kind is list:
                containers.append(item)
            elif kind is float or not -_SAFE_INTEGER <= item <= _SAFE_INTEGER:
                return False
    return True


def is_canonical(data: bytes) -> tuple[bool, Any]:
    """Whether `data` is RFC 8785 canonical JSON; also returns the parsed value.

    The common case (ASCII, no floats, safe integers) is decided by comparing
    with orjson's sorted compact encoding, which is exactly RFC 8785 there:
    code point order is UTF-16 order for ASCII keys, the escapes agree, and
    integers print alike (tests check this against rfc8785). Anything else,
    including every entry that fails that comparison, is decided by the full
    RFC 8785 serializer. Raises EntryRejected when `data` is not JSON at all.
    """
    if data.isascii():
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
        else:
            if (
                type(value) in (dict, list)
                and _plain(value)
                and orjson.dumps(value, option=orjson.OPT_SORT_KEYS) == data
            ):
                return True, value
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise EntryRejected("entry is not UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
        return canonical_json(value) == data, value
    except EntryRejected:
        raise
    except (ValueError, RecursionError, CanonicalizationError) as exc:
        raise EntryRejected(f"entry is not JSON: {exc}") from None


def _optional_str(document: dict[str, Any], key: str) -> str | None:
    value = document.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise EntryRejected(f"entry field {key!r} must be a string")
    if "\0" in value:
        # Postgres text cannot hold NUL: refused here, alone, rather than failing
        # the whole batch it would be committed with.
        raise EntryRejected(f"entry field {key!r} holds a NUL character")
    return value


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _uuid(value: Any, what: str) -> uuid.UUID:
    if not isinstance(value, str):
        raise EntryRejected(f"{what} must be a UUID string")
    if not _UUID.fullmatch(value):
        raise EntryRejected(f"{what} {value!r} is not a lowercase hyphenated UUID")
    return uuid.UUID(value)


def check_entry(data: bytes, decision_id: str) -> Entry:
    """Accept only canonical JSON objects that carry `decision_id`.

    Fields the log indexes or audits must be well formed when present:
    `time` (ISO 8601 with a UTC offset), `subject`, `trace_id`, `type`,
    `engine` ({"id": str, "seq": int >= 0}) and `amends` (a decision id).
    """
    if not data or len(data) > MAX_ENTRY_BYTES:
        raise EntryRejected(f"entry must be 1..{MAX_ENTRY_BYTES} bytes")
    canonical, document = is_canonical(data)
    if not isinstance(document, dict):
        raise EntryRejected("entry is not a JSON object")
    if not canonical:
        raise EntryRejected("entry is not RFC 8785 canonical JSON")
    if document.get("decision_id") != decision_id:
        raise EntryRejected("entry does not carry its decision_id")
    parsed_id = _uuid(decision_id, "decision_id")

    time: datetime | None = None
    raw_time = _optional_str(document, "time")
    if raw_time is not None:
        try:
            time = datetime.fromisoformat(raw_time)
        except ValueError:
            raise EntryRejected(f"entry time {raw_time!r} is not ISO 8601") from None
        if time.utcoffset() is None:
            raise EntryRejected("entry time has no UTC offset")
        try:
            time.astimezone(UTC)
        except OverflowError:
            raise EntryRejected(f"entry time {raw_time!r} is out of range") from None

    engine_id: str | None = None
    engine_seq: int | None = None
    engine = document.get("engine")
    if engine is not None:
        if not isinstance(engine, dict):
            raise EntryRejected("entry field 'engine' must be an object")
        engine_id, engine_seq = engine.get("id"), engine.get("seq")
        if not isinstance(engine_id, str) or not engine_id:
            raise EntryRejected("entry engine id must be a non-empty string")
        if isinstance(engine_seq, bool) or not isinstance(engine_seq, int) or engine_seq < 0:
            raise EntryRejected("entry engine seq must be an integer >= 0")

    amends = document.get("amends")
    return Entry(
        decision_id=parsed_id,
        data=data,
        leaf_hash=leaf_hash(data),
        kind=_optional_str(document, "type"),
        time=time,
        subject=_optional_str(document, "subject"),
        trace_id=_optional_str(document, "trace_id"),
        engine_id=engine_id,
        engine_seq=engine_seq,
        amends=None if amends is None else _uuid(amends, "amends"),
    )
