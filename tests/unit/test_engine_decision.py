"""The engine's decision path over fakes: every way it must refuse to ALLOW."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from joserfc import jwt
from joserfc.jwk import OKPKey

from govmesh.artifacts import GRANT_TYP
from govmesh.artifacts.canonical import b64url, canonical_json, request_digest
from govmesh.artifacts.checks import REQUIRED_CHECKS
from govmesh.artifacts.entries import entry_problem
from govmesh.engine.config import EngineSettings
from govmesh.engine.core import DecisionConfig, Engine
from govmesh.engine.protocols import PeerTimeout, PeerUnavailable
from govmesh.engine.requests import UnreadableRequest
from govmesh.lineage.core import leaf_hash
from govmesh.v1 import common_pb2, engine_pb2, policy_pb2, verification_pb2
from tests.unit.engine_fakes import (
    BUNDLE,
    ISSUER,
    SUBJECT,
    FakeLineage,
    FakePolicy,
    FakeSpool,
    FakeVerification,
    authorize_request,
    build_engine,
    jws,
    passing_verification,
    permitting_policy,
)

ALLOW = common_pb2.ALLOW
DENY = common_pb2.DENY


def reason(response: engine_pb2.AuthorizeResponse) -> str:
    return common_pb2.DenyReason.Name(response.reason)


def decode_grant(grant: str, key: OKPKey) -> dict[str, Any]:
    token = jwt.decode(grant, key, algorithms=["EdDSA"])
    assert token.header["typ"] == GRANT_TYP
    return dict(token.claims)


async def test_allow_carries_a_grant_bound_to_the_decision_and_the_receipt() -> None:
    h = build_engine()
    request = authorize_request()
    response = await h.engine.authorize(request)

    assert response.decision == ALLOW
    assert response.reason == common_pb2.DENY_REASON_UNSPECIFIED
    assert list(response.failed_checks) == []
    digest = request_digest(request.action, request.resource, {"amount": 250})
    assert response.request_digest == digest
    claims = decode_grant(response.grant, h.key)
    assert claims["jti"] == response.decision_id
    assert claims["req"] == digest
    assert claims["sub"] == SUBJECT
    assert claims["act"] == {"action": request.action, "resource": request.resource}
    assert claims["pol"] == {"bundle": BUNDLE.version, "epoch": BUNDLE.epoch}
    assert claims["lin"]["index"] == response.lineage.index
    assert claims["lin"]["leaf_hash"] == b64url(response.lineage.leaf_hash)
    assert 0 < claims["exp"] - claims["iat"] <= 60
    assert claims["cnf"] == {"jkt": "jkt"}


async def test_every_decision_is_one_canonical_lineage_entry() -> None:
    h = build_engine()
    allowed = await h.engine.authorize(authorize_request())
    denied = await h.engine.authorize(authorize_request(action=""))

    assert [e["decision_id"] for e in h.lineage.decoded()] == [
        allowed.decision_id,
        denied.decision_id,
    ]
    for raw in h.lineage.entries:
        assert canonical_json(json.loads(raw)) == raw
    first, second = h.lineage.decoded()
    assert first["decision"] == "ALLOW"
    assert first["subject"] == SUBJECT
    assert first["policy"]["epoch"] == BUNDLE.epoch
    assert first["grant_id"] == allowed.decision_id
    assert first["trust"] == "trust-v1"
    assert first["attestor"] == "https://attestor.test"
    assert first["measurements"] == ["sha256:" + "ab" * 32]
    assert second["decision"] == "DENY"
    assert second["reason"] == "MALFORMED_REQUEST"
    assert second["grant_id"] is None
    # One counter per engine, contiguous: the auditor detects a dropped decision.
    assert [first["engine"]["seq"], second["engine"]["seq"]] == [0, 1]
    assert first["engine"]["id"] == second["engine"]["id"] == "engine-test"


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"action": ""}, "empty action"),
        ({"action": "a" * 257}, "action too long"),
        ({"action": "pay\nments"}, "control character"),
        ({"resource": ""}, "empty resource"),
        ({"resource": "r" * 1025}, "resource too long"),
        ({"mandate": "x" * 20_000}, "mandate too long"),
        ({"proof": "é.é.é"}, "non-ASCII proof"),
        ({"resource": "account:acme/treasury/../frozen"}, "dot-dot segment"),
        ({"resource": "account:acme/./frozen"}, "dot segment"),
        ({"resource": "account:acme//frozen"}, "empty segment"),
        ({"resource": "account:acme/frozen "}, "trailing space"),
        ({"resource": " account:acme/frozen"}, "leading space"),
        ({"resource": "account:acme/%2e%2e/frozen"}, "encoded dot segment"),
        ({"resource": "account:acme%2Ffrozen"}, "encoded slash"),
        ({"resource": "account:acme\\frozen"}, "backslash"),
        ({"resource": "account:acme/cafe\u0301"}, "not NFC"),
        ({"resource": "account:acme/caf\u00e9"}, "not ASCII"),
        ({"resource": "account:acme/frozen/"}, "trailing slash"),
        ({"resource": "s3:bucket/dir/"}, "trailing slash on a directory"),
        ({"resource": "url:https://bank.example/accounts/7"}, "a URL: scheme and empty segment"),
        ({"resource": "account:acme/frozen%00"}, "encoded NUL"),
        ({"resource": "account:acme/%25%32%65%25%32%65/frozen"}, "double-encoded dots"),
        ({"resource": "account:acme/frozen?x=1"}, "query"),
        ({"resource": "account:acme/frozen#x"}, "fragment"),
        ({"resource": "account:acme/froze*"}, "glob"),
        ({"resource": "account:acme/Frozen"}, "upper case"),
        ({"resource": "account:acme/frozen."}, "trailing dot"),
        ({"resource": "acme/frozen"}, "no type"),
        ({"action": "payments transfer"}, "space in action"),
        ({"action": "payments.transfer."}, "trailing dot in action"),
        ({"action": "Payments.Transfer"}, "upper-case action"),
        ({"action": "payments/transfer"}, "slash in action"),
        ({"context": {"blob": "x" * 20_000}}, "context too large"),
        ({"context": {"a": [[[[[[[[[[[[[[[[[["deep"]]]]]]]]]]]]]]]]]]}}, "context too deep"),
    ],
)
async def test_malformed_requests_deny_without_asking_peers(
    overrides: dict[str, Any], why: str
) -> None:
    h = build_engine()
    response = await h.engine.authorize(authorize_request(**overrides))

    assert response.decision == DENY, why
    assert reason(response) == "MALFORMED_REQUEST", why
    assert list(response.failed_checks) == ["request"]
    assert h.verification.calls == []
    assert h.policy.calls == []
    assert len(h.lineage.entries) == 1  # the deny is recorded all the same


async def test_a_context_holding_nan_is_malformed_not_a_crash() -> None:
    h = build_engine()
    request = authorize_request()
    request.context.fields["amount"].number_value = math.nan
    response = await h.engine.authorize(request)

    assert response.decision == DENY
    assert reason(response) == "MALFORMED_REQUEST"


@pytest.mark.parametrize(
    "resource",
    [
        "url:bank.example/accounts/7",
        "s3:bucket/dir/report-2024.pdf",
        "account:acme/.hidden",
        "k8s:prod/deployments/api_v2",
        "account:acme/..x",
    ],
)
async def test_ordinary_resources_are_not_refused(resource: str) -> None:
    h = build_engine()
    response = await h.engine.authorize(authorize_request(resource=resource))

    assert response.decision == ALLOW, response.message


async def test_policy_sees_the_claimed_subject_issuer_environment_and_attribution() -> None:
    h = build_engine(
        verification=FakeVerification(answer=lambda r: _with_env(passing_verification(r)))
    )
    attestation = jws({"env": {"cluster": "prod"}})
    response = await h.engine.authorize(authorize_request(attestation=attestation))

    assert response.decision == ALLOW, response.message
    [asked] = h.policy.calls
    assert asked.principal == SUBJECT
    assert asked.issuer == ISSUER
    assert json_format.MessageToDict(asked.context) == {
        "request": {"amount": 250},
        "env": {"cluster": "prod"},
        "attribution": {"session": "s1"},
    }


def _with_env(response: verification_pb2.VerifyResponse) -> verification_pb2.VerifyResponse:
    json_format.ParseDict({"cluster": "prod"}, response.claims.env)
    return response


# --- peers that fail -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "error", "expected"),
    [
        ("verification", PeerUnavailable("connection refused"), "PEER_UNAVAILABLE"),
        ("verification", PeerTimeout("deadline"), "PEER_TIMEOUT"),
        ("policy", PeerUnavailable("connection refused"), "PEER_UNAVAILABLE"),
        ("policy", PeerTimeout("deadline"), "PEER_TIMEOUT"),
    ],
)
async def test_a_failing_peer_denies(peer: str, error: Exception, expected: str) -> None:
    h = build_engine()
    getattr(h, peer).error = error
    response = await h.engine.authorize(authorize_request())

    assert response.decision == DENY
    assert reason(response) == expected
    assert peer in response.failed_checks
    assert response.grant == ""


@pytest.mark.parametrize("peer", ["verification", "policy"])
async def test_a_hanging_peer_is_cut_off_at_its_deadline(peer: str) -> None:
    config = DecisionConfig(
        verification_timeout_s=0.05, policy_timeout_s=0.05, lineage_timeout_s=0.2, budget_s=0.3
    )
    h = build_engine(config=config)
    getattr(h, peer).delay = 3600
    started = time.monotonic()
    response = await h.engine.authorize(authorize_request())
    elapsed = time.monotonic() - started

    assert response.decision == DENY
    assert reason(response) == "PEER_TIMEOUT"
    assert list(response.failed_checks) == [peer]
    # Behaviour, not speed: the answer comes at the deadline, not after the hour.
    assert elapsed < config.budget_s + 0.5
    assert len(h.lineage.entries) == 1


async def test_the_budget_bounds_the_whole_decision_even_with_generous_peer_deadlines() -> None:
    config = DecisionConfig(
        verification_timeout_s=5.0, policy_timeout_s=5.0, lineage_timeout_s=5.0, budget_s=0.1
    )
    h = build_engine(config=config)
    h.verification.delay = 3600
    h.policy.delay = 3600
    request = authorize_request()
    started = time.monotonic()
    response = await h.engine.authorize(request)
    elapsed = time.monotonic() - started

    # Answered at the budget; the margin is scheduling on a busy machine, not slack
    # for a peer deadline (each is 50 times the budget).
    assert elapsed < config.budget_s + 0.1
    assert reason(response) == "PEER_TIMEOUT"
    # Unverified: the answer names verification only, the entry both.
    assert list(response.failed_checks) == ["verification"]
    # No time was left for lineage: the deny is spooled, not dropped.
    assert len(h.spool.entries) == 1
    assert set(json.loads(h.spool.entries[0][0])["failed_checks"]) == {"verification", "policy"}


@pytest.fixture
def default_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> DecisionConfig:
    """The deadlines of an engine started with no GOVMESH_* deadline settings."""
    for name in list(os.environ):
        if name.startswith("GOVMESH_"):
            monkeypatch.delenv(name)
    return EngineSettings(keys_dir=tmp_path).decision_config()


def test_the_default_deadlines_keep_a_decision_within_a_quarter_second(
    default_config: DecisionConfig,
) -> None:
    # Sized to the measured tail of the whole mesh on a 2-core machine
    # (README, Performance); a hanging peer still costs at most this.
    config = default_config
    assert config.budget_s <= 0.250
    # Each peer gets its own deadline inside the budget, and lineage still has its
    # whole deadline after the slower peer used all of its own.
    slowest_peer = max(config.verification_timeout_s, config.policy_timeout_s)
    assert 0 < slowest_peer < config.budget_s
    assert 0 < config.lineage_timeout_s < config.budget_s
    assert slowest_peer + config.lineage_timeout_s <= config.budget_s


async def test_with_the_default_deadlines_a_hanging_peer_is_denied_within_the_budget(
    default_config: DecisionConfig,
) -> None:
    config = default_config
    h = build_engine(config=config)
    h.policy.delay = 3600
    request = authorize_request()
    started = time.monotonic()
    response = await h.engine.authorize(request)
    elapsed = time.monotonic() - started

    assert reason(response) == "PEER_TIMEOUT"
    assert list(response.failed_checks) == ["policy"]
    assert elapsed < config.budget_s + 0.1


# --- deadlines that follow the caller ---------------------------------------------

STRETCHY = DecisionConfig(
    verification_timeout_s=0.05,
    policy_timeout_s=0.05,
    lineage_timeout_s=0.1,
    budget_s=0.2,
    budget_max_s=1.6,
)


@pytest.mark.parametrize(
    ("time_remaining", "stretch"),
    [
        (None, 1.0),  # unknown: the configured deadlines
        (0.01, 1.0),  # a caller in a hurry never gets less than the configured budget
        (0.25, 1.0),  # 0.25 s less the reply margin is the configured budget
        (0.45, 2.0),  # 0.4 s of budget: every deadline doubled
        (30.0, 8.0),  # a patient caller: up to the ceiling and no further
        (math.inf, 8.0),  # no deadline at all
    ],
)
def test_a_decision_stretches_to_what_its_caller_can_wait_within_the_ceiling(
    time_remaining: float | None, stretch: float
) -> None:
    assert STRETCHY.stretch(time_remaining) == pytest.approx(stretch)


@pytest.mark.parametrize("ceiling", [None, 0.1, 0.2])
def test_no_ceiling_above_the_budget_means_no_stretch(ceiling: float | None) -> None:
    config = DecisionConfig(
        verification_timeout_s=0.05,
        policy_timeout_s=0.05,
        lineage_timeout_s=0.1,
        budget_s=0.2,
        budget_max_s=ceiling,
    )
    assert config.stretch(math.inf) == 1.0


@pytest.mark.parametrize("peer", ["verification", "policy"])
async def test_a_peer_stalled_past_its_deadline_still_allows_a_caller_that_can_wait(
    peer: str,
) -> None:
    # The stall (0.15 s) is three times the peer's configured deadline: a
    # caller with 5 s to spare gets the answer, one with 0.2 s a PEER_TIMEOUT.
    h = build_engine(config=STRETCHY)
    getattr(h, peer).delay = 0.15
    patient = await h.engine.authorize(authorize_request(), time_remaining=5.0)
    hurried = await h.engine.authorize(authorize_request(), time_remaining=0.2)

    assert patient.decision == ALLOW, patient.message
    assert hurried.decision == DENY
    assert reason(hurried) == "PEER_TIMEOUT"
    assert list(hurried.failed_checks) == [peer]


async def test_a_hanging_peer_is_still_cut_off_at_the_stretched_budget() -> None:
    h = build_engine(config=STRETCHY)
    h.policy.delay = 3600
    started = time.monotonic()
    response = await h.engine.authorize(authorize_request(), time_remaining=math.inf)
    elapsed = time.monotonic() - started

    assert reason(response) == "PEER_TIMEOUT"
    # The policy deadline stretched eightfold (0.4 s), and never past the ceiling.
    assert 0.4 <= elapsed < (STRETCHY.budget_max_s or 0) + 0.1
    assert h.lineage.decoded()[-1]["decision"] == "DENY"


async def test_a_lineage_stall_past_its_deadline_still_allows_a_caller_that_can_wait() -> None:
    h = build_engine(config=STRETCHY)
    h.lineage.delay = 0.25
    patient = await h.engine.authorize(authorize_request(), time_remaining=5.0)
    hurried = await h.engine.authorize(authorize_request(), time_remaining=0.2)

    assert patient.decision == ALLOW, patient.message
    assert hurried.decision == DENY
    assert reason(hurried) == "LINEAGE_UNAVAILABLE"


async def test_an_unexpected_exception_in_a_peer_adapter_denies_internal_error() -> None:
    h = build_engine()
    h.verification.error = RuntimeError("bug")
    response = await h.engine.authorize(authorize_request())

    assert response.decision == DENY
    assert reason(response) == "INTERNAL_ERROR"
    assert response.grant == ""
    recorded = h.lineage.decoded()
    assert recorded[-1]["decision"] == "DENY"


async def test_a_grant_that_cannot_be_signed_is_a_deny() -> None:
    h = build_engine()

    def broken(claims: Any) -> str:
        raise ValueError("key unusable")

    h.engine._grants.sign = broken  # type: ignore[method-assign]
    response = await h.engine.authorize(authorize_request())

    assert response.decision == DENY
    assert reason(response) == "INTERNAL_ERROR"
    assert response.grant == ""


# --- lineage: no log, no execution -------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        {"error": PeerUnavailable("lineage down")},
        {"error": PeerTimeout("deadline")},
        {"delay": 3600},
    ],
)
async def test_an_allow_without_a_receipt_becomes_lineage_unavailable(
    fault: dict[str, Any],
) -> None:
    config = DecisionConfig(
        verification_timeout_s=1.0, policy_timeout_s=1.0, lineage_timeout_s=0.05, budget_s=2.0
    )
    h = build_engine(lineage=FakeLineage(**fault), config=config)
    response = await h.engine.authorize(authorize_request())

    assert response.decision == DENY
    assert reason(response) == "LINEAGE_UNAVAILABLE"
    assert list(response.failed_checks) == ["lineage"]
    assert response.grant == ""
    # What was answered is what gets recorded, under the same decision id.
    [(spooled, decision_id)] = h.spool.entries
    entry = json.loads(spooled)
    assert decision_id == response.decision_id == entry["decision_id"]
    assert entry["decision"] == "DENY"
    assert entry["reason"] == "LINEAGE_UNAVAILABLE"
    assert entry["grant_id"] is None


async def test_a_deny_lineage_cannot_take_is_spooled() -> None:
    h = build_engine(lineage=FakeLineage(error=PeerUnavailable("down")))
    response = await h.engine.authorize(authorize_request(context={"amount": 1}, action=""))

    assert reason(response) == "MALFORMED_REQUEST"
    assert len(h.spool.entries) == 1
    assert not response.HasField("lineage")


async def test_a_full_spool_disk_still_answers_deny() -> None:
    h = build_engine(
        lineage=FakeLineage(error=PeerUnavailable("down")),
        spool=FakeSpool(error=OSError(28, "No space left on device")),
    )
    response = await h.engine.authorize(authorize_request())

    assert response.decision == DENY
    assert reason(response) == "LINEAGE_UNAVAILABLE"
    # Only lineage failed: a disk error that escaped the spool would show as
    # an engine failure too (the catch-all's), under the same primary reason.
    assert list(response.failed_checks) == ["lineage"]


async def test_a_stuck_spool_disk_holds_the_answer_only_for_the_spool_timeout() -> None:
    config = DecisionConfig(
        verification_timeout_s=0.05,
        policy_timeout_s=0.05,
        lineage_timeout_s=0.05,
        budget_s=0.3,
        spool_timeout_s=0.2,
    )
    h = build_engine(
        lineage=FakeLineage(error=PeerUnavailable("down")),
        spool=FakeSpool(delay=30),
        config=config,
    )
    started = time.monotonic()
    response = await h.engine.authorize(authorize_request())

    assert time.monotonic() - started < config.budget_s + config.spool_timeout_s + 0.5
    assert response.decision == DENY
    assert reason(response) == "LINEAGE_UNAVAILABLE"


async def test_a_deny_is_answered_only_once_durable_even_past_the_budget() -> None:
    # Lineage takes the whole budget and fails; the spool needs 0.2 s more.
    config = DecisionConfig(
        verification_timeout_s=0.05, policy_timeout_s=0.05, lineage_timeout_s=1.0, budget_s=0.1
    )
    h = build_engine(lineage=FakeLineage(delay=3600), spool=FakeSpool(delay=0.2), config=config)
    response = await h.engine.authorize(authorize_request())

    assert reason(response) == "LINEAGE_UNAVAILABLE"
    assert len(h.spool.entries) == 1  # on disk before the answer left


async def test_a_receipt_is_recorded_in_the_response() -> None:
    h = build_engine()
    response = await h.engine.authorize(authorize_request())

    assert response.lineage.tree_size == 1
    assert response.lineage.checkpoint == "test-checkpoint"


# --- answers that do not hold together ---------------------------------------------------


def _verification(mutate: Callable[[verification_pb2.VerifyResponse], None]) -> FakeVerification:
    def answer(request: verification_pb2.VerifyRequest) -> verification_pb2.VerifyResponse:
        response = passing_verification(request)
        mutate(response)
        return response

    return FakeVerification(answer=answer)


def _drop_check(response: verification_pb2.VerifyResponse) -> None:
    del response.checks[-1]


def _duplicate_check(response: verification_pb2.VerifyResponse) -> None:
    response.checks.add(name=REQUIRED_CHECKS[0].value, verdict=common_pb2.CHECK_PASSED)


def _fail_but_say_verified(response: verification_pb2.VerifyResponse) -> None:
    response.checks[0].verdict = common_pb2.CHECK_FAILED
    response.checks[0].reason = common_pb2.INVALID_VERIFICATION


def _pass_but_say_unverified(response: verification_pb2.VerifyResponse) -> None:
    response.verified = False
    response.reason = common_pb2.INVALID_VERIFICATION


def _wrong_primary_reason(response: verification_pb2.VerifyResponse) -> None:
    response.verified = False
    response.checks[0].verdict = common_pb2.CHECK_FAILED
    response.checks[0].reason = common_pb2.EXPIRED_AUTHORIZATION
    response.reason = common_pb2.REPLAY_DETECTED


def _failed_without_reason(response: verification_pb2.VerifyResponse) -> None:
    response.verified = False
    response.checks[0].verdict = common_pb2.CHECK_FAILED
    response.reason = common_pb2.INTERNAL_ERROR


def _failed_with_unknown_reason(response: verification_pb2.VerifyResponse) -> None:
    response.verified = False
    response.checks[0].verdict = common_pb2.CHECK_FAILED
    response.checks[0].reason = 999  # type: ignore[assignment]
    response.reason = 999  # type: ignore[assignment]


def _passed_with_reason(response: verification_pb2.VerifyResponse) -> None:
    response.checks[0].reason = common_pb2.INVALID_VERIFICATION


def _no_verdict(response: verification_pb2.VerifyResponse) -> None:
    response.checks[0].verdict = common_pb2.CHECK_VERDICT_UNSPECIFIED


def _unknown_verdict(response: verification_pb2.VerifyResponse) -> None:
    response.checks[0].verdict = 7  # type: ignore[assignment]


def _other_digest(response: verification_pb2.VerifyResponse) -> None:
    response.request_digest = "another-request"


def _other_subject(response: verification_pb2.VerifyResponse) -> None:
    response.claims.subject = "spiffe://test/someone-else"


def _other_issuer(response: verification_pb2.VerifyResponse) -> None:
    # The same sub under another issuer: another agent than policy evaluated.
    response.claims.issuer = "https://issuer-b.test"


def _no_claims(response: verification_pb2.VerifyResponse) -> None:
    response.ClearField("claims")


def _other_env(response: verification_pb2.VerifyResponse) -> None:
    json_format.ParseDict({"cluster": "prod"}, response.claims.env)


def _other_attribution(response: verification_pb2.VerifyResponse) -> None:
    json_format.ParseDict({"session": "s2"}, response.claims.attribution)


@pytest.mark.parametrize(
    "mutate",
    [
        _drop_check,
        _duplicate_check,
        _fail_but_say_verified,
        _pass_but_say_unverified,
        _wrong_primary_reason,
        _failed_without_reason,
        _failed_with_unknown_reason,
        _passed_with_reason,
        _no_verdict,
        _unknown_verdict,
        _other_digest,
        _other_subject,
        _other_issuer,
        _no_claims,
        _other_env,
        _other_attribution,
    ],
)
async def test_an_inconsistent_verification_answer_never_allows(
    mutate: Callable[[verification_pb2.VerifyResponse], None],
) -> None:
    h = build_engine(verification=_verification(mutate))
    response = await h.engine.authorize(authorize_request())

    assert response.decision == DENY
    assert reason(response) == "INCONSISTENT_ANSWERS"
    assert "verification" in response.failed_checks
    assert response.grant == ""


async def test_verification_cannot_vouch_for_a_mandate_the_engine_cannot_read() -> None:
    h = build_engine()
    response = await h.engine.authorize(authorize_request(mandate="not-a-jws"))

    assert response.decision == DENY
    assert reason(response) == "INCONSISTENT_ANSWERS"
    assert h.policy.calls == []  # no subject to evaluate


def _policy(
    mutate: Callable[[policy_pb2.EvaluateResponse], None],
) -> FakePolicy:
    def answer(request: policy_pb2.EvaluateRequest) -> policy_pb2.EvaluateResponse:
        response = permitting_policy(request)
        mutate(response)
        return response

    return FakePolicy(answer=answer)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: setattr(r, "request_digest", "another-request"),
        lambda r: r.ClearField("bundle"),
        lambda r: setattr(r.bundle, "epoch", 0),
        lambda r: setattr(r.bundle, "version", ""),
        lambda r: r.errors.append("type error in policy3"),
        lambda r: setattr(r, "decision", common_pb2.DECISION_UNSPECIFIED),
        lambda r: setattr(r, "decision", 7),
    ],
    ids=["digest", "no-bundle", "epoch-0", "no-version", "allow-with-errors", "no-decision", "7"],
)
async def test_an_inconsistent_policy_answer_never_allows(
    mutate: Callable[[policy_pb2.EvaluateResponse], None],
) -> None:
    h = build_engine(policy=_policy(mutate))
    response = await h.engine.authorize(authorize_request())

    assert response.decision == DENY
    assert reason(response) == "INCONSISTENT_ANSWERS"
    assert "policy" in response.failed_checks


async def test_a_stale_policy_epoch_is_refused_after_a_newer_one_was_seen() -> None:
    epochs = iter([5, 4])
    h = build_engine(policy=_policy(lambda r: setattr(r.bundle, "epoch", next(epochs))))
    newer = await h.engine.authorize(authorize_request())
    stale = await h.engine.authorize(authorize_request())

    assert newer.decision == ALLOW
    assert stale.decision == DENY
    assert reason(stale) == "INCONSISTENT_ANSWERS"


async def test_replicas_that_disagree_on_an_epochs_bundle_are_refused() -> None:
    versions = iter(["a" * 64, "c" * 64])
    h = build_engine(policy=_policy(lambda r: setattr(r.bundle, "version", next(versions))))
    first = await h.engine.authorize(authorize_request())
    second = await h.engine.authorize(authorize_request())

    assert first.decision == ALLOW
    assert reason(second) == "INCONSISTENT_ANSWERS"


async def test_a_policy_deny_names_what_decided() -> None:
    def deny(request: policy_pb2.EvaluateRequest) -> policy_pb2.EvaluateResponse:
        response = permitting_policy(request)
        response.decision = common_pb2.DENY
        response.ClearField("determining_policies")
        response.determining_policies.append("frozen-accounts")
        return response

    h = build_engine(policy=FakePolicy(answer=deny))
    response = await h.engine.authorize(authorize_request())

    assert reason(response) == "POLICY_MISMATCH"
    assert list(response.failed_checks) == ["policy"]
    assert "frozen-accounts" in response.message


# --- precedence --------------------------------------------------------------------------


def _expired(request: verification_pb2.VerifyRequest) -> verification_pb2.VerifyResponse:
    response = passing_verification(request)
    response.verified = False
    response.ClearField("claims")
    window = next(c for c in response.checks if c.name == "window")
    window.verdict = common_pb2.CHECK_FAILED
    window.reason = common_pb2.EXPIRED_AUTHORIZATION
    response.reason = common_pb2.EXPIRED_AUTHORIZATION
    return response


async def test_the_primary_reason_follows_the_precedence_and_every_failure_is_listed() -> None:
    def deny(request: policy_pb2.EvaluateRequest) -> policy_pb2.EvaluateResponse:
        response = permitting_policy(request)
        response.decision = common_pb2.DENY
        return response

    h = build_engine(verification=FakeVerification(answer=_expired), policy=FakePolicy(answer=deny))
    response = await h.engine.authorize(authorize_request())

    assert reason(response) == "EXPIRED_AUTHORIZATION"
    assert list(response.failed_checks) == ["window"]
    [entry] = h.lineage.decoded()
    assert entry["reason"] == "EXPIRED_AUTHORIZATION"
    assert entry["failed_checks"] == ["window", "policy"]


async def test_a_definitive_policy_deny_outranks_a_peer_timeout_in_the_entry() -> None:
    def deny(request: policy_pb2.EvaluateRequest) -> policy_pb2.EvaluateResponse:
        response = permitting_policy(request)
        response.decision = common_pb2.DENY
        return response

    h = build_engine(
        verification=FakeVerification(error=PeerTimeout("deadline")),
        policy=FakePolicy(answer=deny),
    )
    response = await h.engine.authorize(authorize_request())

    # The decision is POLICY_MISMATCH, as the entry records; the caller,
    # whose artifacts were never verified, learns only of verification.
    [entry] = h.lineage.decoded()
    assert entry["reason"] == "POLICY_MISMATCH"
    assert set(entry["failed_checks"]) == {"verification", "policy"}
    assert reason(response) == "PEER_TIMEOUT"
    assert list(response.failed_checks) == ["verification"]


async def test_concurrent_decisions_do_not_mix_answers() -> None:
    h = build_engine()
    h.verification.delay = 0.01
    requests = [authorize_request(context={"amount": n}) for n in range(50)]
    responses = await asyncio.gather(*(h.engine.authorize(r) for r in requests))

    assert all(r.decision == ALLOW for r in responses)
    digests = {r.request_digest for r in responses}
    assert len(digests) == 50
    assert len({r.decision_id for r in responses}) == 50
    seqs = sorted(e["engine"]["seq"] for e in h.lineage.decoded())
    assert seqs == list(range(50))


# --- unsigned content the engine reads before verification ------------------------------


def _raw_jws(payload: bytes) -> str:
    return ".".join([b64url(b'{"alg":"EdDSA"}'), b64url(payload), b64url(b"sig")])


_ISS = b'{"iss": "https://issuer.test", '


@pytest.mark.parametrize(
    ("mandate", "why"),
    [
        (_raw_jws(_ISS + b'"sub": "\\ud800"}'), "lone surrogate escaped in JSON"),
        (_raw_jws(_ISS + b'"sub": "\xed\xa0\x80"}'), "lone surrogate as raw bytes"),
        (_raw_jws(_ISS + b'"sub": "x", "att": {"n": ' + b"9" * 400 + b"}}"), "huge integer"),
        (_raw_jws(_ISS + b'"sub": "' + b"x" * 3000 + b'"}'), "subject longer than a SPIFFE ID"),
        (
            _raw_jws(_ISS + b'"sub": "x", "att": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
            "deep nesting",
        ),
        (_raw_jws(b'{"sub": "x"}'), "no issuer"),
        (_raw_jws(b'{"iss": 7, "sub": "x"}'), "an issuer that is not a string"),
        (_raw_jws(b'{"iss": "\\ud800", "sub": "x"}'), "issuer with a lone surrogate"),
        (_raw_jws(b'{"iss": "' + b"i" * 3000 + b'", "sub": "x"}'), "issuer longer than a URL"),
    ],
)
async def test_unreadable_claims_are_never_evaluated_and_the_deny_is_recorded(
    mandate: str, why: str
) -> None:
    h = build_engine(verification=_verification(lambda r: None))
    response = await h.engine.authorize(authorize_request(mandate=mandate))

    assert response.decision == DENY, why
    assert h.policy.calls == [], why
    [entry] = h.lineage.decoded()
    assert entry["decision_id"] == response.decision_id
    assert entry["claimed_subject"] is None


async def test_claimed_attestation_values_with_no_canonical_form_deny_not_crash() -> None:
    attestation = _raw_jws(b'{"env": {"n": ' + b"1" * 400 + b"}}")
    h = build_engine()
    response = await h.engine.authorize(authorize_request(attestation=attestation))

    assert response.decision == DENY
    assert h.policy.calls == []
    assert len(h.lineage.entries) == 1


async def test_a_failure_on_one_side_cancels_the_other_and_is_recorded_once() -> None:
    h = build_engine()
    h.verification.error = RuntimeError("bug")
    h.policy.delay = 0.2
    response = await h.engine.authorize(authorize_request())
    await asyncio.sleep(0.3)  # had policy been left running, it would answer now

    assert reason(response) == "INTERNAL_ERROR"
    assert len(h.lineage.entries) == 1
    assert [e["engine"]["seq"] for e in h.lineage.decoded()] == [0]


async def test_every_decision_takes_one_counter_value_even_when_recording_is_retried() -> None:
    h = build_engine()

    def broken(claims: Any) -> str:
        raise ValueError("key unusable")

    h.engine._grants.sign = broken  # type: ignore[method-assign]
    await h.engine.authorize(authorize_request())  # recorded ALLOW, then DENY INTERNAL_ERROR
    h.engine._grants.sign = lambda claims: "g.g.g"  # type: ignore[method-assign]
    await h.engine.authorize(authorize_request())

    seqs = [e["engine"]["seq"] for e in h.lineage.decoded()]
    assert sorted(set(seqs)) == [0, 1]


# --- every entry is one lineage accepts; every deny is kept ------------------------------


def vouching_for(subject: str) -> Callable[[verification_pb2.VerifyRequest], Any]:
    def answer(request: verification_pb2.VerifyRequest) -> verification_pb2.VerifyResponse:
        response = passing_verification(request)
        response.claims.subject = subject
        return response

    return answer


async def test_an_allow_for_a_subject_lineage_cannot_store_is_a_recorded_deny() -> None:
    # A subject with a NUL, vouched for by verification: lineage refuses an
    # entry holding it, so the engine must neither ALLOW unrecorded nor send
    # (or spool) an entry that would be refused for ever.
    subject = SUBJECT + "\x00x"
    h = build_engine(verification=FakeVerification(answer=vouching_for(subject)))
    request = authorize_request(
        mandate=jws({"iss": ISSUER, "sub": subject, "att": {"session": "s1"}})
    )

    response = await h.engine.authorize(request)

    assert response.decision == DENY
    assert response.grant == ""
    assert reason(response) == "INTERNAL_ERROR"
    assert list(response.failed_checks) == ["lineage"]
    # Recorded now, in a form lineage took (FakeLineage applies its rules), not spooled.
    assert h.spool.entries == []
    [logged] = h.lineage.entries
    entry = json.loads(logged)
    assert entry["decision_id"] == response.decision_id
    assert entry["decision"] == "DENY"
    assert entry.get("subject") is None
    assert entry["engine"] == {"id": "engine-test", "seq": 0}
    assert "NUL" in entry["unrecorded"]
    assert response.lineage.leaf_hash == leaf_hash(logged)


async def test_every_entry_the_engine_sends_or_spools_is_one_lineage_accepts() -> None:
    # Hostile but valid-looking inputs on every path: malformed, denied, allowed.
    # Verification vouches for a subject lineage cannot store; lineage is down.
    h = build_engine(
        verification=FakeVerification(answer=vouching_for(SUBJECT + "\x00")),
        lineage=FakeLineage(error=PeerUnavailable("down")),
    )
    requests = [
        authorize_request(action="pay\x00ments"),
        authorize_request(resource="a" * 5000),
        authorize_request(
            mandate=jws({"iss": ISSUER, "sub": SUBJECT + "\x00", "att": {"session": "s1"}})
        ),
        authorize_request(
            mandate=jws({"iss": ISSUER, "sub": "é" * 2048, "att": {"session": "s1"}})
        ),
        authorize_request(),
    ]
    for request in requests:
        assert (await h.engine.authorize(request)).decision == DENY
    assert len(h.spool.entries) == len(requests)
    for data, decision_id in h.spool.entries:
        assert entry_problem(data, decision_id) is None, data


class Exploding:
    """A lineage whose append raises something no one planned for."""

    async def append(self, entry: bytes, decision_id: str, *, timeout: float) -> Any:
        raise RuntimeError("lineage client bug")


async def test_a_finishing_step_that_raises_still_spools_the_deny() -> None:
    h = build_engine()
    h.engine._lineage = Exploding()  # fault injection: not a timeout, not a peer error

    response = await h.engine.authorize(authorize_request())

    assert response.decision == DENY
    assert response.grant == ""
    assert reason(response) == "INTERNAL_ERROR"
    # Nothing lost: the deny waits in the spool, in a form lineage accepts.
    [(data, decision_id)] = h.spool.entries
    assert decision_id == response.decision_id
    assert entry_problem(data, decision_id) is None
    entry = json.loads(data)
    assert entry["decision"] == "DENY"
    assert entry["engine"] == {"id": "engine-test", "seq": 0}
    assert entry["reason"] == "INTERNAL_ERROR"


async def test_a_malformed_request_whose_finish_raises_still_spools_the_deny() -> None:
    h = build_engine()
    h.engine._lineage = Exploding()

    response = await h.engine.authorize(UnreadableRequest("not a protobuf"))

    assert response.decision == DENY
    [(data, decision_id)] = h.spool.entries
    assert decision_id == response.decision_id
    assert json.loads(data)["reason"] == "MALFORMED_REQUEST"


async def test_an_engine_id_lineage_would_refuse_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="engine id"):
        build_engine(engine_id="engine\x00a")
    with pytest.raises(ValueError, match="engine id"):
        build_engine(engine_id="")


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _signature_refused(request: verification_pb2.VerifyRequest) -> verification_pb2.VerifyResponse:
    """What verification answers for a forged mandate."""
    response = passing_verification(request)
    response.ClearField("claims")
    response.verified = False
    response.reason = common_pb2.INVALID_VERIFICATION
    for check in response.checks:
        if check.name == "signature":
            check.verdict = common_pb2.CHECK_FAILED
            check.reason = common_pb2.INVALID_VERIFICATION
    return response


@pytest.mark.parametrize(
    "fields",
    [
        {"mandate": jws({"sub": SUBJECT, "att": {"trail": _nested(60)}})},
        {"attestation": jws({"sub": SUBJECT, "env": {"cluster": _nested(60)}})},
        {
            "mandate": ".".join(
                b64url(part)
                for part in (
                    b'{"alg":"EdDSA"}',
                    b'{"sub":"%s","att":%s}' % (SUBJECT.encode(), b"[" * 5000 + b"]" * 5000),
                    b"sig",
                )
            )
        },
    ],
    ids=["mandate att nested 60 deep", "attestation env nested 60 deep", "nested 5000 deep"],
)
async def test_claims_nested_deeper_than_a_struct_holds_are_a_deny_without_a_traceback(
    caplog: pytest.LogCaptureFixture, fields: dict[str, str]
) -> None:
    # Anyone can send such artifacts unsigned: the engine reads their claims to
    # ask policy before verification answers, and protobuf refuses a Struct
    # nested past 100 levels. Refused like verification's reader refuses them.
    h = build_engine(verification=FakeVerification(answer=_signature_refused))
    caplog.set_level(logging.DEBUG)

    response = await h.engine.authorize(authorize_request(**fields))

    assert (response.decision, reason(response)) == (DENY, "INVALID_VERIFICATION")
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []


# --- what an unverified caller learns ------------------------------------------------------


def _policy_variants() -> dict[str, FakePolicy]:
    def deny(request: policy_pb2.EvaluateRequest) -> policy_pb2.EvaluateResponse:
        response = permitting_policy(request)
        response.decision = common_pb2.DENY
        response.ClearField("determining_policies")
        response.determining_policies.append("frozen-accounts")
        return response

    def erroring(request: policy_pb2.EvaluateRequest) -> policy_pb2.EvaluateResponse:
        response = deny(request)
        response.ClearField("determining_policies")
        response.errors.append("context.request.secret: evaluation error")
        return response

    def stale(request: policy_pb2.EvaluateRequest) -> policy_pb2.EvaluateResponse:
        response = permitting_policy(request)
        response.request_digest = "another"
        return response

    return {
        "permits": FakePolicy(),
        "forbids": FakePolicy(answer=deny),
        "errs": FakePolicy(answer=erroring),
        "inconsistent": FakePolicy(answer=stale),
        "down": FakePolicy(error=PeerUnavailable("UNAVAILABLE: policy down")),
        "late": FakePolicy(error=PeerTimeout("deadline")),
    }


@pytest.mark.parametrize(
    "verification",
    [
        FakeVerification(answer=_expired),
        FakeVerification(error=PeerTimeout("deadline")),
        FakeVerification(error=PeerUnavailable("UNAVAILABLE: down")),
    ],
    ids=["expired", "verification late", "verification down"],
)
async def test_an_unverified_callers_deny_is_the_same_whatever_policy_says(
    verification: FakeVerification,
) -> None:
    answers, entries = {}, {}
    for name, policy in _policy_variants().items():
        h = build_engine(verification=verification, policy=policy)
        response = await h.engine.authorize(authorize_request())
        answers[name] = (response.reason, tuple(response.failed_checks), response.message)
        [entries[name]] = h.lineage.decoded()

    assert len(set(answers.values())) == 1, answers
    reason_name, failed, message = answers["forbids"]
    assert "policy" not in failed
    assert "frozen" not in message and "evaluation" not in message
    assert reason_name != common_pb2.POLICY_MISMATCH
    # The entry keeps it all.
    assert entries["forbids"]["policy"]["determining"] == ["frozen-accounts"]
    assert entries["errs"]["policy"]["errors"] == ["context.request.secret: evaluation error"]
    assert all(
        "policy" in entries[n]["failed_checks"] for n in _policy_variants() if n != "permits"
    )
    if verification.error is not None:
        assert entries["forbids"]["reason"] == "POLICY_MISMATCH"


# -- the company a lineage batch lingers for ------------------------------------------


@dataclass
class CountingLineage(FakeLineage):
    """Notes how many decisions were still on their way to lineage at each append."""

    engine: Engine | None = None
    on_the_way: list[int] = field(default_factory=list)

    async def append(
        self, entry: bytes, decision_id: str, *, timeout: float
    ) -> common_pb2.LineageReceipt:
        assert self.engine is not None
        self.on_the_way.append(self.engine.before_lineage)
        return await super().append(entry, decision_id, timeout=timeout)


@dataclass
class GatedVerification(FakeVerification):
    """The first request waits for `gate`; the others are answered at once."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def verify(
        self, request: verification_pb2.VerifyRequest, *, timeout: float
    ) -> verification_pb2.VerifyResponse:
        first = not self.calls
        self.calls.append(request)
        if first:
            await self.gate.wait()
        return self.answer(request)


