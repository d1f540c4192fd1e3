"""RFC 8785 canonical JSON, base64url and the request digest."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import Any

import orjson
import rfc8785

from govmesh.runtime.errors import InvalidInput


class CanonicalizationError(InvalidInput, ValueError):
    """A value that has no RFC 8785 form (NaN, infinity, a non-string key, ...)."""


#: I-JSON's exact integers (RFC 7493): what RFC 8785 serializes without loss.
SAFE_INTEGER = 2**53 - 1
#: The deepest nesting an artifact's header or payload may have. Protobuf
#: refuses messages nested deeper than 100, and every JSON level is two levels
#: of a Struct: an artifact's claims must reach policy and the engine whole.
MAX_JSON_DEPTH = 32


#: How deeply orjson nests before it refuses to encode.
_ORJSON_MAX_DEPTH = 255


class _Slow(InvalidInput):
    """`value` needs the full RFC 8785 serializer."""


def _plain(value: Any) -> bool:
    # Whether orjson's sorted compact output of `value`, as it is, is byte for
    # byte RFC 8785: ASCII keys (code point order is UTF-16 order there),
    # integers within I-JSON's range, no floats and nothing but JSON types.
    # A walk that builds nothing: the common case, every lineage entry read.
    kind = type(value)
    if kind is not dict and kind is not list and kind is not tuple:
        return (
            kind is str
            or kind is bool
            or value is None
            or (kind is int and -SAFE_INTEGER <= value <= SAFE_INTEGER)
        )
    containers = [(value, 1)]
    while containers:
        container, depth = containers.pop()
        if depth > _ORJSON_MAX_DEPTH:
            return False  # orjson would refuse it; and a cycle ends here
        if type(container) is dict:
            try:
                if not all(map(str.isascii, container)):
                    return False
            except TypeError:  # a key that is not a string
                return False
            items = container.values()
        else:
            items = container
        for item in items:
            kind = type(item)
            if kind is str or item is None or kind is bool:
                continue
            if kind is dict or kind is list or kind is tuple:
                containers.append((item, depth + 1))
            elif kind is not int or not -SAFE_INTEGER <= item <= SAFE_INTEGER:
                return False
    return True


def _fast_form(value: Any) -> Any:
    # The value with whole-number floats as ints, if orjson's sorted compact
    # output of it is byte for byte RFC 8785: ASCII keys (code point order is
    # UTF-16 order there), integers within I-JSON's range, and no fractional
    # or huge floats, whose ECMAScript number form orjson does not promise.
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        if -SAFE_INTEGER <= value <= SAFE_INTEGER:
            return value
        raise _Slow
    if kind is float:
        if value.is_integer() and -SAFE_INTEGER <= value <= SAFE_INTEGER:
            return int(value)
        raise _Slow
    if kind is dict:
        out = {}
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                raise _Slow
            out[key] = _fast_form(item)
        return out
    if kind is list or kind is tuple:
        return [_fast_form(item) for item in value]
    raise _Slow


def fast_canonical_json(value: Any) -> bytes | None:
    """The RFC 8785 serialization of a plain `value`, or None when it needs the full serializer.

    Plain values (ASCII keys, integers within I-JSON's range, whole numbers)
    take orjson's sorted compact encoding, which is exactly RFC 8785 for them;
    a property test holds it to the reference serializer. A value with no
    floats is encoded as it is; whole-number floats (a protobuf Struct holds
    only floats) are made ints first.
    """
    try:
        form = value if _plain(value) else _fast_form(value)
        return orjson.dumps(form, option=orjson.OPT_SORT_KEYS)
    except (_Slow, RecursionError, orjson.JSONEncodeError):
        return None


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 (JCS) serialization of `value`.

    The common case takes `fast_canonical_json`; everything else goes through
    the reference serializer.
    """
    fast = fast_canonical_json(value)
    if fast is not None:
        return fast
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError, RecursionError) as exc:
        raise CanonicalizationError(str(exc)) from exc


def json_depth(value: Any, limit: int) -> int:
    """How deeply `value` nests (a scalar is 1), counted no further than just past `limit`.

    Iterative, so that no nesting exhausts the interpreter's stack.
    """
    stack = [(value, 1)]
    deepest = 0
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return deepest


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode base64url with or without padding; raises ValueError on bad input."""
    if not isinstance(text, str) or any(c in text for c in "+/= \n"):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError("not base64url") from exc


def sha256_b64url(data: bytes) -> str:
    """base64url(SHA-256(data)), the form of `req`, `ath` and thumbprints."""
    return b64url(hashlib.sha256(data).digest())


def request_digest(action: str, resource: str, context: Mapping[str, Any]) -> str:
    """The request digest of DESIGN.md section 2.

    SHA-256 of the RFC 8785 canonical JSON of
    {"action": ..., "resource": ..., "context": ...}, base64url without padding.
    """
    document = {"action": action, "resource": resource, "context": dict(context)}
    return sha256_b64url(canonical_json(document))
