"""Two issuers and two attestors in one mesh: neither can speak for the other's parties.

The real verification, policy, lineage and engine processes, one trust file
trusting two issuers (each with its own subject namespace) and two attestors
(one for development machines, one for production).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import OKPKey

from govmesh.artifacts.keys import generate_ed25519, public_jwks
from govmesh.cli.devsetup import DEV_MEASUREMENT, DevSetup
from govmesh.client import AuthorizationResult, EngineClient, issue_attestation, issue_mandate
from tests.integration.conftest import Mesh
from tests.support.verification import write_json

ISSUER_A = "https://idp-a.example"
ISSUER_B = "https://idp-b.example"
PROD_ATTESTOR = "https://attestor-prod.example"
DEV_ATTESTOR = "https://attestor-dev.example"
#: Issuer A's agent, the one the policies grant payments to.
A_BOT = "spiffe://acme.example/agent/payments-bot"
A_READER = "spiffe://acme.example/agent/reader"
B_READER = "spiffe://partner.example/agent/reader"
PROD = {"cluster": "prod-eu-1"}

POLICIES = f"""
// Payments for issuer A's payment agent, named by its subject.
@id("acme-payments-bot")
permit (principal == Agent::"{A_BOT}", action == Action::"payments.transfer", resource);

// Reads for every agent of issuer A, and for nobody else's.
@id("acme-agents-read")
permit (principal in Issuer::"{ISSUER_A}", action == Action::"payments.read", resource);
"""


class Parties:
    """The private keys of both issuers and both attestors."""

    def __init__(self) -> None:
        self.keys: dict[str, OKPKey] = {
            name: generate_ed25519(name)
            for name in (ISSUER_A, ISSUER_B, PROD_ATTESTOR, DEV_ATTESTOR)
        }

    def mandate(self, mesh: Mesh, *, signer: str, iss: str, sub: str, **claims: Any) -> str:
        return issue_mandate(
            self.keys[signer],
            issuer=iss,
            subject=sub,
            holder_thumbprint=mesh.agent.thumbprint,
            scope=[{"action": "*", "resource": "*"}],  # the signer scopes it as it likes
            **claims,
        )

    def attestation(self, mesh: Mesh, *, attestor: str, sub: str, env: dict[str, str]) -> str:
        return issue_attestation(
            self.keys[attestor],
            issuer=attestor,
            subject=sub,
            holder_thumbprint=mesh.agent.thumbprint,
            env=env,
            measurements=[DEV_MEASUREMENT],
        )


@pytest.fixture
def parties(dev_setup: DevSetup) -> Parties:
    """Rewrite the development trust file for two issuers and two attestors."""
    parties = Parties()
    for n, key in enumerate(parties.keys.values()):
        write_json(dev_setup.root / f"party-{n}.jwks.json", public_jwks([key]))
    text = dev_setup.trust_file.read_text()
    runtime = text[text.index("[runtime]") :]
    dev_setup.trust_file.write_text(
        f"""
[[issuers]]
iss = "{ISSUER_A}"
jwks = "party-0.jwks.json"
subjects = ["spiffe://acme.example/agent/"]

[[issuers]]
iss = "{ISSUER_B}"
jwks = "party-1.jwks.json"
subjects = ["spiffe://partner.example/agent/"]

[[attestors]]
iss = "{PROD_ATTESTOR}"
jwks = "party-2.jwks.json"
env = {{ cluster = ["prod-eu-1", "prod-us-1"] }}

[[attestors]]
iss = "{DEV_ATTESTOR}"
jwks = "party-3.jwks.json"
env = {{ cluster = ["dev"] }}

{runtime}"""
    )
    (dev_setup.policies / "sample.cedar").write_text(POLICIES)
    return parties


async def authorize(
    mesh: Mesh, mandate: str, *, action: str = "payments.transfer", attestation: str = ""
) -> AuthorizationResult:
    async with await EngineClient.connect(mesh.engine.address, timeout=10) as engine:
        return await engine.authorize(
            **mesh.request(mandate=mandate, action=action), attestation=attestation
        )


async def test_issuer_b_cannot_sign_for_issuer_a_agent(
    start_mesh: Callable[..., Mesh], parties: Parties
) -> None:
    mesh = start_mesh()

    # B's own key and iss, a scope of its choosing, A's agent as sub.
    forged = await authorize(mesh, parties.mandate(mesh, signer=ISSUER_B, iss=ISSUER_B, sub=A_BOT))
    genuine = await authorize(mesh, parties.mandate(mesh, signer=ISSUER_A, iss=ISSUER_A, sub=A_BOT))

    assert not forged.allowed
    assert (forged.reason, forged.failed_checks) == ("INVALID_VERIFICATION", ("issuer",))
    assert genuine.allowed, genuine


async def test_a_policy_on_issuer_a_reaches_its_agents_and_not_issuer_bs(
    start_mesh: Callable[..., Mesh], parties: Parties
) -> None:
    mesh = start_mesh()

    def read(signer: str, sub: str) -> str:
        return parties.mandate(mesh, signer=signer, iss=signer, sub=sub)

    mine = await authorize(mesh, read(ISSUER_A, A_READER), action="payments.read")
    theirs = await authorize(mesh, read(ISSUER_B, B_READER), action="payments.read")

    assert mine.allowed, mine
    assert not theirs.allowed
    assert theirs.reason == "POLICY_MISMATCH"
    assert theirs.failed_checks == ("policy",)


async def test_the_development_attestor_cannot_attest_production(
    start_mesh: Callable[..., Mesh], parties: Parties
) -> None:
    mesh = start_mesh()

    def bound() -> str:
        return parties.mandate(mesh, signer=ISSUER_A, iss=ISSUER_A, sub=A_BOT, env=PROD)

    forged = await authorize(
        mesh,
        bound(),
        attestation=parties.attestation(mesh, attestor=DEV_ATTESTOR, sub=A_BOT, env=PROD),
    )
    genuine = await authorize(
        mesh,
        bound(),
        attestation=parties.attestation(mesh, attestor=PROD_ATTESTOR, sub=A_BOT, env=PROD),
    )

    assert not forged.allowed
    assert (forged.reason, forged.failed_checks) == ("ENVIRONMENT_MISMATCH", ("environment",))
    assert genuine.allowed, genuine


def test_the_trust_file_written_here_is_the_one_the_mesh_reads(
    dev_setup: DevSetup, parties: Parties
) -> None:
    # Guards the fixture: both issuers and both attestors, with their bounds.
    from govmesh.artifacts.trust import load_trust

    trust = load_trust(Path(dev_setup.trust_file))

    assert set(trust.issuers) == {ISSUER_A, ISSUER_B}
    assert set(trust.attestors) == {PROD_ATTESTOR, DEV_ATTESTOR}
    assert trust.attestors[DEV_ATTESTOR].env == {"cluster": frozenset({"dev"})}
