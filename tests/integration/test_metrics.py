"""Prometheus metrics of the real services: counters that move, labels that stay bounded."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from typing import Any

import psutil
from prometheus_client.parser import text_string_to_metric_families

from govmesh.cli.devsetup import DEV_SUBJECT, DevSetup
from govmesh.client import EngineClient
from tests.integration.conftest import Mesh
from tests.support.processes import ServiceProcess

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

#: Label values that are bounded by construction: hex bundle versions appear
#: only in govmesh_policy_bundle_info, which holds the versions in force.
_BUNDLE_VERSION = re.compile(r"^[0-9a-f]{64}$")


def _scrape(service: ServiceProcess) -> tuple[str, Samples]:
    assert service.metrics_address is not None
    url = f"http://{service.metrics_address}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text: str = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return text, samples


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def _decide(mesh: Mesh) -> list[Any]:
    async with await EngineClient.connect(mesh.engine.address, timeout=10) as engine:
        allowed = await engine.authorize(**mesh.request())
        denied = await engine.authorize(**mesh.request(context={"amount": 5000}))
        request = mesh.request()
        first = await engine.authorize(**request)
        replayed = await engine.authorize(**request)
    return [allowed, denied, first, replayed]


async def test_counters_move_with_bounded_labels_on_every_service(
    start_mesh: Callable[..., Mesh],
) -> None:
    mesh = start_mesh(metrics=True)
    results = await _decide(mesh)
    assert [r.decision for r in results] == ["ALLOW", "DENY", "ALLOW", "DENY"], results
    assert results[1].reason == "POLICY_MISMATCH" and results[3].reason == "REPLAY_DETECTED"

    scraped = {
        s.name: _scrape(s) for s in (mesh.engine, mesh.verification, mesh.policy, mesh.lineage)
    }
    engine = scraped["engine"][1]
    assert _value(engine, "govmesh_engine_decisions_total", decision="ALLOW", reason="none") == 2
    for reason in ("POLICY_MISMATCH", "REPLAY_DETECTED"):
        assert _value(engine, "govmesh_engine_decisions_total", decision="DENY", reason=reason) == 1
    assert _value(engine, "govmesh_engine_decision_seconds_count", decision="ALLOW") == 2
    assert _value(engine, "govmesh_engine_decision_seconds_count", decision="DENY") == 2
    for peer in ("verification", "policy", "lineage"):
        assert _value(engine, "govmesh_engine_peer_calls_total", peer=peer, outcome="ok") >= 1
        assert _value(engine, "govmesh_engine_peer_calls_total", peer=peer, outcome="timeout") == 0
        assert _value(engine, "govmesh_engine_peer_batch_size_count", peer=peer) >= 1
        assert _value(engine, "govmesh_engine_peer_breaker_state", peer=peer) == 0
    assert _value(engine, "govmesh_engine_spool_entries") == 0

    verification = scraped["verification"][1]
    # Four requests, each with a valid mandate and proof; the last proof was a replay.
    assert (
        _value(
            verification, "govmesh_verification_checks_total", check="signature", outcome="passed"
        )
        == 4
    )
    assert (
        _value(verification, "govmesh_verification_checks_total", check="replay", outcome="passed")
        == 3
    )
    assert (
        _value(
            verification,
            "govmesh_verification_checks_total",
            check="replay",
            outcome="REPLAY_DETECTED",
        )
        == 1
    )
    # Three mandates, the third presented twice: its second check is answered by the cache.
    assert _value(verification, "govmesh_verification_token_cache_hits_total") == 1
    assert _value(verification, "govmesh_verification_token_cache_misses_total") == 3
    assert _value(verification, "govmesh_verification_replay_commit_seconds_count") >= 3

    policy = scraped["policy"][1]
    assert _value(policy, "govmesh_policy_epoch") == 1
    assert _value(policy, "govmesh_policy_ready") == 1
    assert _value(policy, "govmesh_policy_evaluation_seconds_count") == 4

    lineage = scraped["lineage"][1]
    assert _value(lineage, "govmesh_lineage_tree_size") == 4
    assert _value(lineage, "govmesh_lineage_commit_entries_sum") == 4
    assert _value(lineage, "govmesh_lineage_append_seconds_count") >= 1
    assert 0 <= _value(lineage, "govmesh_lineage_checkpoint_age_seconds") < 120

    # Bounded cardinality: no decision id, subject, digest or proof ever labels a sample.
    secrets = {DEV_SUBJECT} | {r.decision_id for r in results} | {r.request_digest for r in results}
    for name, (text, samples) in scraped.items():
        for secret in secrets:
            assert secret not in text, f"{name} exports {secret!r}"
        for (metric, labels), _ in samples.items():
            for label, value in labels:
                if _BUNDLE_VERSION.match(value):
                    assert metric == "govmesh_policy_bundle_info", (metric, label)
                assert len(value) <= 64, (metric, label, value)


def _lineage_env(dev_setup: DevSetup, database_url: str) -> dict[str, str]:
    return {"GOVMESH_DATABASE_URL": database_url, "GOVMESH_KEYS_DIR": str(dev_setup.keys_dir)}


def test_metrics_are_off_unless_set(
    services: Callable[..., ServiceProcess], dev_setup: DevSetup, database_url: str
) -> None:
    lineage = services("lineage", _lineage_env(dev_setup, database_url))
    assert lineage.metrics_address is None
    grpc_port = int(lineage.address.rpartition(":")[2])
    listening = {
        c.laddr.port
        for c in psutil.Process(lineage.process.pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }
    assert listening == {grpc_port}
    assert "serving metrics" not in lineage.log()


def test_a_taken_metrics_port_stops_the_service_with_a_message(
    dev_setup: DevSetup, database_url: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        env = {
            **os.environ,
            **_lineage_env(dev_setup, database_url),
            "GOVMESH_LISTEN": "127.0.0.1:0",
            "GOVMESH_METRICS_LISTEN": address,
        }
        result = subprocess.run(
            [sys.executable, "-m", "govmesh.lineage"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2, result.stderr
    assert f"cannot serve metrics on {address} (GOVMESH_METRICS_LISTEN)" in result.stderr
    assert "Traceback" not in result.stderr
