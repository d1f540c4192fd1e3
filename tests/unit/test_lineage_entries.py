"""What the log accepts as an entry: canonical JSON, stored and hashed exactly."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from govmesh.artifacts.canonical import canonical_json
from govmesh.lineage.core import EntryRejected, check_entry, is_canonical, leaf_hash


def decision(**fields: Any) -> dict[str, Any]:
    """An entry shaped like the engine's."""
    decision_id = str(uuid.uuid4())
    return {
        "v": 1,
        "type": "decision",
        "decision_id": decision_id,
        "engine": {"id": "host/abc", "seq": 0},
        "time": "2026-11-26T10:00:00.123+00:00",
        "request_digest": "x" * 43,
        "subject": "spiffe://govmesh.dev/agent/demo",
        "action": "payments.transfer",
        "resource": "account:acme/treasury",
        "decision": "ALLOW",
        "reason": None,
        "failed_checks": [],
        "policy": {"bundle": "ab" * 32, "epoch": 3, "decision": "ALLOW", "determining": ["p"]},
        "shadow": None,
        "grant_id": decision_id,
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "span_id": "b7ad6b7169203331",
        **fields,
    }


def test_leaf_hash_is_rfc9162() -> None:
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()


def test_a_canonical_decision_is_accepted_with_its_index_fields() -> None:
    doc = decision()
    data = canonical_json(doc)
    entry = check_entry(data, doc["decision_id"])
    assert entry.data == data
    assert entry.leaf_hash == leaf_hash(data)
    assert entry.subject == doc["subject"]
    assert entry.trace_id == doc["trace_id"]
    assert entry.engine_id == "host/abc" and entry.engine_seq == 0
    assert entry.time is not None and entry.time.microsecond == 123000
    assert entry.kind == "decision"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b'{"decision_id": "x"}', "canonical"),
        (b'{"b":1,"a":2}', "canonical"),
        (b"[1,2]", "object"),
        (b"not json", "JSON"),
        (b"\xff\xfe", "UTF-8"),
        (b'{"a":NaN}', "NaN"),
        (b"", "bytes"),
        (b'{"a":1.0}', "canonical"),
        (b'{"a":"\\u00e9"}', "canonical"),
        (b'{"a":1,"a":1}', "canonical"),
    ],
)
def test_non_canonical_or_non_json_entries_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(EntryRejected, match=why):
        check_entry(data, "00000000-0000-4000-8000-000000000000")


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"time": "yesterday"}, "ISO 8601"),
        ({"time": "2026-11-26T10:00:00"}, "UTC offset"),
        ({"engine": {"id": "e", "seq": -1}}, "seq"),
        ({"engine": {"id": "e", "seq": True}}, "seq"),
        ({"engine": {"id": "", "seq": 1}}, "engine id"),
        ({"engine": "e"}, "object"),
        ({"subject": 7}, "subject"),
        ({"amends": "not-a-uuid"}, "UUID"),
        # What Postgres cannot store is refused on its own, never in a batch.
        ({"subject": "agent\u0000x"}, "NUL"),
        ({"trace_id": "\u0000"}, "NUL"),
        ({"time": "0001-01-01T00:00:00+05:00"}, "out of range"),
        ({"time": "9999-12-31T23:00:00-05:00"}, "out of range"),
    ],
)
def test_malformed_audited_fields_are_refused(fields: dict[str, Any], why: str) -> None:
    doc = decision(**fields)
    with pytest.raises(EntryRejected, match=why):
        check_entry(canonical_json(doc), doc["decision_id"])


def test_the_entry_must_carry_the_decision_id_it_is_appended_under() -> None:
    doc = decision()
    with pytest.raises(EntryRejected, match="decision_id"):
        check_entry(canonical_json(doc), str(uuid.uuid4()))
    doc = decision(decision_id="not-a-uuid")
    with pytest.raises(EntryRejected, match="UUID"):
        check_entry(canonical_json(doc), "not-a-uuid")
    upper = str(uuid.uuid4()).upper()
    doc = decision(decision_id=upper)
    with pytest.raises(EntryRejected, match="lowercase"):
        check_entry(canonical_json(doc), upper)


def test_an_oversized_entry_is_refused() -> None:
    doc = decision(resource="r" * 70_000)
    with pytest.raises(EntryRejected, match="bytes"):
        check_entry(canonical_json(doc), doc["decision_id"])


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_the_fast_canonical_check_agrees_with_rfc8785(value: Any) -> None:
    try:
        canonical = rfc8785.dumps(value)
        # Values whose canonical text reads back as something else (a float that
        # prints as an unsafe integer) have no stable form; the log refuses them.
        canonical_json(json.loads(canonical))
    except (rfc8785.CanonicalizationError, ValueError):
        return
    assert is_canonical(canonical)[0]
    for other in (
        json.dumps(value).encode(),
        json.dumps(value, sort_keys=True, separators=(",", ":")).encode(),
        json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(),
    ):
        assert is_canonical(other)[0] == (other == canonical)


@pytest.mark.parametrize("code", range(128))
def test_every_ascii_character_has_exactly_one_accepted_form(code: int) -> None:
    canonical = rfc8785.dumps({"k": chr(code)})
    assert is_canonical(canonical)[0]
    others = {
        b'{"k":"\\u%04x"}' % code,
        b'{"k":"\\u%04X"}' % code,
        json.dumps({"k": chr(code)}).encode(),
        b'{"k":"\\/"}' if code == ord("/") else b"",
    } - {canonical, b""}
    for other in others:
        assert not is_canonical(other)[0], other
