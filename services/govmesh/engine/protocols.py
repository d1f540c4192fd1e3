"""What the engine talks to: its peers as the decision sees them, and their failures.

The decision sees only these Protocols; the gRPC adapters in `peers.py`,
`lineage.py` and `batching.py` implement them and turn RPC errors into
`PeerTimeout` and `PeerUnavailable`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from govmesh.runtime.errors import Unavailable
from govmesh.v1 import common_pb2, policy_pb2, verification_pb2


class PeerError(Unavailable):
    """A peer gave no usable answer."""


class PeerTimeout(PeerError):
    """A peer missed its deadline."""


class PeerUnavailable(PeerError):
    """A peer could not be reached or failed."""


class PeerRejected(PeerUnavailable):
    """A peer refused or could not handle one call as a whole, while healthy.

    A message too large, a batch it finds invalid, an error while handling
    it: something in that call, not the peer's health. The batcher asks
    again for the call's requests in smaller batches; a single request so
    refused is PEER_UNAVAILABLE like any other.
    """


class VerificationPeer(Protocol):
    """The verification service, as the engine sees it."""

    async def verify(
        self, request: verification_pb2.VerifyRequest, *, timeout: float
    ) -> verification_pb2.VerifyResponse: ...


class PolicyPeer(Protocol):
    """The policy authority, as the engine sees it."""

    async def evaluate(
        self, request: policy_pb2.EvaluateRequest, *, timeout: float
    ) -> policy_pb2.EvaluateResponse: ...


class LineageSink(Protocol):
    """Where decisions are recorded; returns only once the entry is committed."""

    async def append(
        self, entry: bytes, decision_id: str, *, timeout: float
    ) -> common_pb2.LineageReceipt: ...


class DenySpool(Protocol):
    """Durable local storage for denies that lineage could not take in time."""

    async def put(self, entry: bytes, decision_id: str) -> None: ...


class GrantSigner(Protocol):
    """Signs the execution grant of an ALLOW."""

    def sign(self, claims: Mapping[str, Any]) -> str: ...
