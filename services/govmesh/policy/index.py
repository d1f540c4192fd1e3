"""The scope index: evaluate a request only against the policies that can apply.

Cedar evaluates every policy of a set on every call, so its cost grows with
the set. A policy's scope (`principal == ...`, `action in [...]`,
`resource == ...`) decides, before any condition, whether it can apply to a
request; the index files each policy under the scope keys it names and, for a
request, collects only the buckets its principal, action and resource can hit,
plus the unscoped ones. Cedar then evaluates that subset: the same policies
that could be satisfied or could error over the full set, hence the same
decision, the same determining policies and the same errors (proven by the
differential test in tests/unit/test_policy_index.py).

Which scopes can match is decided as Cedar decides it for govmesh requests:
the entity store is empty, so `principal in X` and `resource in X` hold only
for X itself; actions may be grouped by the bundle's schema (`action
"payments.transfer" in ["payments"]`), so `action in X` holds for X and for
every action whose ancestors (read from the schema's action entities, as
Cedar builds them) include X. Anything the index does not understand is filed
as unscoped: evaluated for every request, never skipped.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cedarpy

#: An entity uid: (type, id), e.g. ("Action", "payments.transfer").
EntityUid = tuple[str, str]
#: A scope key: an entity uid, or None for "any".
ScopeKey = EntityUid | None
_BucketKey = tuple[ScopeKey, ScopeKey, ScopeKey]

_ANY: tuple[ScopeKey, ...] = (None,)

#: How many policies the cache of subset policy sets may hold in all.
DEFAULT_CACHE_WEIGHT = 200_000


@dataclass(frozen=True)
class PolicyScope:
    """The scope keys a policy is filed under, per request variable."""

    principal: tuple[ScopeKey, ...]
    action: tuple[ScopeKey, ...]
    resource: tuple[ScopeKey, ...]


def _uid(value: object) -> EntityUid | None:
    if (
        isinstance(value, dict)
        and isinstance(value.get("type"), str)
        and isinstance(value.get("id"), str)
    ):
        return (value["type"], value["id"])
    return None


def _entity_keys(constraint: object) -> tuple[ScopeKey, ...]:
    """Keys of a principal or resource constraint in Cedar's JSON policy form."""
    if not isinstance(constraint, dict):
        return _ANY
    op = constraint.get("op")
    if op in ("==", "in") and "entity" in constraint:
        uid = _uid(constraint["entity"])
        return (uid,) if uid is not None else _ANY
    if op == "is" and isinstance(constraint.get("in"), dict):
        uid = _uid(constraint["in"].get("entity"))
        return (uid,) if uid is not None else _ANY
    # "All", a bare "is", slots and anything newer: evaluate always.
    return _ANY


def _action_keys(constraint: object) -> tuple[ScopeKey, ...]:
    if not isinstance(constraint, dict):
        return _ANY
    op = constraint.get("op")
    if op in ("==", "in") and "entity" in constraint:
        uid = _uid(constraint["entity"])
        return (uid,) if uid is not None else _ANY
    if op == "in" and isinstance(constraint.get("entities"), list):
        uids = [_uid(entity) for entity in constraint["entities"]]
        if any(uid is None for uid in uids):
            return _ANY
        # `action in []` matches nothing; filing it nowhere would be exact,
        # filing it as unscoped is merely slower.
        return tuple(dict.fromkeys(uids)) or _ANY
    return _ANY


def policy_scope(est: Mapping[str, Any]) -> PolicyScope:
    """The scope keys of one policy, from Cedar's JSON (EST) form."""
    return PolicyScope(
        principal=_entity_keys(est.get("principal")),
        action=_action_keys(est.get("action")),
        resource=_entity_keys(est.get("resource")),
    )


