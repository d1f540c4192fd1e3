"""The mesh of real processes, for integration tests."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from govmesh.cli.devsetup import DEV_ISSUER, DEV_SUBJECT, DevSetup
from govmesh.client import Initiator, issue_mandate
from govmesh.v1 import engine_pb2
from tests.support.processes import ServiceProcess

#: Generous deadlines: integration tests check behaviour, not speed, on a busy machine.
RELAXED_DEADLINES = {
    "GOVMESH_VERIFICATION_TIMEOUT_MS": "2000",
    "GOVMESH_POLICY_TIMEOUT_MS": "2000",
    "GOVMESH_LINEAGE_TIMEOUT_MS": "3000",
    "GOVMESH_DECISION_BUDGET_MS": "6000",
}


@dataclass
class Mesh:
    """Four service processes sharing one trust setup and one database."""

    setup: DevSetup
    database_url: str
    engine: ServiceProcess
    verification: ServiceProcess
    policy: ServiceProcess
    lineage: ServiceProcess
    agent: Initiator

    def mandate(self, **overrides: Any) -> str:
        """A valid mandate for the development agent."""
        arguments: dict[str, Any] = {
            "issuer": DEV_ISSUER,
            "subject": DEV_SUBJECT,
            "holder_thumbprint": self.agent.thumbprint,
            "scope": [{"action": "payments.transfer", "resource": "account:acme/*"}],
            **overrides,
        }
        return issue_mandate(self.setup.dev_key("issuer"), **arguments)

    def request(
        self,
        *,
        action: str = "payments.transfer",
        resource: str = "account:acme/treasury",
        context: dict[str, Any] | None = None,
        mandate: str | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments for EngineClient.authorize, with a fresh proof."""
        context = {"amount": 250} if context is None else context
        mandate = self.mandate() if mandate is None else mandate
        return {
            "action": action,
            "resource": resource,
            "context": context,
            "mandate": mandate,
            "proof": self.agent.proof(mandate, action, resource, context),
        }

    def authorize_request(self, **kwargs: Any) -> engine_pb2.AuthorizeRequest:
        """The same as a protobuf AuthorizeRequest."""
        from google.protobuf import json_format

        fields = self.request(**kwargs)
        request = engine_pb2.AuthorizeRequest(
            action=fields["action"],
            resource=fields["resource"],
            mandate=fields["mandate"],
            proof=fields["proof"],
        )
        json_format.ParseDict(fields["context"], request.context)
        return request


@pytest.fixture
def start_mesh(
    services: Callable[..., ServiceProcess],
    dev_setup: DevSetup,
    database_url: str,
    tmp_path: Path,
) -> Callable[..., Mesh]:
    """Start the four services; `engine_env` and `policy_env` override their settings."""

    def start(
        engine_env: dict[str, str] | None = None,
        policy_env: dict[str, str] | None = None,
        *,
        metrics: bool = False,
    ) -> Mesh:
        common = {
            "GOVMESH_DATABASE_URL": database_url,
            "GOVMESH_TRUST_FILE": str(dev_setup.trust_file),
            "GOVMESH_KEYS_DIR": str(dev_setup.keys_dir),
            "GOVMESH_POLICY_PATH": str(dev_setup.policies),
        }
        lineage = services("lineage", common, metrics=metrics)
        verification = services("verification", common, metrics=metrics)
        policy = services(
            "policy",
            {
                **common,
                "GOVMESH_POLICY_STATE_FILE": str(tmp_path / "policy-epoch.json"),
                **(policy_env or {}),
            },
            metrics=metrics,
        )
        engine = services(
            "engine",
            {
                **common,
                **RELAXED_DEADLINES,
                "GOVMESH_SPOOL_DIR": str(tmp_path / "spool"),
                "GOVMESH_VERIFICATION_TARGET": verification.address,
                "GOVMESH_POLICY_TARGET": policy.address,
                "GOVMESH_LINEAGE_TARGET": lineage.address,
                **(engine_env or {}),
            },
            metrics=metrics,
        )
        return Mesh(
            setup=dev_setup,
            database_url=database_url,
            engine=engine,
            verification=verification,
            policy=policy,
            lineage=lineage,
            agent=Initiator(dev_setup.dev_key("agent")),
        )

    return start


@pytest.fixture
def up_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a `govmesh up` run: no GOVMESH_* of the caller's, its own data."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOVMESH_")}
    env["GOVMESH_DATA_DIR"] = str(tmp_path / "data")
    return env
