"""The policy authority's administration API: publish, inspect and activate bundles.

    async with await PolicyAdminClient.connect("127.0.0.1:50052") as admin:
        state = await admin.state()
        listing = await admin.list_bundles(limit=20)

Every call raises one of the typed refusals below when the authority does
not answer with what was asked for; `REFUSALS` names them all. A refusal's
text is the status and the authority's reason ("ABORTED: epoch 4 is not the
next epoch ...").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Self, TypeVar

import grpc

from govmesh.runtime.channel import ChannelClient
from govmesh.runtime.errors import (
    Conflict,
    GovmeshError,
    InvalidInput,
    NotFound,
    PermissionRefused,
    PreconditionFailed,
    Unavailable,
)
from govmesh.v1 import policy_pb2, policy_pb2_grpc

DEFAULT_TIMEOUT_S = 30.0

T = TypeVar("T")


class BundleRefused(InvalidInput):
    """The bundle or request is not acceptable as sent (INVALID_ARGUMENT)."""


class SignatureRefused(PermissionRefused):
    """A signature is not from a trusted policy admin, or does not fit (PERMISSION_DENIED)."""


class EpochTaken(Conflict):
    """Another change took the epoch the statement names: sign for the next one (ABORTED)."""


class UnknownVersion(NotFound):
    """No bundle (or epoch) has that version, or a prefix names several (NOT_FOUND)."""


class StateRefused(PreconditionFailed):
    """The authority's state does not allow the change (FAILED_PRECONDITION)."""


class AuthorityUnavailable(Unavailable):
    """The authority did not answer, or failed to (UNAVAILABLE, DEADLINE_EXCEEDED, others)."""


#: Every refusal a call of this client raises.
REFUSALS: tuple[type[GovmeshError], ...] = (
    BundleRefused,
    SignatureRefused,
    EpochTaken,
    UnknownVersion,
    StateRefused,
    AuthorityUnavailable,
)

_BY_CODE: dict[grpc.StatusCode, type[GovmeshError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: BundleRefused,
    grpc.StatusCode.PERMISSION_DENIED: SignatureRefused,
    grpc.StatusCode.ABORTED: EpochTaken,
    grpc.StatusCode.NOT_FOUND: UnknownVersion,
    grpc.StatusCode.FAILED_PRECONDITION: StateRefused,
}


def refusal(error: grpc.aio.AioRpcError) -> GovmeshError:
    """The typed refusal for a failed call; codes the authority does not use read as unavailable."""
    code = error.code()
    return _BY_CODE.get(code, AuthorityUnavailable)(f"{code.name}: {error.details()}")


class PolicyAdminClient(ChannelClient):
    """One channel to a policy authority, for its administration calls."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(channel)
        self._stub = policy_pb2_grpc.PolicyAuthorityStub(channel)
        self._timeout = timeout

    @classmethod
    async def connect(cls, target: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> Self:
        """Open a channel to the authority at `target` ("host:port"); `timeout` is per call."""
        return cls(grpc.aio.insecure_channel(target), timeout=timeout)

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            raise refusal(exc) from None

    async def state(self) -> policy_pb2.PolicyState:
        """The newest epoch in the store, and what the replica asked serves."""
        return await self._call(
            lambda: self._stub.GetState(policy_pb2.GetStateRequest(), timeout=self._timeout)
        )

    async def publish(
        self, bundle: policy_pb2.SignedBundle, *, activation: str = "", note: str = ""
    ) -> policy_pb2.PublishBundleResponse:
        """Publish a signed bundle; with a signed `activation` statement, activate it too."""
        request = policy_pb2.PublishBundleRequest(bundle=bundle, activation=activation, note=note)
        return await self._call(lambda: self._stub.PublishBundle(request, timeout=self._timeout))

    async def activate(self, activation: str, *, note: str = "") -> policy_pb2.ActivateResponse:
        """Make the state a signed activation statement names current."""
        request = policy_pb2.ActivateRequest(activation=activation, note=note)
        return await self._call(lambda: self._stub.Activate(request, timeout=self._timeout))

    async def list_bundles(self, *, limit: int = 0) -> policy_pb2.ListBundlesResponse:
        """The newest bundles and epochs (`limit` of each; 0 for the authority's default)."""
        request = policy_pb2.ListBundlesRequest(limit=limit)
        return await self._call(lambda: self._stub.ListBundles(request, timeout=self._timeout))

    async def bundle(self, version: str) -> policy_pb2.GetBundleResponse:
        """One bundle by version or unique prefix: its description, signed content and epochs."""
        request = policy_pb2.GetBundleRequest(version=version)
        return await self._call(lambda: self._stub.GetBundle(request, timeout=self._timeout))

    async def shadow_report(
        self, *, epoch: int = 0, limit: int = 0
    ) -> policy_pb2.ShadowReportResponse:
        """Where the shadow and active bundles disagreed (of `epoch`'s pair, else the newest)."""
        request = policy_pb2.ShadowReportRequest(epoch=epoch, limit=limit)
        return await self._call(lambda: self._stub.ShadowReport(request, timeout=self._timeout))
