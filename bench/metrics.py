"""The CPU cost of recording one decision's metrics, summed over the four services.

    python bench/metrics.py [--decisions 200000]

Records what one ALLOW records everywhere (the engine's decision and its three
batch calls of one request each, verification's seven check verdicts and one
replay commit, policy's evaluation, lineage's append and group commit) into
fresh registries, and prints the time per decision. On a busy machine the
whole mesh's throughput varies by more than this cost; set it beside the CPU
time of one decision (cores / decisions per second from bench/engine.py).
"""

from __future__ import annotations

import argparse
import time

from prometheus_client import CollectorRegistry

from govmesh.artifacts.checks import REQUIRED_CHECKS
from govmesh.engine.metrics import EngineMetrics
from govmesh.lineage.metrics import LineageMetrics
from govmesh.policy.authority import Answer, Snapshot
from govmesh.policy.core import PolicyDecision
from govmesh.policy.metrics import PolicyMetrics
from govmesh.v1 import common_pb2
from govmesh.verification.core import CheckOutcome, VerificationResult
from govmesh.verification.metrics import VerificationMetrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=200_000)
    args = parser.parse_args()

    engine = EngineMetrics(CollectorRegistry())
    peers = [engine.peer(name) for name in ("verification", "policy", "lineage")]
    verification = VerificationMetrics(CollectorRegistry())
    policy = PolicyMetrics(CollectorRegistry())
    lineage = LineageMetrics(CollectorRegistry())
    result = VerificationResult("d", tuple(CheckOutcome(c, True) for c in REQUIRED_CHECKS))
    answer = Answer(Snapshot.__new__(Snapshot), PolicyDecision(True), None)

    started = time.perf_counter()
    for _ in range(args.decisions):
        engine.decided(common_pb2.ALLOW, 0, 0.004)
        for peer in peers:
            peer.sent(1, 0.002, "ok")
        verification.verified(result)
        verification.replay_commit.observe(0.001)
        policy.evaluated(answer, 0.0002)
        lineage.append_seconds.observe(0.002)
        lineage.commit_seconds.observe(0.001)
        lineage.commit_entries.observe(1)
    elapsed = time.perf_counter() - started
    per_decision = elapsed / args.decisions * 1e6
    print(f"{per_decision:.1f} µs of metrics per decision ({args.decisions} decisions)")


if __name__ == "__main__":
    main()
