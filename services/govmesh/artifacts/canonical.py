"""RFC 8785 canonical JSON, base64url and the request digest."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import Any

import rfc8785


class CanonicalizationError(ValueError):
    """A value that has no RFC 8785 form (NaN, infinity, a non-string key, ...)."""


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 (JCS) serialization of `value`."""
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise CanonicalizationError(str(exc)) from exc


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
