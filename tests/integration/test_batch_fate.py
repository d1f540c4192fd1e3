"""Batches share transport, not fate: hostile requests never fail the valid ones beside them.

Over the real mesh: engine, verification, policy and lineage processes on a
real Postgres.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from typing import Any

from govmesh.cli.devsetup import DEV_ISSUER, DEV_SUBJECT
from govmesh.client import EngineClient
from govmesh.engine.core import MAX_ARTIFACT_CHARS, MAX_CONTEXT_BYTES
from tests.integration.conftest import Mesh

#: JSON carries it as one byte, repr quotes it as four ('\x7f').
WIDE = "\x7f"

#: Batches as large as the engine makes them: one call in flight, and time for
#: many decisions to queue behind it. Deadlines for a busy machine.
BATCHING = {
    "GOVMESH_PEER_MAX_IN_FLIGHT": "1",
    "GOVMESH_PEER_LINGER_MS": "20",
    "GOVMESH_VERIFICATION_TIMEOUT_MS": "20000",
    "GOVMESH_POLICY_TIMEOUT_MS": "20000",
    "GOVMESH_LINEAGE_TIMEOUT_MS": "20000",
    "GOVMESH_DECISION_BUDGET_MS": "40000",
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unsigned_mandate(**claims: Any) -> str:
    """A mandate nobody signed, with JSON written raw (WIDE stays one byte)."""
    header = {"alg": "EdDSA", "typ": "govmesh-mandate+jwt", "kid": "issuer"}
    payload = {
        "iss": DEV_ISSUER,
        "sub": DEV_SUBJECT,
        "aud": "govmesh",
        "iat": int(time.time()),
        "nbf": int(time.time()),
        "exp": int(time.time()) + 600,
        "jti": "junk",
        "scope": [{"action": "payments.transfer", "resource": "account:acme/*"}],
        "env": {},
        "cnf": {"jkt": "junk"},
        **claims,
    }
    parts = [_b64(json.dumps(part, ensure_ascii=False).encode()) for part in (header, payload)]
    return ".".join([*parts, _b64(bytes(64))])


def hostile_request(mesh: Mesh) -> dict[str, Any]:
    """An unsigned mandate and a context at the engine's limits, built to maximize answers.

    Its issuer and audience are quoted by verification, its one context key
    (reserved, so refused) by policy's evaluation error: each four bytes for one.
    """
    pad = (MAX_ARTIFACT_CHARS - 1200) * 3 // 8
    mandate = unsigned_mandate(iss=WIDE * pad, aud=WIDE * pad)
    assert len(mandate) <= MAX_ARTIFACT_CHARS
    context = {"__" + WIDE * (MAX_CONTEXT_BYTES - 64): 1}
    return mesh.request(context=context, mandate=mandate)


async def test_hostile_requests_sharing_batches_never_fail_a_valid_one(
    start_mesh: Callable[..., Mesh],
) -> None:
    mesh = start_mesh(engine_env=BATCHING)
    hostile = [hostile_request(mesh) for _ in range(120)]
    valid = [mesh.request(context={"amount": n}) for n in range(1, 31)]
    # Interleaved, so that every batch mixes them.
    requests = [(False, h) for h in hostile]
    for n, request in enumerate(valid):
        requests.insert(n * 5, (True, request))

    async with await EngineClient.connect(mesh.engine.address, timeout=60) as engine:
        results = await asyncio.gather(*(engine.authorize(**r) for _, r in requests))

    answered = list(zip((v for v, _ in requests), results, strict=True))
    denied_valid = [(r.reason, r.message) for v, r in answered if v and not r.allowed]
    assert denied_valid == []
    assert all(r.decision == "DENY" for v, r in answered if not v)
    assert {r.reason for v, r in answered if not v} == {"INVALID_VERIFICATION"}
