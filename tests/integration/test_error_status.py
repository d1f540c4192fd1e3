"""Real calls that fail carry a google.rpc.Status whose ErrorInfo names the reason.

The code and message are what callers saw before the one status table; the
ErrorInfo (domain govmesh.dev, a stable reason) is what they can now match on.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from govmesh.cli.devsetup import DevSetup
from govmesh.client import AuthorizationResult, Decision
from govmesh.engine.admission import Admission
from govmesh.engine.servicer import EngineServicer, add_to_server
from govmesh.v1 import engine_pb2_grpc, lineage_pb2, lineage_pb2_grpc, policy_pb2, policy_pb2_grpc
from tests.support.processes import ServiceProcess
from tests.unit.engine_fakes import authorize_request, build_engine


def _refusal(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, str, list[Any]]:
    """The call's code and message, and the ErrorInfo reason and other details it carries."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no google.rpc.Status on {error.code()} {error.details()}"
    reasons, others = [], []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            assert info.domain == "govmesh.dev"
            reasons.append(info.reason)
        else:
            others.append(detail)
    [reason] = reasons
    return error.code(), error.details() or "", reason, others


async def _fails(call: Awaitable[object]) -> tuple[grpc.StatusCode, str, str, list[Any]]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return _refusal(raised.value)


# --- policy -----------------------------------------------------------------------


@pytest.fixture
def policy(
    services: Callable[..., ServiceProcess], dev_setup: DevSetup, database_url: str, tmp_path: Path
) -> ServiceProcess:
    # No GOVMESH_POLICY_PATH: the replica runs without a bundle, alive and not ready.
    env = {
        "GOVMESH_DATABASE_URL": database_url,
        "GOVMESH_TRUST_FILE": str(dev_setup.trust_file),
        "GOVMESH_KEYS_DIR": str(dev_setup.keys_dir),
        "GOVMESH_POLICY_STATE_FILE": str(tmp_path / "state" / "policy-epoch.json"),
    }
    return services("policy", env, wait_serving=False)


async def test_policy_refusals_name_their_reason(policy: ServiceProcess) -> None:
    async with grpc.aio.insecure_channel(policy.address) as channel:
        stub = policy_pb2_grpc.PolicyAuthorityStub(channel)
        await channel.channel_ready()

        empty = await _fails(stub.EvaluateBatch(policy_pb2.EvaluateBatchRequest(), timeout=10))
        assert empty[:3] == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "a batch holds 1..1024 requests",
            "BATCH_SIZE_ERROR",
        )

        code, message, reason, _ = await _fails(
            stub.Evaluate(policy_pb2.EvaluateRequest(request_digest="d"), timeout=10)
        )
        assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "NOT_READY")
        assert message.startswith("no valid policy bundle loaded: ")

        missing = await _fails(
            stub.GetBundle(policy_pb2.GetBundleRequest(version="f" * 64), timeout=10)
        )
        assert missing[:3] == (
            grpc.StatusCode.NOT_FOUND,
            f"no bundle has version {'f' * 64}",
            "UNKNOWN_BUNDLE",
        )

        garbage = await _fails(
            stub.PublishBundle(
                policy_pb2.PublishBundleRequest(
                    bundle=policy_pb2.SignedBundle(content=b"not a bundle", signature="x.y.z")
                ),
                timeout=10,
            )
        )
        assert garbage[0] == grpc.StatusCode.INVALID_ARGUMENT, garbage
        assert garbage[2] == "BUNDLE_REJECTED"


# --- lineage ----------------------------------------------------------------------


@pytest.fixture
def lineage(
    services: Callable[..., ServiceProcess], dev_setup: DevSetup, database_url: str
) -> ServiceProcess:
    env = {"GOVMESH_DATABASE_URL": database_url, "GOVMESH_KEYS_DIR": str(dev_setup.keys_dir)}
    return services("lineage", env)


