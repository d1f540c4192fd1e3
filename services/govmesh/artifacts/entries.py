"""What the lineage log accepts as an entry: one statement of its rules.

Lineage refuses entries with these rules; the engine checks every entry it
builds with the same function before the entry leaves, and verification
refuses claims that could not be recorded. An entry these rules accept is
one Postgres can store: no NUL in a text column, no time beyond range, no
value too large for a B-tree index.

An entry is RFC 8785 canonical JSON. The log stores exactly the bytes it was
given and hashes exactly those bytes, so it refuses anything that is not
already canonical: two encodings of one decision must never be two leaves.
"""

from __future__ import annotations

import json
import re
import unicodedata
import uuid
from datetime import UTC, datetime
from hashlib import sha256
from typing import Any, NamedTuple

import orjson

from govmesh.artifacts.canonical import (
    CanonicalizationError,
    canonical_json,
    fast_canonical_json,
)
from govmesh.runtime.errors import InvalidInput

MAX_ENTRY_BYTES = 64 * 1024
#: The longest value of an indexed text field (subject, trace id), in UTF-8
#: bytes: a B-tree index row holds at most about 2.7 kB, and a SPIFFE ID at
#: most 2048 bytes.
MAX_INDEXED_BYTES = 2048
#: The longest refusal reason a refusal record carries.
MAX_REFUSAL_REASON_CHARS = 1024

#: The namespace of refusal record ids when the refused entry's own id cannot be used.
_REFUSALS = uuid.UUID("0b6f3e52-8d4a-4f0e-9c21-7a5d6e4b3c1f")

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class EntryRejected(InvalidInput, ValueError):
    """An entry the log refuses to store; the message says why."""


class EntryFields(NamedTuple):
    """The fields of an accepted entry that the log indexes or audits."""

    decision_id: uuid.UUID
    kind: str | None = None
    time: datetime | None = None
    subject: str | None = None
    trace_id: str | None = None
    engine_id: str | None = None
    engine_seq: int | None = None
    amends: uuid.UUID | None = None


def text_problem(value: str, *, max_bytes: int = MAX_INDEXED_BYTES) -> str | None:
    """Why `value` cannot be recorded as an indexed text field, or None.

    Control characters (NUL first: Postgres text cannot hold it) and lone
    surrogates (not UTF-8) are refused, and so is a value past `max_bytes`.
    """
    for char in value:
        category = unicodedata.category(char)
        if category == "Cc":
            return f"holds the control character U+{ord(char):04X}"
        if category == "Cs":
            return "holds a lone surrogate"
    if len(value.encode("utf-8")) > max_bytes:
        return f"is longer than {max_bytes} bytes"
    return None


def _reject_constant(text: str) -> Any:
    raise EntryRejected(f"entry holds {text}, which JSON does not allow")


def is_canonical(data: bytes) -> tuple[bool, Any]:
    """Whether `data` is RFC 8785 canonical JSON; also returns the parsed value.

    The common case (ASCII, no floats, safe integers) is decided by comparing
    with `fast_canonical_json`, the one fast RFC 8785 path: code point order
    is UTF-16 order for ASCII keys, the escapes agree, and integers print
    alike (tests check this against rfc8785). Anything else, including every
    entry that fails that comparison, is decided by the full RFC 8785
    serializer. Raises EntryRejected when `data` is not JSON at all.
    """
    if data.isascii():
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
        else:
            if type(value) in (dict, list) and fast_canonical_json(value) == data:
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


def _optional_str(document: dict[str, Any], key: str, *, indexed: bool = False) -> str | None:
    value = document.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise EntryRejected(f"entry field {key!r} must be a string")
    if "\0" in value:
        # Postgres text cannot hold NUL: refused here, alone, rather than failing
        # the whole batch it would be committed with.
        raise EntryRejected(f"entry field {key!r} holds a NUL character")
    if indexed and len(value.encode("utf-8")) > MAX_INDEXED_BYTES:
        raise EntryRejected(f"entry field {key!r} is longer than {MAX_INDEXED_BYTES} bytes")
    return value


def _uuid(value: Any, what: str) -> uuid.UUID:
    if not isinstance(value, str):
        raise EntryRejected(f"{what} must be a UUID string")
    if not _UUID.fullmatch(value):
        raise EntryRejected(f"{what} {value!r} is not a lowercase hyphenated UUID")
    return uuid.UUID(value)


