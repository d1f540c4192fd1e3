"""The one reader of compact JWS: strict, and shared by every service that reads a token.

Parsing is stricter than RFC 7515 asks, because two readers that accept two
spellings of one token invite confusion: every segment must be canonical
base64url (re-encoding gives the same text), header and payload must be JSON
objects with no duplicate member names, nested at most MAX_JSON_DEPTH deep,
and every number one that I-JSON (RFC 7493) admits: no NaN, no infinity
(1e400), no integer beyond 2^53 - 1 in magnitude. The token is bounded in
size.

Verification reads tokens with `parse_compact` before it checks their
signatures; the engine reads the claims it shows policy with the same
function, so the engine never acts on claims that verification would refuse
to read, nor reads other claims than verification from the same token.
Signatures are not checked here (`govmesh.verification.jose` does that).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from govmesh.artifacts.canonical import (
    MAX_JSON_DEPTH,
    SAFE_INTEGER,
    b64url,
    b64url_decode,
    json_depth,
)
from govmesh.runtime.errors import InvalidInput

#: The longest artifact accepted, in characters (the engine's own limit).
MAX_TOKEN_CHARS = 16 * 1024


class TokenError(InvalidInput, ValueError):
    """A token that is not a well-formed compact JWS, or whose signature does not verify."""


@dataclass(frozen=True)
class CompactJWS:
    """A parsed, not yet verified, compact JWS."""

    header: Mapping[str, Any]
    payload: Mapping[str, Any]
    signing_input: bytes
    signature: bytes


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _shown(text: str) -> str:
    return text if len(text) <= 24 else text[:24] + "..."


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {_shown(text)} is out of range")
    return value


# Characters of the longest integer I-JSON admits, sign included: longer text
# is refused before int() converts any of it.
_SAFE_INTEGER_CHARS = len(str(-SAFE_INTEGER))


def _safe_int(text: str) -> int:
    # Refused here, once, for every claim and header member: beyond this range
    # an integer has no exact double, no RFC 8785 form and no protobuf form,
    # and a time claim would overflow where it meets the clock.
    if len(text) <= _SAFE_INTEGER_CHARS:
        value = int(text)
        if -SAFE_INTEGER <= value <= SAFE_INTEGER:
            return value
    raise ValueError(f"integer {_shown(text)} is beyond I-JSON's range, 2^53 - 1")


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        raise ValueError("duplicate member name")
    return members


def strict_json_object(data: bytes) -> dict[str, Any]:
    """Decode a UTF-8 JSON object strictly; ValueError otherwise."""
    try:
        value = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_unique_members,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            parse_int=_safe_int,
        )
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    # Fewer brackets than the bound cannot nest past it: most tokens skip the walk.
    brackets = data.count(b"[") + data.count(b"{")
    if brackets > MAX_JSON_DEPTH and json_depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ValueError(f"nested more than {MAX_JSON_DEPTH} deep")
    return value


def _segment(text: str, what: str) -> bytes:
    try:
        data = b64url_decode(text)
    except ValueError:
        raise TokenError(f"{what} is not base64url") from None
    if b64url(data) != text:
        raise TokenError(f"{what} is not canonical base64url")
    return data


def parse_compact(token: str) -> CompactJWS:
    """Split and decode a compact JWS; TokenError if it is not one."""
    if not isinstance(token, str) or not token:
        raise TokenError("empty token")
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenError(f"longer than {MAX_TOKEN_CHARS} characters")
    if not token.isascii():
        raise TokenError("not ASCII")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError(f"{len(parts)} segments, a compact JWS has 3")
    header_b64, payload_b64, signature_b64 = parts
    if not header_b64 or not payload_b64:
        raise TokenError("empty header or payload (detached payloads are refused)")
    header_raw = _segment(header_b64, "header")
    payload_raw = _segment(payload_b64, "payload")
    # An empty signature (an unsecured JWS) parses, so that its header can be
    # refused by name; it never verifies.
    signature = _segment(signature_b64, "signature") if signature_b64 else b""
    try:
        header = strict_json_object(header_raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TokenError(f"header: {exc}") from None
    try:
        payload = strict_json_object(payload_raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TokenError(f"payload: {exc}") from None
    return CompactJWS(
        header=header,
        payload=payload,
        signing_input=f"{header_b64}.{payload_b64}".encode("ascii"),
        signature=signature,
    )
