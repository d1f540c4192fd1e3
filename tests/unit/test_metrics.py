"""Each service's metrics module: what it records, with the labels it promises.

Every test builds its own registry, so no count leaks from one test to another.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from govmesh.artifacts.checks import REQUIRED_CHECKS
from govmesh.engine.admission import Admission
from govmesh.engine.batching import Batcher
from govmesh.engine.lineage import FileSpool
from govmesh.engine.metrics import BREAKER_OPEN, EngineMetrics
from govmesh.engine.protocols import PeerTimeout, PeerUnavailable
from govmesh.engine.servicer import EngineServicer
from govmesh.lineage.metrics import LineageMetrics
from govmesh.policy.authority import Answer, Authority, Snapshot
from govmesh.policy.core import PolicyDecision
from govmesh.policy.metrics import PolicyMetrics
from govmesh.runtime.errors import ConfigurationError
from govmesh.runtime.metrics import new_registry, reason_label, start_metrics_server
from govmesh.runtime.settings import ServerSettings, SettingsError, load_settings
from govmesh.v1 import common_pb2
from govmesh.verification.core import CheckOutcome, VerificationResult
from govmesh.verification.metrics import VerificationMetrics
from tests.unit.engine_fakes import authorize_request, build_engine
from tests.unit.test_engine_lineage import entry


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# --- the runtime ---------------------------------------------------------------------------


def test_metrics_are_off_unless_a_listen_address_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOVMESH_METRICS_LISTEN", raising=False)
    assert load_settings(ServerSettings).metrics_endpoint() is None
    monkeypatch.setenv("GOVMESH_METRICS_LISTEN", "0.0.0.0:9464")
    endpoint = load_settings(ServerSettings).metrics_endpoint()
    assert endpoint is not None and endpoint.listen == "0.0.0.0:9464"
    monkeypatch.setenv("GOVMESH_METRICS_LISTEN", "9464")
    with pytest.raises(SettingsError, match="GOVMESH_METRICS_LISTEN"):
        load_settings(ServerSettings)


def test_the_exporter_serves_its_own_registry_and_refuses_a_taken_port() -> None:
    registry = new_registry()
    EngineMetrics(registry).decided(common_pb2.ALLOW, 0, 0.01)
    server = start_metrics_server("127.0.0.1:0", registry)
    try:
        with urllib.request.urlopen(server.url, timeout=5) as response:
            text = response.read().decode()
        assert 'govmesh_engine_decisions_total{decision="ALLOW",reason="none"} 1.0' in text
        assert "process_cpu_seconds_total" in text
        with pytest.raises(ConfigurationError, match=f"cannot serve metrics on {server.address}"):
            start_metrics_server(server.address, new_registry())
    finally:
        server.stop()
    again = start_metrics_server(server.address, registry)  # the port is released on stop
    again.stop()


def test_reason_labels_are_enum_names_and_nothing_else() -> None:
    assert reason_label(0) == "none"
    assert reason_label(common_pb2.PEER_TIMEOUT) == "PEER_TIMEOUT"
    assert reason_label(999) == "UNKNOWN"


# --- the engine ----------------------------------------------------------------------------


async def test_the_servicer_counts_each_decision_by_decision_and_reason() -> None:
    registry = CollectorRegistry()
    metrics = EngineMetrics(registry)
    servicer = EngineServicer(
        engine=build_engine().engine,
        admission=Admission(max_concurrent=4, max_queue=4, budget_s=2.0, monotonic=time.monotonic),
        metrics=metrics,
    )
    call = cast(Any, SimpleNamespace(time_remaining=lambda: None))
    allowed = await servicer.Authorize(authorize_request(), call)
    denied = await servicer.Authorize(authorize_request(action=""), call)
    await asyncio.sleep(0)  # done callbacks run on the next loop pass

    assert allowed.decision == common_pb2.ALLOW and denied.reason == common_pb2.MALFORMED_REQUEST
    name = "govmesh_engine_decisions_total"
    assert _value(registry, name, decision="ALLOW", reason="none") == 1
    assert _value(registry, name, decision="DENY", reason="MALFORMED_REQUEST") == 1
    assert _value(registry, name, decision="DENY", reason="POLICY_MISMATCH") == 0
    assert _value(registry, "govmesh_engine_decision_seconds_count", decision="DENY") == 1
    assert _value(registry, "govmesh_engine_decision_seconds_sum", decision="ALLOW") > 0


def test_a_decision_with_an_unknown_reason_is_counted_as_unknown() -> None:
    registry = CollectorRegistry()
    EngineMetrics(registry).decided(common_pb2.DENY, 999, 0.001)
    assert (
        _value(registry, "govmesh_engine_decisions_total", decision="DENY", reason="UNKNOWN") == 1
    )


@pytest.mark.parametrize(
    ("error", "outcome"),
    [(None, "ok"), (PeerTimeout("slow"), "timeout"), (PeerUnavailable("down"), "unavailable")],
)
async def test_every_batch_call_records_its_peer_size_latency_and_outcome(
    error: Exception | None, outcome: str
) -> None:
    registry = CollectorRegistry()
    metrics = EngineMetrics(registry)

    async def send(requests: list[int], timeout: float) -> list[int]:
        await asyncio.sleep(0.002)
        if error is not None:
            raise error
        return requests

    batcher: Batcher[int, int] = Batcher(
        name="policy", send=send, max_in_flight=1, metrics=metrics.peer("policy")
    )
    batcher.start()
    try:
        await asyncio.gather(
            *(batcher.submit(n, timeout=1.0) for n in range(3)), return_exceptions=True
        )
    finally:
        await batcher.close()
    calls = _value(registry, "govmesh_engine_peer_calls_total", peer="policy", outcome=outcome)
    assert calls >= 1
    assert _value(registry, "govmesh_engine_peer_batch_size_sum", peer="policy") == 3
    assert _value(registry, "govmesh_engine_peer_call_seconds_sum", peer="policy") >= 0.002
    assert (
        _value(registry, "govmesh_engine_peer_calls_total", peer="verification", outcome="ok") == 0
    )


async def test_spool_depth_and_oldest_age_follow_puts_and_drains(tmp_path: Path) -> None:
    from tests.unit.test_engine_lineage import MemoryTransport

    registry = CollectorRegistry()
    metrics = EngineMetrics(registry)
    spool = FileSpool(tmp_path)
    metrics.watch_spool(lambda: spool.depth, spool.oldest)
    assert _value(registry, "govmesh_engine_spool_entries") == 0
    assert _value(registry, "govmesh_engine_spool_oldest_age_seconds") == 0
    await asyncio.gather(*(spool.put(*entry(decision="DENY")) for _ in range(3)))
    assert _value(registry, "govmesh_engine_spool_entries") == 3
    await asyncio.sleep(0.02)
    assert _value(registry, "govmesh_engine_spool_oldest_age_seconds") >= 0.02
    assert FileSpool(tmp_path).depth == 3  # a restarted engine counts what is on disk

    await spool.drain(MemoryTransport())
    assert _value(registry, "govmesh_engine_spool_entries") == 0
    assert _value(registry, "govmesh_engine_spool_oldest_age_seconds") == 0


def test_breaker_and_admission_metrics_are_ready_to_be_reported_into() -> None:
    registry = CollectorRegistry()
    metrics = EngineMetrics(registry)
    assert _value(registry, "govmesh_engine_peer_breaker_state", peer="lineage") == 0
    metrics.breaker("lineage").set(BREAKER_OPEN)
    metrics.admission_queue_depth.set(7)
    metrics.refusal("queue_full").inc()
    assert _value(registry, "govmesh_engine_peer_breaker_state", peer="lineage") == 2
    assert _value(registry, "govmesh_engine_admission_queue_depth") == 7
    assert _value(registry, "govmesh_engine_admission_refusals_total", reason="queue_full") == 1


# --- verification --------------------------------------------------------------------------


def test_each_check_is_counted_with_its_outcome() -> None:
    registry = CollectorRegistry()
    metrics = VerificationMetrics(registry)
    failed = VerificationResult.internal_error("digest", "broken")
    passed = VerificationResult(
        request_digest="digest",
        outcomes=tuple(
            CheckOutcome(c, False, common_pb2.REPLAY_DETECTED, "again")
            if c.value == "replay"
            else CheckOutcome(c, True)
            for c in REQUIRED_CHECKS
        ),
    )
    metrics.verified(failed)
    metrics.verified(passed)
    name = "govmesh_verification_checks_total"
    for check in REQUIRED_CHECKS:
        assert _value(registry, name, check=check.value, outcome="INTERNAL_ERROR") == 1
        if check.value != "replay":
            assert _value(registry, name, check=check.value, outcome="passed") == 1
    assert _value(registry, name, check="replay", outcome="REPLAY_DETECTED") == 1
    assert _value(registry, name, check="replay", outcome="passed") == 0


def test_cache_counts_are_read_at_scrape_time() -> None:
    registry = CollectorRegistry()
    counts = [5, 2, 3]
    VerificationMetrics(registry).watch_cache(lambda: (counts[0], counts[1], counts[2]))
    assert _value(registry, "govmesh_verification_token_cache_hits_total") == 5
    counts[0] = 9
    assert _value(registry, "govmesh_verification_token_cache_hits_total") == 9
    assert _value(registry, "govmesh_verification_token_cache_misses_total") == 2
    assert _value(registry, "govmesh_verification_token_cache_entries") == 3


# --- policy --------------------------------------------------------------------------------


def _bundle(version: str) -> Any:
    return SimpleNamespace(version=version)


def test_the_epoch_and_only_the_bundles_in_force_are_exported() -> None:
    registry = CollectorRegistry()
    metrics = PolicyMetrics(registry)
    authority = SimpleNamespace(snapshot=None)
    metrics.watch(cast(Authority, authority))
    assert _value(registry, "govmesh_policy_ready") == 0
    assert _value(registry, "govmesh_policy_epoch") == 0
    assert (
        registry.get_sample_value("govmesh_policy_bundle_info", {"active": "a", "shadow": ""})
        is None
    )

    authority.snapshot = Snapshot(3, _bundle("a" * 64), None)
    assert _value(registry, "govmesh_policy_epoch") == 3
    assert _value(registry, "govmesh_policy_bundle_info", active="a" * 64, shadow="") == 1
    authority.snapshot = Snapshot(4, _bundle("b" * 64), _bundle("c" * 64))
    assert _value(registry, "govmesh_policy_bundle_info", active="b" * 64, shadow="c" * 64) == 1
    assert _value(registry, "govmesh_policy_bundle_info", active="a" * 64, shadow="") == 0


def test_shadow_disagreements_are_counted() -> None:
    registry = CollectorRegistry()
    metrics = PolicyMetrics(registry)
    snapshot = cast(Snapshot, None)
    allow, deny = PolicyDecision(True), PolicyDecision(False)
    metrics.evaluated(Answer(snapshot, allow, None), 0.001)
    metrics.evaluated(Answer(snapshot, allow, allow), 0.001)
    metrics.evaluated(Answer(snapshot, allow, deny), 0.001)
    assert _value(registry, "govmesh_policy_evaluation_seconds_count") == 3
    assert _value(registry, "govmesh_policy_shadow_evaluations_total") == 2
    assert _value(registry, "govmesh_policy_shadow_disagreements_total") == 1


# --- lineage -------------------------------------------------------------------------------


def test_tree_size_and_checkpoint_age_are_read_at_scrape_time() -> None:
    registry = CollectorRegistry()
    metrics = LineageMetrics(registry)
    state = {"size": 10, "at": 1000.0, "now": 1030.0}
    metrics.watch(lambda: int(state["size"]), lambda: state["at"], clock=lambda: state["now"])
    assert _value(registry, "govmesh_lineage_tree_size") == 10
    assert _value(registry, "govmesh_lineage_checkpoint_age_seconds") == 30
    state.update(size=12, at=1030.0)
    assert _value(registry, "govmesh_lineage_tree_size") == 12
    assert _value(registry, "govmesh_lineage_checkpoint_age_seconds") == 0


# --- the lock-free families ----------------------------------------------------------------


def test_loop_histograms_export_cumulative_buckets_as_prometheus_defines_them() -> None:
    from govmesh.runtime.metrics import LoopHistogramFamily

    registry = CollectorRegistry()
    family = LoopHistogramFamily("h_seconds", "h", ["peer"], registry, buckets=(0.1, 1.0))
    child = family.labels("policy")
    for amount in (0.05, 0.1, 0.5, 1.0, 7.0):  # a value equal to a bound counts in that bucket
        child.observe(amount)
    bucket = "h_seconds_bucket"
    assert _value(registry, bucket, peer="policy", le="0.1") == 2
    assert _value(registry, bucket, peer="policy", le="1.0") == 4
    assert _value(registry, bucket, peer="policy", le="+Inf") == 5
    assert _value(registry, "h_seconds_count", peer="policy") == 5
    assert _value(registry, "h_seconds_sum", peer="policy") == pytest.approx(8.65)
    with pytest.raises(ValueError, match="takes labels"):
        family.labels("policy", "extra")


class _Refused(Exception):
    """What a real call's abort_with_status raises: the handler ends there."""