def _engine(document: dict[str, Any]) -> tuple[str | None, int | None]:
    engine = document.get("engine")
    if engine is None:
        return None, None
    if not isinstance(engine, dict):
        raise EntryRejected("entry field 'engine' must be an object")
    engine_id, engine_seq = engine.get("id"), engine.get("seq")
    if not isinstance(engine_id, str) or not engine_id:
        raise EntryRejected("entry engine id must be a non-empty string")
    if isinstance(engine_seq, bool) or not isinstance(engine_seq, int) or engine_seq < 0:
        raise EntryRejected("entry engine seq must be an integer >= 0")
    return engine_id, engine_seq


def read_entry(data: bytes, decision_id: str) -> EntryFields:
    """Accept only canonical JSON objects that carry `decision_id`; EntryRejected otherwise.

    Fields the log indexes or audits must be well formed when present:
    `time` (ISO 8601 with a UTC offset, within range), `subject` and
    `trace_id` (no NUL, at most MAX_INDEXED_BYTES), `type`, `engine`
    ({"id": str, "seq": int >= 0}) and `amends` (a decision id). A refusal
    record (`"type": "refused"`) names the SHA-256 of the entry it stands for
    and lineage's reason.
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

    engine_id, engine_seq = _engine(document)
    kind = _optional_str(document, "type")
    if kind == "refused":
        digest = document.get("entry_sha256")
        if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
            raise EntryRejected("a refusal record names no entry_sha256")
        reason = document.get("reason")
        if not isinstance(reason, str) or not reason:
            raise EntryRejected("a refusal record gives no reason")

    amends = document.get("amends")
    return EntryFields(
        decision_id=parsed_id,
        kind=kind,
        time=time,
        subject=_optional_str(document, "subject", indexed=True),
        trace_id=_optional_str(document, "trace_id", indexed=True),
        engine_id=engine_id,
        engine_seq=engine_seq,
        amends=None if amends is None else _uuid(amends, "amends"),
    )


def entry_problem(data: bytes, decision_id: str) -> str | None:
    """Why lineage would refuse `data` under `decision_id`, or None when it accepts it."""
    try:
        read_entry(data, decision_id)
    except EntryRejected as exc:
        return str(exc)
    return None


# --- refusal records -------------------------------------------------------------


def refusal_record(
    record_id: str, refused: bytes, reason: str, *, time: datetime
) -> tuple[bytes, dict[str, Any]]:
    """A record that stands in the log for `refused`, an entry lineage refused.

    It names the refused bytes by their SHA-256 (the bytes themselves are
    kept aside by whoever held them) and gives lineage's reason. It carries
    the refused entry's engine counter when that is readable, so the counter
    the auditor checks for gaps stays whole. Returns the canonical bytes and
    the document.
    """
    record: dict[str, Any] = {
        "v": 1,
        "type": "refused",
        "decision_id": record_id,
        "time": time.astimezone(UTC).isoformat(timespec="milliseconds"),
        "entry_sha256": sha256(refused).hexdigest(),
        # Escaped, not dropped: lineage's words may quote what it refused.
        "reason": reason[:MAX_REFUSAL_REASON_CHARS].encode("utf-8", "backslashreplace").decode()
        or "refused",
    }
    document = _safe_loads(refused)
    if isinstance(document, dict):
        try:
            engine_id, engine_seq = _engine(document)
        except EntryRejected:
            engine_id = engine_seq = None
        if engine_id is not None and text_problem(engine_id) is None:
            record["engine"] = {"id": engine_id, "seq": engine_seq}
        if document.get("decision") in ("ALLOW", "DENY"):
            record["decision"] = document["decision"]
    return canonical_json(record), record


def _safe_loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def refusal_id(decision_id: str, refused: bytes) -> str:
    """The id a refusal record takes: the refused entry's own, when that is a valid id,
    else one derived from the refused bytes (so that a retry finds the same record)."""
    if isinstance(decision_id, str) and _UUID.fullmatch(decision_id):
        return decision_id
    return derived_refusal_id(refused)


def derived_refusal_id(refused: bytes) -> str:
    """The refusal record id derived from the refused bytes alone."""
    return str(uuid.uuid5(_REFUSALS, sha256(refused).hexdigest()))


def refuses(logged: bytes, refused: bytes) -> bool:
    """Whether the logged entry `logged` is a refusal record standing for `refused`."""
    document = _safe_loads(logged)
    return (
        isinstance(document, dict)
        and document.get("type") == "refused"
        and document.get("entry_sha256") == sha256(refused).hexdigest()
    )
