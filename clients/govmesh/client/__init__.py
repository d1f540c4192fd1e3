"""The govmesh Python client: ask the engine before anything executes.

    action, resource, context = "payments.transfer", "account:acme/treasury", {"amount": 250}
    async with await EngineClient.connect("127.0.0.1:50051") as engine:
        result = await engine.authorize(
            action=action,
            resource=resource,
            context=context,
            mandate=mandate,
            proof=initiator.proof(mandate, action, resource, context),
        )
        if result.allowed:
            ...  # execute, presenting result.grant

Any failure to get an answer is a DENY: `result.allowed` is never true
unless the engine said ALLOW and sent a grant.
"""

from govmesh.artifacts.canonical import request_digest
from govmesh.artifacts.keys import jwk_thumbprint
from govmesh.client.artifacts import (
    Initiator,
    issue_attestation,
    issue_mandate,
    mandate_hash,
    thumbprint,
)
from govmesh.client.engine import AuthorizationResult, Decision, EngineClient, SyncEngineClient
from govmesh.client.grants import GrantError, load_engine_keys, verify_grant

__all__ = [
    "AuthorizationResult",
    "Decision",
    "EngineClient",
    "GrantError",
    "Initiator",
    "SyncEngineClient",
    "issue_attestation",
    "issue_mandate",
    "jwk_thumbprint",
    "load_engine_keys",
    "mandate_hash",
    "request_digest",
    "thumbprint",
    "verify_grant",
]
