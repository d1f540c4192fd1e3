"""`govmesh bench` measures every phase in one run, and each deny it sends gets its own reason."""

from __future__ import annotations

import json
from pathlib import Path

from govmesh.bench.workload import DENIES
from govmesh.cli.main import main as govmesh
from govmesh.engine.config import DECISION_BUDGET_MAX_MS

SERVICES = {"engine", "verification", "policy", "lineage"}


def test_bench_reports_each_phase_and_every_deny_reason(pg_server_url: str, tmp_path: Path) -> None:
    figures_file = tmp_path / "figures.json"
    code = govmesh(
        [
            "bench",
            *("--callers", "1", "--requests", "40", "--deny-every", "2"),
            *("--rate", "20", "--seconds", "1", "--capacity-share", "0"),
            *("--stop", "verification", "--stop-seconds", "0.5", "--stop-rate", "40"),
            *("--database-url", pg_server_url, "--json", str(figures_file)),
            "--floor",
        ]
    )
    phases = {phase["mode"]: phase for phase in json.loads(figures_file.read_text())}

    assert code == 0
    assert set(phases) == {"closed", "open", "stopped verification"}
    closed = phases["closed"]
    # 20 valid requests, all ALLOWed; 20 denies, each of the eight reasons in turn.
    assert closed["valid_not_allowed"] == {}
    assert closed["wrong_denies"] == {}
    assert set(closed["denies_by_reason"]) == set(DENIES.values())
    assert sum(closed["denies_by_reason"].values()) == 20
    assert closed["allows_per_s"] > 0
    assert set(closed["latency_ms"]) == {"p50", "p90", "p99", "p99.9", "max"}
    assert SERVICES | {"postgres"} <= set(closed["cpu_us_per_decision"])
    assert set(closed["peak_rss_mib"]) == SERVICES
    assert closed["echo_calls_per_s"] > 0 and closed["ratio_to_echo"] > 0
    # The same calls through the transport floor, in both of its shapes.
    assert set(closed["floor"]) == {"3 peers", "lineage only"}
    for floor in closed["floor"].values():
        assert floor["calls_per_s"] > 0 and floor["ratio_to_echo"] > 0
        assert floor["cpu_us_per_call"] > 0
        assert set(floor["latency_ms"]) == {"p50", "p90", "p99", "p99.9", "max"}
    stopped = phases["stopped verification"]["stopped"]
    # Every call sent while verification was stopped got an answer, and no deny an ALLOW.
    assert stopped["sent"] == 20 and stopped["unanswered"] == 0
    # Its callers can wait (10 s): the bound is the stretched budget's ceiling.
    assert stopped["bound_ms"] == DECISION_BUDGET_MAX_MS
    assert not any(k.endswith("ALLOWED") for k in phases["stopped verification"]["wrong_denies"])