async def test_the_servicer_counts_admission_refusals_and_exports_the_queue() -> None:
    registry = CollectorRegistry()
    metrics = EngineMetrics(registry)
    admission = Admission(max_concurrent=1, max_queue=1, budget_s=2.0, monotonic=time.monotonic)
    servicer = EngineServicer(engine=build_engine().engine, admission=admission, metrics=metrics)
    busy = await admission.admit(time_remaining=None)  # the one slot, taken
    waiting = asyncio.ensure_future(admission.admit(time_remaining=None))  # the queue, full
    await asyncio.sleep(0)

    async def abort(status: Any) -> None:
        raise _Refused(status.details)

    call = cast(Any, SimpleNamespace(time_remaining=lambda: None, abort_with_status=abort))
    with pytest.raises(_Refused):
        await servicer.Authorize(authorize_request(), call)

    refusals = "govmesh_engine_admission_refusals_total"
    assert _value(registry, refusals, reason="queue_full") == 1
    assert _value(registry, refusals, reason="deadline_too_short") == 0
    assert _value(registry, "govmesh_engine_admission_queue_depth") == 1
    busy.release()
    (await waiting).release()
    assert _value(registry, "govmesh_engine_admission_queue_depth") == 0
    assert _value(registry, "govmesh_engine_decisions_total", decision="ALLOW", reason="none") == 0
