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
the entity store holds only the principal, a member of its issuer, so
`principal in X` holds for the principal itself and for its issuer (the
request names both; `principal == Issuer::"..."` filed with them is merely
evaluated in vain), and `resource in X` only for X itself; actions may be
grouped by the bundle's schema (`action "payments.transfer" in
["payments"]`), so `action in X` holds for X and for every action whose
ancestors (read from the schema's action entities, as Cedar builds them)
include X. Anything the index does not understand is filed as unscoped:
evaluated for every request, never skipped.
"""

from __future__ import annotations

import itertools
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

#: How many policies the cache of merged policy sets may hold in all.
DEFAULT_CACHE_WEIGHT = 200_000
#: Roughly how many bucket combinations not yet merged are remembered.
MAX_SEEN = 16_384
#: General buckets up to this size are folded into the sets of their specific buckets.
FOLD_LIMIT = 16


def _generalizations(key: _BucketKey) -> list[_BucketKey]:
    """The keys a request reaching `key` also reaches: some of its keys replaced by "any"."""
    p, a, r = key
    out: list[_BucketKey] = []
    for general in itertools.product((p, None), (a, None), (r, None)):
        if general != key and general not in out:
            out.append(general)
    return out


def _generality(key: _BucketKey) -> int:
    return sum(part is None for part in key)


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
    """Policies filed by scope; hands out the policy sets a request needs.

    Each bucket (policies sharing one principal, action and resource key) is
    a policy set built with the bundle. A request usually hits a few buckets
    (its own scope keys and the unscoped ones). Small general buckets are
    folded into the sets of the specific buckets that imply them, so one set
    usually holds every candidate; when a request still needs several sets,
    they are evaluated one by one, and a combination that keeps coming back
    gets one merged set, cached (least recently used first out, bounded by
    the number of policies the merged sets hold in all).
    """

    def __init__(
        self,
        policies: Sequence[tuple[str, str, PolicyScope]],
        *,
        action_ancestors: Mapping[EntityUid, frozenset[EntityUid]],
        build: Callable[[Mapping[str, str]], Any],
        full_set: Any = None,
        cache_weight: int = DEFAULT_CACHE_WEIGHT,
        merge_after: int = 16,
        fold_limit: int = FOLD_LIMIT,
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
        # A request that reaches a bucket also reaches each of its generalizations
        # (the same keys with some replaced by "any"): small ones are folded into
        # the bucket's own set, so that most requests need one evaluation.
        self._covers: dict[_BucketKey, frozenset[_BucketKey]] = {}
        self._sets: dict[_BucketKey, Any] = {}
        for key, ids in self._buckets.items():
            folded = [
                general
                for general in _generalizations(key)
                if general in self._buckets and len(self._buckets[general]) <= fold_limit
            ]
            self._covers[key] = frozenset((key, *folded))
            members = dict.fromkeys(ids)
            for general in folded:
                members.update(dict.fromkeys(self._buckets[general]))
            self._sets[key] = build({i: self._est[i] for i in members})
        self._empty = build({})
        self._merged: OrderedDict[tuple[_BucketKey, ...], tuple[Any, int]] = OrderedDict()
        self._seen: OrderedDict[tuple[_BucketKey, ...], int] = OrderedDict()
        self._cache_weight = cache_weight
        self._weight = 0
        self._merge_after = merge_after
        self.unscoped = len(self._buckets.get((None, None, None), ()))

    @property
    def bucket_count(self) -> int:
        return len(self._buckets)

    def _hits(
        self,
        principal: EntityUid,
        action: EntityUid,
        resource: EntityUid,
        principal_in: Sequence[EntityUid],
    ) -> tuple[_BucketKey, ...]:
        actions: list[ScopeKey] = [action, *sorted(self._ancestors.get(action, ())), None]
        principals: list[ScopeKey] = [principal, *dict.fromkeys(principal_in), None]
        hits = []
        for p in principals:
            for a in actions:
                for r in (resource, None):
                    key = (p, a, r)
                    if key in self._buckets:
                        hits.append(key)
        return tuple(hits)

    def candidates(
        self,
        principal: EntityUid,
        action: EntityUid,
        resource: EntityUid,
        *,
        principal_in: Sequence[EntityUid],
    ) -> tuple[str, ...]:
        """The ids of the policies that can apply to the request, in bundle order.

        `principal_in` are the entities the principal is a member of (its
        issuer): required, since a policy scoped to one of them must be found.
        """
        return self._ids(self._hits(principal, action, resource, principal_in))

    def _ids(self, hits: tuple[_BucketKey, ...]) -> tuple[str, ...]:
        ids = {i for key in hits for i in self._buckets[key]}
        return tuple(sorted(ids, key=self._order.__getitem__))

    def policy_sets(
        self,
        principal: EntityUid,
        action: EntityUid,
        resource: EntityUid,
        *,
        principal_in: Sequence[EntityUid],
    ) -> tuple[Any, ...]:
        """cedarpy PolicySets whose policies together are exactly the request's candidates.

        Never empty: with no candidate, an empty set, so that Cedar still
        checks the request itself (against the schema).
        """
        hits = self._hits(principal, action, resource, principal_in)
        if not hits:
            return (self._empty,)
        if len(hits) == 1:
            return (self._sets[hits[0]],)
        merged = self._merged.get(hits)
        if merged is not None:
            self._merged.move_to_end(hits)
            return (merged[0],)
        # Most specific first: its set covers the general buckets folded into it.
        covered: set[_BucketKey] = set()
        needed = []
        for key in sorted(hits, key=_generality):
            if key not in covered:
                needed.append(self._sets[key])
                covered |= self._covers[key]
        if len(needed) == 1:
            return (needed[0],)
        seen = self._seen.pop(hits, 0) + 1
        if seen < self._merge_after:
            self._seen[hits] = seen
            if len(self._seen) > 2 * MAX_SEEN:
                for _ in range(MAX_SEEN):
                    self._seen.popitem(last=False)
            return tuple(needed)
        return (self._merge(hits),)

    def _merge(self, hits: tuple[_BucketKey, ...]) -> Any:
        ids = self._ids(hits)
        if len(ids) == len(self._est) and self._full_set is not None:
            policy_set, weight = self._full_set, 0
        else:
            policy_set, weight = self._build({i: self._est[i] for i in ids}), len(ids)
        self._merged[hits] = (policy_set, weight)
        self._weight += weight
        while self._weight > self._cache_weight and len(self._merged) > 1:
            _, (_, evicted) = self._merged.popitem(last=False)
            self._weight -= evicted
        return policy_set
