"""The verification service process: `govmesh serve verification`."""

from __future__ import annotations

import time

import grpc

from govmesh.artifacts.trust import load_trust
from govmesh.runtime.entry import run_service
from govmesh.runtime.server import Health, serve
from govmesh.v1 import verification_pb2, verification_pb2_grpc
from govmesh.verification.config import VerificationSettings
from govmesh.verification.core import Verifier
from govmesh.verification.servicer import VerificationServicer

SERVICE_NAME = verification_pb2.DESCRIPTOR.services_by_name["Verification"].full_name


class VerificationService:
    """Lifecycle of the verification service."""

    service_names = (SERVICE_NAME,)

    def __init__(self, settings: VerificationSettings) -> None:
        self._settings = settings
        self._servicer: VerificationServicer | None = None

    async def start(self, health: Health) -> None:
        trust = load_trust(self._settings.trust_file)
        verifier = Verifier(trust=trust, clock=time.time, clock_skew_s=self._settings.clock_skew_s)
        self._servicer = VerificationServicer(verifier=verifier)

    def register(self, server: grpc.aio.Server) -> None:
        assert self._servicer is not None
        verification_pb2_grpc.add_VerificationServicer_to_server(self._servicer, server)

    def ready(self) -> bool:
        return self._servicer is not None

    async def close(self) -> None:
        return None


async def run(settings: VerificationSettings) -> None:
    """Serve until stopped."""
    await serve(
        VerificationService(settings),
        listen=settings.listen,
        grace_period_s=settings.grace_period_s,
        port_file=settings.port_file,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m govmesh.verification`."""
    return run_service("verification", VerificationSettings, run, argv)
