"""Past capacity the engine makes valid requests wait, or refuses them early, never denies them.

Real processes and Postgres; a small admission limit and queue (engine
settings) make the mesh overloaded quickly and deterministically.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from govmesh.client import AuthorizationResult, EngineClient
from govmesh.v1 import engine_pb2_grpc
from tests.integration.conftest import Mesh
from tests.support.database import fetch

#: Peer deadlines that a decision admitted with a few others meets easily, but
#: that hundreds of decisions started at once on a 2-core machine miss.
FLOOD_DEADLINES = {
    "GOVMESH_VERIFICATION_TIMEOUT_MS": "200",
    "GOVMESH_POLICY_TIMEOUT_MS": "200",
    "GOVMESH_LINEAGE_TIMEOUT_MS": "400",
    "GOVMESH_DECISION_BUDGET_MS": "1000",
    # Callers that can wait get up to eight times these through a stall.
    "GOVMESH_DECISION_BUDGET_MAX_MS": "8000",
}


async def _entries(mesh: Mesh) -> list[dict[str, Any]]:
    rows = await fetch(mesh.database_url, "SELECT entry FROM lineage_entries ORDER BY idx")
    return [json.loads(row["entry"]) for row in rows]


async def test_past_capacity_every_valid_request_that_can_wait_is_allowed(
    start_mesh: Callable[..., Mesh],
) -> None:
    mesh = start_mesh(
        engine_env={
            **FLOOD_DEADLINES,
            "GOVMESH_ADMISSION_MAX_CONCURRENT": "4",
            "GOVMESH_ADMISSION_QUEUE_MAX": "1024",
        }
    )
    mandate = mesh.mandate()
    # Distinct amounts, so that every request has its own digest in the log.
    requests = [mesh.request(mandate=mandate, context={"amount": 250, "n": n}) for n in range(1024)]
    async with await EngineClient.connect(mesh.engine.address, timeout=60) as engine:
        # All at once: far more than the mesh decides at a time.
        results = await asyncio.gather(*(engine.authorize(**r) for r in requests))

    outcomes = Counter(r.decision if r.allowed else f"{r.reason} {r.error_code}" for r in results)
    # None was denied PEER_TIMEOUT or LINEAGE_UNAVAILABLE for the mesh's own slowness.
    refusals = [line for line in mesh.engine.log().splitlines() if "refused" in line]
    assert outcomes == {"ALLOW": len(requests)}, (outcomes, refusals)
    entries = await _entries(mesh)
    assert len(entries) == len(requests)
    assert {e["decision"] for e in entries} == {"ALLOW"}
    assert sorted(e["engine"]["seq"] for e in entries) == list(range(len(requests)))


async def test_a_request_that_cannot_be_served_in_time_is_refused_early_and_never_decided(
    start_mesh: Callable[..., Mesh],
) -> None:
    # One decision at a time, three waiting; slow decisions while verification is paused.
    mesh = start_mesh(
        engine_env={
            "GOVMESH_VERIFICATION_TIMEOUT_MS": "8000",
            "GOVMESH_POLICY_TIMEOUT_MS": "8000",
            "GOVMESH_LINEAGE_TIMEOUT_MS": "3000",
            "GOVMESH_DECISION_BUDGET_MS": "10000",
            "GOVMESH_ADMISSION_MAX_CONCURRENT": "1",
            "GOVMESH_ADMISSION_QUEUE_MAX": "3",
        }
    )
    mandate = mesh.mandate()
    request = {n: mesh.request(mandate=mandate, context={"amount": n}) for n in range(1, 8)}
    async with await EngineClient.connect(mesh.engine.address, timeout=120) as engine:

        async def ask(n: int, deadline: float) -> tuple[AuthorizationResult, float]:
            started = time.monotonic()
            result = await engine.authorize(**request[n], timeout=deadline)
            return result, time.monotonic() - started

        async def queue(n: int) -> asyncio.Task[tuple[AuthorizationResult, float]]:
            task = asyncio.create_task(ask(n, 120.0))
            await asyncio.sleep(0.5)  # in line (or deciding) before the next one arrives
            return task

        mesh.verification.pause()
        try:
            deciding = await queue(1)  # admitted; waits for verification
            waiting = [await queue(2), await queue(3)]
            # (b) Third in line, with a deadline (5 s) far below what the line
            # ahead of it needs (each decision may take its 10 s budget).
            short, short_elapsed = await ask(4, 5.0)
            waiting.append(await queue(5))  # a caller that can wait: the line is now full
            # (c) A full line refuses at once, however long the caller could wait.
            full, full_elapsed = await ask(6, 120.0)
            # The same refusal as it travels: RESOURCE_EXHAUSTED with a google.rpc.Status.
            stub = engine_pb2_grpc.AuthorizationEngineStub(engine._channel)
            raw_error: grpc.aio.AioRpcError | None = None
            try:
                await stub.Authorize(mesh.authorize_request(context={"amount": 7}), timeout=120)
            except grpc.aio.AioRpcError as exc:
                raw_error = exc
        finally:
            mesh.verification.resume()
        served = [await task for task in [deciding, *waiting]]

        # (d) A refused request was never decided: its proof was not spent, so
        # the very same request is decided (and allowed) when sent again.
        again = await engine.authorize(**request[4], timeout=60)

    # Callers that could wait were all decided, and allowed.
    assert [r.decision for r, _ in served] == ["ALLOW"] * 4, [r.message for r, _ in served]
    assert all(r.allowed for r, _ in served)

    # (b) and (c): refused early, not timed out, and read by the client as a retryable DENY.
    for refused, elapsed, deadline, why in (
        (short, short_elapsed, 5.0, "deadline cannot cover the wait"),
        (full, full_elapsed, 120.0, "queue full"),
    ):
        assert refused.decision == "DENY"
        assert not refused.allowed
        assert refused.answered is False
        assert refused.retryable is True
        assert refused.error_code == "RESOURCE_EXHAUSTED"
        assert refused.reason == "PEER_UNAVAILABLE"
        assert refused.grant == ""
        assert refused.decision_id == ""
        assert refused.lineage is None
        assert why in refused.message
        # Answered at once, not when the deadline ran out (the margin is for a busy machine).
        assert elapsed < min(deadline / 2, 2.0), elapsed
    assert raw_error is not None
    assert raw_error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(raw_error)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.domain, info.reason) == ("govmesh.dev", "ADMISSION_QUEUE_FULL")

    # (d) No partial decision: the log holds the served requests and the one
    # sent again, and nothing of the refused calls.
    assert again.allowed, again.message
    entries = await _entries(mesh)
    served_digests = {r.request_digest for r, _ in served} | {again.request_digest}
    assert {e["request_digest"] for e in entries} == served_digests
    assert len(entries) == 5
    assert {e["decision"] for e in entries} == {"ALLOW"}
    # Refusals took no sequence number: the engine's decisions are numbered without a gap.
    assert sorted(e["engine"]["seq"] for e in entries) == list(range(5))
    assert "refused 1 requests before deciding them" in mesh.engine.log()