async def test_a_lone_decision_counts_no_company_for_its_lineage_append() -> None:
    lineage = CountingLineage()
    h = build_engine(lineage=lineage)
    lineage.engine = h.engine

    response = await h.engine.authorize(authorize_request())

    assert response.decision == ALLOW
    assert lineage.on_the_way == [0]
    assert h.engine.before_lineage == 0


async def test_an_append_counts_the_decisions_still_on_their_way_to_lineage() -> None:
    lineage = CountingLineage()
    verification = GatedVerification()
    h = build_engine(lineage=lineage, verification=verification)
    lineage.engine = h.engine

    slow = asyncio.create_task(h.engine.authorize(authorize_request(context={"n": 1})))
    await asyncio.sleep(0)  # the slow one asks verification first
    fast = await h.engine.authorize(authorize_request(context={"n": 2}))
    assert fast.decision == ALLOW
    assert lineage.on_the_way == [1]

    verification.gate.set()
    assert (await slow).decision == ALLOW
    assert lineage.on_the_way == [1, 0]
    assert h.engine.before_lineage == 0


@pytest.mark.parametrize(
    "case", ["unreadable", "malformed", "policy crashes", "lineage down", "caller gone"]
)
async def test_every_way_a_decision_ends_leaves_nothing_counted_on_its_way(case: str) -> None:
    verification = GatedVerification()
    verification.gate.set()
    policy = FakePolicy(error=RuntimeError("bug")) if case == "policy crashes" else None
    lineage = FakeLineage(error=PeerUnavailable("down")) if case == "lineage down" else None
    h = build_engine(verification=verification, policy=policy, lineage=lineage)

    if case == "caller gone":
        verification.gate.clear()
        task = asyncio.create_task(h.engine.authorize(authorize_request()))
        await asyncio.sleep(0.05)  # it waits at verification's gate
        assert verification.calls
        assert h.engine.before_lineage == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    elif case == "unreadable":
        assert (await h.engine.authorize(UnreadableRequest("junk"))).decision == DENY
    elif case == "malformed":
        response = await h.engine.authorize(authorize_request(resource="account:acme/Treasury"))
        assert reason(response) == "MALFORMED_REQUEST"
    else:
        assert (await h.engine.authorize(authorize_request())).decision == DENY

    assert h.engine.before_lineage == 0
