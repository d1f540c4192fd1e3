"""Closed Cedar evaluation: every way to an ALLOW that should not be one is a DENY."""

from __future__ import annotations

from typing import Any

import cedarpy
import pytest

from govmesh.policy import core
from govmesh.policy.bundle import (
    BundleRejected,
    BundleSource,
    CompiledBundle,
    PolicyFile,
    SchemaFile,
    compile_bundle,
)
from govmesh.policy.core import PolicyRequest, cedar_context, evaluate

ISSUER_A = "https://idp-a.example"
ISSUER_B = "https://idp-b.example"

TRANSFERS = """
@id("transfers")
permit (principal, action == Action::"payments.transfer", resource)
when { context.request.amount <= 1000 };
"""


def bundle(*texts: str, schema: str | None = None) -> CompiledBundle:
    return compile_bundle(
        BundleSource(
            policies=tuple(PolicyFile(f"p{n}.cedar", text) for n, text in enumerate(texts)),
            schema=SchemaFile("cedar", schema) if schema else None,
        )
    )


def request(
    amount: Any = 250.0,
    *,
    action: str = "payments.transfer",
    resource: str = "account:acme/treasury",
    principal: str = "spiffe://govmesh.dev/agent/demo",
    issuer: str = ISSUER_A,
    **request_context: Any,
) -> PolicyRequest:
    return PolicyRequest(
        principal=principal,
        issuer=issuer,
        action=action,
        resource=resource,
        context={"request": {"amount": amount, **request_context}, "env": {}, "attribution": {}},
    )


@pytest.mark.parametrize("indexed", [True, False])
def test_permit_allows_and_names_the_permit(indexed: bool) -> None:
    decision = evaluate(bundle(TRANSFERS), request(250.0), indexed=indexed)

    assert decision.allowed
    assert decision.determining == ("transfers",)
    assert decision.errors == ()


def test_default_deny_names_nothing() -> None:
    decision = evaluate(bundle(TRANSFERS), request(5000.0))

    assert not decision.allowed
    assert decision.determining == ()
    assert decision.errors == ()


def test_forbid_overrides_permit_and_is_named() -> None:
    frozen = """
    @id("frozen")
    forbid (principal, action, resource == Resource::"account:acme/frozen");
    """
    decision = evaluate(bundle(TRANSFERS, frozen), request(10.0, resource="account:acme/frozen"))

    assert not decision.allowed
    assert decision.determining == ("frozen",)


@pytest.mark.parametrize("indexed", [True, False])
def test_erroring_forbid_denies_although_a_permit_is_satisfied(indexed: bool) -> None:
    # Cedar alone skips the erroring forbid and answers Allow.
    erroring = """
    @id("needs-approval")
    forbid (principal, action, resource) when { context.request.approval == "none" };
    """
    policies = bundle(TRANSFERS, erroring)
    raw = cedarpy.is_authorized(
        {
            "principal": {"type": "Agent", "id": "a"},
            "action": {"type": "Action", "id": "payments.transfer"},
            "resource": {"type": "Resource", "id": "r"},
            "context": {"request": {"amount": 1}, "env": {}, "attribution": {}},
        },
        policies.full_set,
        [],
    )
    assert raw.decision == cedarpy.Decision.Allow  # the hole this closes

    decision = evaluate(policies, request(1.0), indexed=indexed)

    assert not decision.allowed
    assert len(decision.errors) == 1
    assert "needs-approval" in decision.errors[0]
    assert "approval" in decision.errors[0]


def test_erroring_permit_denies_even_with_another_permit_satisfied() -> None:
    erroring_permit = """
    @id("broken-permit")
    permit (principal, action, resource) when { context.request.missing > 1 };
    """
    decision = evaluate(bundle(TRANSFERS, erroring_permit), request(1.0))

    assert not decision.allowed
    assert "broken-permit" in decision.errors[0]


def test_satisfied_forbid_still_determines_a_deny_with_errors() -> None:
    policies = bundle(
        '@id("always-forbid") forbid (principal, action, resource);',
        '@id("broken") forbid (principal, action, resource) when { context.nope };',
    )
    decision = evaluate(policies, request(1.0))

    assert not decision.allowed
    assert decision.determining == ("always-forbid",)
    assert any("broken" in error for error in decision.errors)


SCHEMA = """
entity Issuer; entity Agent in [Issuer]; entity Resource;
action "payments.transfer" appliesTo {
  principal: [Agent], resource: [Resource],
  context: { request: { amount: Long }, env: {}, attribution: {} }
};
"""


def test_no_decision_from_a_request_the_schema_refuses_is_a_named_deny() -> None:
    policies = bundle(TRANSFERS, schema=SCHEMA)
    assert evaluate(policies, request(10.0)).allowed

    wrong_type = evaluate(policies, request("ten"))
    unknown_action = evaluate(policies, request(10.0, action="payments.refund"))

    for decision in (wrong_type, unknown_action):
        assert not decision.allowed
        assert decision.errors and "failed to build request" in decision.errors[0]
    assert "payments.refund" in unknown_action.errors[0]


# --- the principal's issuer ------------------------------------------------------------------

ISSUER_A_AGENTS = """
@id("issuer-a-agents")
permit (principal in Issuer::"https://idp-a.example", action, resource);
"""


