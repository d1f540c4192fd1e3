"""canonical_json is RFC 8785: held byte for byte to the reference serializer."""

from __future__ import annotations

import math
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from govmesh.artifacts.canonical import SAFE_INTEGER, CanonicalizationError, canonical_json

_text = st.text(st.characters(codec="utf-8"), max_size=12) | st.text(max_size=12)
_numbers = (
    st.integers(-(2**60), 2**60)
    | st.integers(-SAFE_INTEGER, SAFE_INTEGER)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.floats(allow_nan=False, allow_infinity=False).map(math.floor)
    | st.sampled_from([0.0, -0.0, 1e21, 1e-7, 5e-324, 2.0**53, 2.0**53 + 2, 250.0])
)
_json = st.recursive(
    st.none() | st.booleans() | _numbers | _text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=20,
)


def _reference(value: Any) -> bytes | None:
    try:
        return rfc8785.dumps(value)
    except Exception:
        return None


@settings(max_examples=1500, deadline=None)
@given(_json)
def test_canonical_json_is_the_reference_rfc_8785_serialization(value: Any) -> None:
    expected = _reference(value)
    if expected is None:
        with pytest.raises(CanonicalizationError):
            canonical_json(value)
    else:
        assert canonical_json(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        {"\U0001f600": 1, "\uffff": 2, "a": 3},  # key order by UTF-16 units, not code points
        {"n": 1e21},
        {"n": 0.1},
        {"n": -0.0},
        {"n": 2**53},
        {"s": "\u2028\x7f\x00\ud800"},
    ],
)
def test_values_beside_the_fast_path_agree_too(value: Any) -> None:
    expected = _reference(value)
    if expected is None:
        with pytest.raises(CanonicalizationError):
            canonical_json(value)
    else:
        assert canonical_json(value) == expected


def test_what_has_no_canonical_form_is_refused() -> None:
    for value in ({"n": math.nan}, {"n": math.inf}, {1: "non-string key"}, {"o": object()}):
        with pytest.raises(CanonicalizationError):
            canonical_json(value)
