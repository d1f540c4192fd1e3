"""The benchmark's tally: a deny that was ALLOWed, or got another reason, never counts as right."""

from __future__ import annotations

from govmesh.bench.capacity import Phase
from govmesh.bench.workload import VALID, Planned
from govmesh.client import AuthorizationResult, Decision
from govmesh.v1 import common_pb2


def _allow() -> AuthorizationResult:
    return AuthorizationResult(
        decision=Decision.ALLOW,
        reason="DENY_REASON_UNSPECIFIED",
        decision_id="d",
        grant="g",
        lineage=common_pb2.LineageReceipt(),
        request_digest="x",
        expected_digest="x",
    )


def _deny(reason: str) -> AuthorizationResult:
    return AuthorizationResult(decision=Decision.DENY, reason=reason, decision_id="d")


def test_each_outcome_is_tallied_against_what_its_request_should_get() -> None:
    phase = Phase("p", "closed", 1)
    phase.count(Planned(VALID, None), _allow(), 0.01)
    phase.count(Planned(VALID, None), _deny("PEER_TIMEOUT"), 0.2)
    phase.count(Planned("forged mandate", None), _deny("INVALID_VERIFICATION"), 0.01)
    phase.count(Planned("forged mandate", None), _deny("POLICY_MISMATCH"), 0.01)
    phase.count(Planned("expired mandate", None), _allow(), 0.01)
    refused = AuthorizationResult(
        decision=Decision.DENY,
        reason="PEER_UNAVAILABLE",
        answered=False,
        error_code="RESOURCE_EXHAUSTED",
    )
    phase.count(Planned(VALID, None), refused, 0.001)

    assert phase.allows == 2
    assert phase.valid_not_allowed == {"PEER_TIMEOUT": 1, "no answer (RESOURCE_EXHAUSTED)": 1}
    assert phase.wrong_denies == {
        "forged mandate: POLICY_MISMATCH": 1,
        "expired mandate: ALLOWED": 1,
    }
    assert phase.refusals_s == [0.001]
    assert len(phase.latencies_s) == 5
