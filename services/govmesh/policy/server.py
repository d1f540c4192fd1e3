"""The policy authority process: `govmesh serve policy`."""

from __future__ import annotations

import grpc

from govmesh.policy.config import PolicySettings
from govmesh.policy.core import load_bundle
from govmesh.policy.servicer import PolicyServicer
from govmesh.runtime.entry import run_service
from govmesh.runtime.server import Health, serve
from govmesh.v1 import policy_pb2, policy_pb2_grpc

SERVICE_NAME = policy_pb2.DESCRIPTOR.services_by_name["PolicyAuthority"].full_name


class PolicyService:
    """Lifecycle of the policy authority."""

    service_names = (SERVICE_NAME,)

    def __init__(self, settings: PolicySettings) -> None:
        self._settings = settings
        self._servicer: PolicyServicer | None = None

    async def start(self, health: Health) -> None:
        self._servicer = PolicyServicer(bundle=load_bundle(self._settings.policy_path))

    def register(self, server: grpc.aio.Server) -> None:
        assert self._servicer is not None
        policy_pb2_grpc.add_PolicyAuthorityServicer_to_server(self._servicer, server)

    def ready(self) -> bool:
        return self._servicer is not None

    async def close(self) -> None:
        return None


async def run(settings: PolicySettings) -> None:
    """Serve until stopped."""
    await serve(
        PolicyService(settings),
        listen=settings.listen,
        grace_period_s=settings.grace_period_s,
        port_file=settings.port_file,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m govmesh.policy`."""
    return run_service("policy", PolicySettings, run, argv)
