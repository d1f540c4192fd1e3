"""Check names and the deny-reason precedence shared by verification and the engine.

A decision lists every failed check, and names exactly one primary reason: the
failed check whose reason comes first in REASON_PRECEDENCE. The order is part
of the public contract:

1. the request itself is malformed;
2. what the caller presented, in the order verification establishes it
   (present, authentic, current, fresh, bound to its environment and runtime);
3. what policy decided on it;
4. why govmesh could not finish deciding (peers, lineage, itself).

Definitive reasons outrank inconclusive ones: a request that policy forbids is
reported as POLICY_MISMATCH even when a peer also timed out, because no answer
from that peer could have turned it into an ALLOW.

That is the decision's reason, as lineage records it. The answer to a caller
whose artifacts did not verify names only the failures that are not policy's,
and its reason is the first of those in this order
(`govmesh.engine.core.Engine._disclosed`): policy's answer is never an oracle
for someone without valid credentials.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import TypeAlias

from govmesh.v1 import common_pb2

#: A DenyReason value, as protobuf types it.
Reason: TypeAlias = common_pb2.DenyReason.ValueType

REASON_PRECEDENCE: tuple[Reason, ...] = (
    common_pb2.MALFORMED_REQUEST,
    common_pb2.MISSING_AUTHORIZATION,
    common_pb2.INVALID_VERIFICATION,
    common_pb2.EXPIRED_AUTHORIZATION,
    common_pb2.REPLAY_DETECTED,
    common_pb2.ENVIRONMENT_MISMATCH,
    common_pb2.RUNTIME_INTEGRITY_FAILURE,
    common_pb2.POLICY_MISMATCH,
    common_pb2.INCONSISTENT_ANSWERS,
    common_pb2.PEER_TIMEOUT,
    common_pb2.PEER_UNAVAILABLE,
    common_pb2.LINEAGE_UNAVAILABLE,
    common_pb2.INTERNAL_ERROR,
)
_RANK: dict[int, int] = {int(reason): rank for rank, reason in enumerate(REASON_PRECEDENCE)}


def primary_reason(reasons: Iterable[int]) -> Reason:
    """The reason that comes first in REASON_PRECEDENCE.

    An unknown or unspecified reason ranks as INTERNAL_ERROR; an empty input is
    an error, never "no reason" (a failed decision always has one).
    """
    last = len(REASON_PRECEDENCE) - 1
    ranked = [_RANK.get(int(reason), last) for reason in reasons]
    if not ranked:
        raise ValueError("primary_reason of no reasons")
    return REASON_PRECEDENCE[min(ranked)]


class Check(StrEnum):
    """The checks verification reports, each with its own verdict.

    A check passes only when it was evaluated on its inputs and held; a check
    whose input is absent or unreadable fails with the reason of that input
    (MISSING_AUTHORIZATION or INVALID_VERIFICATION), never passes by default.
    """

    PRESENCE = "presence"  # mandate and proof present
    DIGEST = "digest"  # request_digest recomputed from action, resource and context
    SIGNATURE = "signature"  # mandate: form, typ, kid, pinned alg, signature, required claims
    ISSUER = "issuer"  # mandate issuer trusted, audience is govmesh
    WINDOW = "window"  # exp / nbf / iat of mandate, proof and attestation, within the skew
    POP = "pop"  # proof: form, typ, alg, signature, jwk thumbprint == cnf.jkt, req, ath
    REPLAY = "replay"  # proof jti not seen before within the proof window, by any replica
    ATTESTATION = "attestation"  # attestation (when presented): form, typ, attestor, signature
    ENVIRONMENT = "environment"  # attestation names the same sub and cnf.jkt, env satisfies binding
    RUNTIME = "runtime"  # every measurement allowed; at least one under an env binding
    SCOPE = "scope"  # action and resource inside one of the mandate's scope entries


#: The checks every verification answer must report, each exactly once.
REQUIRED_CHECKS: tuple[Check, ...] = tuple(Check)