def action_ancestors(schema: Any) -> dict[EntityUid, frozenset[EntityUid]]:
    """Every action of `schema` and its ancestors, transitively.

    Read from the action entities Cedar itself derives from the schema (the
    ones it adds to the entity store when evaluating with that schema).
    """
    entities = json.loads(str(cedarpy.Entities.from_json_str("[]", schema)))
    parents: dict[EntityUid, set[EntityUid]] = {}
    for entity in entities:
        uid = _uid(entity.get("uid"))
        if uid is None:
            continue
        parents[uid] = {p for p in map(_uid, entity.get("parents", [])) if p is not None}
    closed: dict[EntityUid, frozenset[EntityUid]] = {}
    for uid in parents:
        seen: set[EntityUid] = set()
        stack = list(parents[uid])
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            stack.extend(parents.get(node, ()))
        closed[uid] = frozenset(seen)
    return closed


class ScopeIndex:
    """Policies filed by scope; hands out the policy set a request needs.

    The subset policy sets are built on first use and cached (least recently
    used first out, bounded by the number of policies they hold in all).
    """

    def __init__(
        self,
        policies: Sequence[tuple[str, Mapping[str, Any], PolicyScope]],
        *,
        action_ancestors: Mapping[EntityUid, frozenset[EntityUid]],
        build: Callable[[Mapping[str, Mapping[str, Any]]], Any],
        full_set: Any = None,
        cache_weight: int = DEFAULT_CACHE_WEIGHT,
    ) -> None:
        self._est = {policy_id: est for policy_id, est, _ in policies}
        self._order = {policy_id: n for n, (policy_id, _, _) in enumerate(policies)}
        buckets: dict[_BucketKey, list[str]] = {}
        for policy_id, _, scope in policies:
            for p in scope.principal:
                for a in scope.action:
                    for r in scope.resource:
                        buckets.setdefault((p, a, r), []).append(policy_id)
        self._buckets = {key: tuple(ids) for key, ids in buckets.items()}
        self._ancestors = action_ancestors
        self._build = build
        self._full_set = full_set
        self._cache: OrderedDict[tuple[_BucketKey, ...], tuple[Any, int]] = OrderedDict()
        self._cache_weight = cache_weight
        self._weight = 0
        self.unscoped = len(self._buckets.get((None, None, None), ()))

    @property
    def bucket_count(self) -> int:
        return len(self._buckets)

    def _hits(
        self, principal: EntityUid, action: EntityUid, resource: EntityUid
    ) -> tuple[_BucketKey, ...]:
        actions: list[ScopeKey] = [action, *sorted(self._ancestors.get(action, ())), None]
        hits = []
        for p in (principal, None):
            for a in actions:
                for r in (resource, None):
                    key = (p, a, r)
                    if key in self._buckets:
                        hits.append(key)
        return tuple(hits)

    def candidates(
        self, principal: EntityUid, action: EntityUid, resource: EntityUid
    ) -> tuple[str, ...]:
        """The ids of the policies that can apply to the request, in bundle order."""
        ids = {i for key in self._hits(principal, action, resource) for i in self._buckets[key]}
        return tuple(sorted(ids, key=self._order.__getitem__))

    def policy_set(self, principal: EntityUid, action: EntityUid, resource: EntityUid) -> Any:
        """The cedarpy PolicySet holding exactly the candidates of the request."""
        hits = self._hits(principal, action, resource)
        cached = self._cache.get(hits)
        if cached is not None:
            self._cache.move_to_end(hits)
            return cached[0]
        ids = self.candidates(principal, action, resource)
        if len(ids) == len(self._est) and self._full_set is not None:
            policy_set, weight = self._full_set, 0
        else:
            policy_set, weight = self._build({i: self._est[i] for i in ids}), len(ids)
        self._cache[hits] = (policy_set, weight)
        self._weight += weight
        while self._weight > self._cache_weight and len(self._cache) > 1:
            _, (_, evicted) = self._cache.popitem(last=False)
            self._weight -= evicted
        return policy_set
