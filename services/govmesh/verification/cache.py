"""A bounded cache of artifacts whose signatures already verified.

Keyed by the SHA-256 of the token's exact bytes, so a hit is the very token
that verified before; an entry lives until the token expires (plus the clock
skew), the least recently used entry goes first when the cache is full, and a
new trust configuration starts with a new, empty cache. Only signature
verification is saved: every other check runs on every request.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


def token_key(kind: str, token: str) -> bytes:
    """The cache key of `token` presented as `kind` ("mandate", "attestation")."""
    return hashlib.sha256(kind.encode("ascii") + b"\0" + token.encode("utf-8")).digest()


class VerifiedTokenCache(Generic[V]):
    """LRU of verified tokens with a per-entry expiry; max_entries=0 disables it."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self._max = max_entries
        self._entries: OrderedDict[bytes, tuple[float, V]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, now: float) -> V | None:
        """The value stored for `key` unless it expired."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        expires_at, value = entry
        if now >= expires_at:
            del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: bytes, value: V, expires_at: float, now: float) -> None:
        """Remember `value` until `expires_at`; evict the least recently used beyond the bound."""
        if self._max == 0 or expires_at <= now:
            return
        self._entries[key] = (expires_at, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