@pytest.mark.parametrize("indexed", [True, False])
@pytest.mark.parametrize("schema", [None, SCHEMA])
def test_a_policy_for_one_issuers_agents_does_not_reach_the_same_sub_of_another(
    indexed: bool, schema: str | None
) -> None:
    policies = bundle(ISSUER_A_AGENTS, schema=schema)

    mine = evaluate(policies, request(1.0, issuer=ISSUER_A), indexed=indexed)
    theirs = evaluate(policies, request(1.0, issuer=ISSUER_B), indexed=indexed)

    assert mine.allowed and mine.determining == ("issuer-a-agents",)
    assert not theirs.allowed and theirs.errors == ()


@pytest.mark.parametrize("indexed", [True, False])
def test_a_forbid_for_one_issuers_agents_overrides_a_permit_for_all(indexed: bool) -> None:
    policies = bundle(
        '@id("all") permit (principal, action, resource);',
        '@id("not-b") forbid (principal is Agent in Issuer::"https://idp-b.example", action, '
        "resource);",
    )

    assert evaluate(policies, request(1.0, issuer=ISSUER_A), indexed=indexed).allowed
    denied = evaluate(policies, request(1.0, issuer=ISSUER_B), indexed=indexed)
    assert not denied.allowed and denied.determining == ("not-b",)


def test_a_schema_without_the_issuer_membership_is_refused() -> None:
    old_schema = SCHEMA.replace("entity Issuer; entity Agent in [Issuer];", "entity Agent;")

    with pytest.raises(BundleRejected, match=r"entity Agent in \[Issuer\]"):
        bundle(TRANSFERS, schema=old_schema)
    with pytest.raises(BundleRejected, match="required attributes"):
        bundle(
            TRANSFERS,
            schema=SCHEMA.replace(
                "entity Agent in [Issuer];", "entity Agent in [Issuer] { level: Long };"
            ),
        )


def test_positional_ids_name_file_and_position() -> None:
    policies = bundle("permit (principal, action, resource);")

    decision = evaluate(policies, request(1.0))

    assert decision.determining == ("p0.cedar:policy0",)


# --- numbers and other context values -------------------------------------------------------


def test_whole_doubles_become_longs() -> None:
    assert cedar_context({"request": {"amount": 250.0, "list": [1.0, -3.0]}}) == {
        "request": {"amount": 250, "list": [1, -3]}
    }
    assert isinstance(cedar_context({"n": 250.0})["n"], int)


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (250.5, "not a whole number"),
        (float("nan"), "not a whole number"),
        (float("inf"), "not a whole number"),
        (2.0**60, "beyond 2^53"),
        (None, "null"),
        (2**64, "64-bit"),
    ],
)
def test_values_cedar_cannot_hold_deny_with_the_path_named(value: Any, named: str) -> None:
    # A permit that would allow any amount: only the value itself can deny.
    policies = bundle("permit (principal, action, resource) when { context.request has amount };")

    decision = evaluate(policies, request(value))

    assert not decision.allowed
    assert decision.errors == (decision.errors[0],)
    assert "context.request.amount" in decision.errors[0]
    assert named in decision.errors[0]


def test_an_entity_escape_in_the_context_cannot_forge_an_entity() -> None:
    # Cedar's JSON would read {"__entity": ...} as a reference to Agent::"boss".
    policies = bundle(
        'permit (principal, action, resource) when { context.request.approver == Agent::"boss" };'
    )
    forged = request(1.0, approver={"__entity": {"type": "Agent", "id": "boss"}})

    decision = evaluate(policies, forged)

    assert not decision.allowed
    assert "reserved" in decision.errors[0]


@pytest.mark.parametrize("field", ["principal", "issuer", "action", "resource"])
def test_an_empty_request_variable_denies(field: str) -> None:
    policies = bundle("permit (principal, action, resource);")
    fields = {"principal": "p", "issuer": "i", "action": "a", "resource": "r", field: ""}

    decision = evaluate(policies, PolicyRequest(context={}, **fields))

    assert not decision.allowed
    assert field in decision.errors[0]


def test_too_deep_a_context_denies() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(core.MAX_CONTEXT_DEPTH + 2):
        node["x"] = {}
        node = node["x"]
    policies = bundle("permit (principal, action, resource);")

    decision = evaluate(policies, PolicyRequest("p", "a", "r", deep, "i"))

    assert not decision.allowed
    assert "deeper" in decision.errors[0]


# --- faults inside Cedar ------------------------------------------------------------------


class _FakeResult:
    def __init__(self, decision: cedarpy.Decision, reasons: list[str]) -> None:
        self.decision = decision
        self.diagnostics = type("D", (), {"reasons": reasons, "errors": []})()


def test_an_exception_inside_cedar_denies(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("panic in the evaluator")

    monkeypatch.setattr(cedarpy, "is_authorized", boom)

    decision = evaluate(bundle("permit (principal, action, resource);"), request(1.0))

    assert not decision.allowed
    assert "panic in the evaluator" in decision.errors[0]


@pytest.mark.parametrize(
    ("fake", "named"),
    [
        (_FakeResult(cedarpy.Decision.Allow, []), "without a determining permit"),
        (_FakeResult(cedarpy.Decision.Allow, ["not-in-bundle"]), "without a determining permit"),
        (_FakeResult(cedarpy.Decision.NoDecision, []), "no decision"),
        (_FakeResult(cedarpy.Decision.Deny, ["p0.cedar:policy0"]), "not forbids"),
    ],
)
def test_an_allow_cedar_cannot_account_for_denies(
    monkeypatch: pytest.MonkeyPatch, fake: _FakeResult, named: str
) -> None:
    monkeypatch.setattr(cedarpy, "is_authorized", lambda *a, **k: fake)

    decision = evaluate(bundle("permit (principal, action, resource);"), request(1.0))

    assert not decision.allowed
    assert named in decision.errors[0]