async def test_lineage_refusals_name_their_reason(lineage: ServiceProcess) -> None:
    async with grpc.aio.insecure_channel(lineage.address) as channel:
        stub = lineage_pb2_grpc.LineageStub(channel)
        cases: list[tuple[Awaitable[object], grpc.StatusCode, str, str]] = [
            (
                stub.AppendBatch(lineage_pb2.AppendBatchRequest(), timeout=10),
                grpc.StatusCode.INVALID_ARGUMENT,
                "a batch holds 1..4096 entries",
                "BATCH_SIZE_ERROR",
            ),
            (
                stub.Append(
                    lineage_pb2.AppendRequest(entry=b"{}", decision_id=str(uuid.uuid4())),
                    timeout=10,
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "",
                "ENTRY_REJECTED",
            ),
            (
                stub.GetEntry(lineage_pb2.GetEntryRequest(decision_id="not-a-uuid"), timeout=10),
                grpc.StatusCode.INVALID_ARGUMENT,
                "decision_id is not a UUID",
                "BAD_REQUEST",
            ),
            (
                stub.GetEntry(
                    lineage_pb2.GetEntryRequest(decision_id=str(uuid.uuid4())), timeout=10
                ),
                grpc.StatusCode.NOT_FOUND,
                "no such entry",
                "UNKNOWN_ENTRY",
            ),
            (
                stub.GetCheckpoint(lineage_pb2.GetCheckpointRequest(tree_size=77), timeout=10),
                grpc.StatusCode.NOT_FOUND,
                "no such checkpoint",
                "UNKNOWN_CHECKPOINT",
            ),
            (
                stub.GetConsistencyProof(
                    lineage_pb2.GetConsistencyProofRequest(first=1, second=9), timeout=10
                ),
                grpc.StatusCode.OUT_OF_RANGE,
                "the log has only 0 entries",
                "BEYOND_THE_LOG",
            ),
            (
                stub.QueryEntries(lineage_pb2.QueryEntriesRequest(), timeout=10),
                grpc.StatusCode.INVALID_ARGUMENT,
                "name a decision id, trace id, subject or time range",
                "BAD_REQUEST",
            ),
            (
                stub.AddCosignature(
                    lineage_pb2.AddCosignatureRequest(checkpoint="garbage"), timeout=10
                ),
                grpc.StatusCode.FAILED_PRECONDITION,
                "this log accepts no cosignatures (GOVMESH_LINEAGE_WITNESSES is empty)",
                "NO_WITNESSES",
            ),
        ]
        for call, code, message, reason in cases:
            got = await _fails(call)
            assert got[0] == code and got[2] == reason, got
            if message:
                assert got[1] == message, got


# --- engine admission -------------------------------------------------------------


async def test_an_admission_refusal_names_its_reason_and_when_to_retry() -> None:
    # One slot and no queue: while the test holds the slot, every call is refused.
    admission = Admission(max_concurrent=1, max_queue=0, budget_s=2.0, monotonic=time.monotonic)
    server = grpc.aio.server()
    add_to_server(EngineServicer(engine=build_engine().engine, admission=admission), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    slot = await admission.admit(time_remaining=None)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = engine_pb2_grpc.AuthorizationEngineStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.Authorize(authorize_request(), timeout=10)
    finally:
        slot.release()
        await server.stop(None)

    code, message, reason, others = _refusal(raised.value)
    assert (code, message, reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "engine busy: queue full",
        "ADMISSION_QUEUE_FULL",
    )
    [retry_detail] = others
    assert retry_detail.Unpack(error_details_pb2.RetryInfo())
    # The client reads the same reason: a busy engine, ask again.
    result = AuthorizationResult.no_answer(raised.value)
    assert (result.decision, result.answered, result.retryable) == (Decision.DENY, False, True)
    assert result.error_reason == "ADMISSION_QUEUE_FULL"
    assert result.to_dict()["error_reason"] == "ADMISSION_QUEUE_FULL"
