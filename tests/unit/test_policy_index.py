"""The scope index decides exactly as the full policy set does.

The differential tests generate policy sets (every scope form Cedar has,
conditions that hold, fail or error, permits and forbids, with and without a
schema that groups actions) and requests, and require the indexed evaluation
to return the same decision, determining policies and errors as evaluating
every policy, and Cedar's own text-parsed set to agree with both.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import cedarpy
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from govmesh.policy.bundle import (
    BundleRejected,
    BundleSource,
    CompiledBundle,
    PolicyFile,
    SchemaFile,
    compile_bundle,
    policy_set_of,
)
from govmesh.policy.core import PolicyRequest, evaluate
from govmesh.policy.entities import request_entities
from govmesh.policy.index import ScopeIndex, action_ancestors

AGENTS = ["a0", "a1", "a2"]
ISSUERS = ["i0", "i1"]
RESOURCES = ["r0", "r1", "r2"]
ACTIONS = ["act0", "act1", "act2", "act3"]
GROUPS = ["grp0", "grp1"]

SCHEMA = """
entity Issuer; entity Agent in [Issuer]; entity User in [Issuer]; entity Resource;
type C = { request: { n: Long, flag?: Bool }, env: {}, attribution: {} };
action "grp0";
action "grp1" in ["grp0"];
action "act0" in ["grp1"] appliesTo { principal: [Agent, User], resource: [Resource], context: C };
action "act1" in ["grp0"] appliesTo { principal: [Agent, User], resource: [Resource], context: C };
action "act2" appliesTo { principal: [Agent, User], resource: [Resource], context: C };
action "act3" in ["grp1", "grp0"] appliesTo {
  principal: [Agent, User], resource: [Resource], context: C
};
"""


def _entity(kind: str, ids: list[str]) -> st.SearchStrategy[str]:
    return st.sampled_from(ids).map(lambda i: f'{kind}::"{i}"')


def principal_scopes() -> st.SearchStrategy[str]:
    agent = _entity("Agent", AGENTS)
    issuer = _entity("Issuer", ISSUERS)
    return st.one_of(
        st.just("principal"),
        agent.map(lambda e: f"principal == {e}"),
        agent.map(lambda e: f"principal in {e}"),
        st.just("principal is Agent"),
        st.just("principal is User"),
        agent.map(lambda e: f"principal is Agent in {e}"),
        st.just('principal == User::"a0"'),
        issuer.map(lambda e: f"principal in {e}"),
        issuer.map(lambda e: f"principal is Agent in {e}"),
        issuer.map(lambda e: f"principal is User in {e}"),
        issuer.map(lambda e: f"principal == {e}"),  # never an Agent: filed, never satisfied
    )


def resource_scopes() -> st.SearchStrategy[str]:
    resource = _entity("Resource", RESOURCES)
    return st.one_of(
        st.just("resource"),
        resource.map(lambda e: f"resource == {e}"),
        resource.map(lambda e: f"resource in {e}"),
        st.just("resource is Resource"),
        resource.map(lambda e: f"resource is Resource in {e}"),
    )


def action_scopes(*, grouped: bool) -> st.SearchStrategy[str]:
    concrete = _entity("Action", ACTIONS)
    anything = _entity("Action", ACTIONS + GROUPS) if grouped else concrete
    return st.one_of(
        st.just("action"),
        concrete.map(lambda e: f"action == {e}"),
        anything.map(lambda e: f"action in {e}"),
        st.lists(anything, min_size=1, max_size=3).map(lambda es: f"action in [{', '.join(es)}]"),
    )


#: Conditions valid under SCHEMA: hold or not by the request, or error (Long overflow).
TYPED_CONDITIONS = [
    "",
    "when { context.request.n > 5 }",
    "unless { context.request.n > 5 }",
    "when { context.request has flag && context.request.flag }",
    "when { context.request.n + 9223372036854775800 > 0 }",  # overflows for n > 7
    'when { resource == Resource::"r1" || context.request.n == 0 }',
]
#: Further conditions for sets without a schema: missing attributes and entities error.
UNTYPED_CONDITIONS = [
    *TYPED_CONDITIONS,
    "when { context.request.flag }",  # errors when flag is absent
    "when { context.request.missing == 1 }",
    "when { principal.level > 2 }",  # the entity store is empty: an error
]


@st.composite
def policy_sets(draw: st.DrawFn, *, grouped: bool) -> str:
    conditions = TYPED_CONDITIONS if grouped else UNTYPED_CONDITIONS
    count = draw(st.integers(min_value=1, max_value=14))
    policies = []
    for n in range(count):
        effect = draw(st.sampled_from(["permit", "permit", "forbid"]))
        scope = ", ".join(
            [
                draw(principal_scopes()),
                draw(action_scopes(grouped=grouped)),
                draw(resource_scopes()),
            ]
        )
        condition = draw(st.sampled_from(conditions))
        annotation = f'@id("named-{n}") ' if draw(st.booleans()) else ""
        policies.append(f"{annotation}{effect} ({scope}) {condition};")
    return "\n".join(policies)


@st.composite
def requests(draw: st.DrawFn, *, grouped: bool) -> PolicyRequest:
    request_context: dict[str, Any] = {"n": float(draw(st.integers(min_value=-3, max_value=12)))}
    if draw(st.booleans()):
        request_context["flag"] = draw(st.booleans())
    if grouped and draw(st.integers(0, 9)) == 0:
        request_context["n"] = "not a number"  # the schema refuses it: NoDecision
    actions = [*ACTIONS, *GROUPS, "unknown"] if grouped else [*ACTIONS, "unknown"]
    return PolicyRequest(
        principal=draw(st.sampled_from([*AGENTS, "someone-else", *ISSUERS])),
        issuer=draw(st.sampled_from([*ISSUERS, "i9", *AGENTS])),
        action=draw(st.sampled_from(actions)),
        resource=draw(st.sampled_from([*RESOURCES, "r9"])),
        context={"request": request_context, "env": {}, "attribution": {}},
    )


def _compile(text: str, schema: str | None) -> CompiledBundle:
    try:
        return compile_bundle(
            BundleSource(
                policies=(PolicyFile("p.cedar", text),),
                schema=SchemaFile("cedar", schema) if schema else None,
            )
        )
    except BundleRejected:
        assume(False)
        raise


def _cedar_text_decision(
    bundle: CompiledBundle, text: str, request: PolicyRequest
) -> tuple[str, list[str]]:
    """What Cedar says from the policy text itself (positional ids mapped to ours)."""
    ids = {f"policy{n}": policy.id for n, policy in enumerate(bundle.policies)}
    context = {
        "request": {
            k: int(v) if isinstance(v, float) else v for k, v in request.context["request"].items()
        },
        "env": {},
        "attribution": {},
    }
    result = cedarpy.is_authorized(
        {
            "principal": {"type": "Agent", "id": request.principal},
            "action": {"type": "Action", "id": request.action},
            "resource": {"type": "Resource", "id": request.resource},
            "context": context,
        },
        cedarpy.PolicySet.from_str(text),
        request_entities(request.principal, request.issuer),
        schema=bundle.schema,
    )
    return result.decision.value, sorted(ids[r] for r in result.diagnostics.reasons)


def _check(bundle: CompiledBundle, text: str, cases: list[PolicyRequest]) -> None:
    # The index as built, and one that folds nothing and merges early.
    unfolded = dataclasses.replace(
        bundle,
        index=ScopeIndex(
            [(p.id, p.est, p.scope) for p in bundle.policies],
            action_ancestors=action_ancestors(bundle.schema) if bundle.schema else {},
            build=policy_set_of,
            fold_limit=0,
            merge_after=2,
        ),
    )
    for request in cases:
        full = evaluate(bundle, request, indexed=False)
        # Seen again and again: the request's sets one by one, then merged and cached.
        for _ in range(5):
            assert evaluate(bundle, request) == full, request
            assert evaluate(unfolded, request) == full, request
        # Cedar on the text agrees on what was decided and why.
        decision, reasons = _cedar_text_decision(bundle, text, request)
        if not full.errors:
            assert decision == ("Allow" if full.allowed else "Deny")
            assert reasons == sorted(full.determining)
        else:
            assert not full.allowed


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=policy_sets(grouped=False),
    cases=st.lists(requests(grouped=False), min_size=1, max_size=12),
)
def test_indexed_equals_full_evaluation(text: str, cases: list[PolicyRequest]) -> None:
    _check(_compile(text, None), text, cases)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=policy_sets(grouped=True),
    cases=st.lists(requests(grouped=True), min_size=1, max_size=12),
)
def test_indexed_equals_full_evaluation_with_action_groups(
    text: str, cases: list[PolicyRequest]
) -> None:
    _check(_compile(text, SCHEMA), text, cases)


def test_action_groups_reach_policies_scoped_to_a_group() -> None:
    text = '@id("grp0-all") permit (principal, action in Action::"grp0", resource);'
    bundle = _compile(text, SCHEMA)
    request = PolicyRequest(
        "a0", "act0", "r0", {"request": {"n": 1.0}, "env": {}, "attribution": {}}, "i0"
    )

    decision = evaluate(bundle, request)

    assert decision.allowed
    assert decision.determining == ("grp0-all",)


def test_a_request_runs_only_the_policies_its_scope_can_hit() -> None:
    text = "\n".join(
        f'@id("r{n}") permit (principal, action == Action::"act{n % 4}", '
        f'resource == Resource::"r{n}");'
        for n in range(1000)
    )
    text += '\n@id("everyone") forbid (principal, action, resource) when { context.stop };'
    bundle = _compile(text, None)

    candidates = bundle.index.candidates(
        ("Agent", "a0"), ("Action", "act2"), ("Resource", "r42"), principal_in=(("Issuer", "i0"),)
    )

    assert candidates == ("r42", "everyone")
    decision = evaluate(
        bundle,
        PolicyRequest("a0", "act2", "r42", {"request": {}, "env": {}, "attribution": {}}, "i0"),
    )
    assert not decision.allowed  # the unscoped forbid errors (no context.stop): still evaluated
    assert "everyone" in decision.errors[0]


def test_policies_scoped_to_an_issuer_are_candidates_for_its_agents_only() -> None:
    text = (
        '@id("all") permit (principal, action, resource);\n'
        '@id("not-i0") forbid (principal in Issuer::"i0", action, resource);\n'
        '@id("i1-only") permit (principal is Agent in Issuer::"i1", action, resource);'
    )
    bundle = _compile(text, None)

    def candidates(issuer: str) -> tuple[str, ...]:
        return bundle.index.candidates(
            ("Agent", "a0"),
            ("Action", "act0"),
            ("Resource", "r0"),
            principal_in=(("Issuer", issuer),),
        )

    assert candidates("i0") == ("all", "not-i0")
    assert candidates("i1") == ("all", "i1-only")
    denied = evaluate(
        bundle,
        PolicyRequest("a0", "act0", "r0", {"request": {}, "env": {}, "attribution": {}}, "i0"),
    )
    assert not denied.allowed and denied.determining == ("not-i0",)
