"""The Struct conversion on the decision path agrees with json_format, value for value."""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from govmesh.artifacts.structs import struct_to_dict

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(-(2**53), 2**53)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), _json, max_size=6))
def test_struct_to_dict_is_message_to_dict(value: dict[str, Any]) -> None:
    message = struct_pb2.Struct()
    message.update(value)
    converted = struct_to_dict(message)
    assert converted == json_format.MessageToDict(message)
    assert repr(converted) == repr(json_format.MessageToDict(message))


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused_like_json_format(number: float) -> None:
    message = struct_pb2.Struct()
    message.update({"deep": [{"x": number}]})
    with pytest.raises(ValueError, match=r"NaN|Infinity"):
        json_format.MessageToDict(message)
    with pytest.raises(ValueError, match="NaN or infinite"):
        struct_to_dict(message)


def test_an_unset_value_reads_as_null() -> None:
    message = struct_pb2.Struct()
    message.fields["empty"].SetInParent()
    assert struct_to_dict(message) == json_format.MessageToDict(message) == {"empty": None}
