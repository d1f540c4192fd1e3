"""What the artifacts claim before verification: the input policy is asked about.

Read with the one strict JWS reader and never trusted on its own: a decision
uses it only when verification reports the same subject, issuer, environment
and attribution from verified artifacts (`consistency.check_verification`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from govmesh.artifacts.canonical import CanonicalizationError, canonical_json
from govmesh.artifacts.jws import TokenError, parse_compact
from govmesh.v1 import engine_pb2

#: SPIFFE IDs are at most 2048 bytes; a longer subject is not one govmesh serves.
MAX_SUBJECT_CHARS = 2048
#: An issuer is a URL from the trust file; one this long is none of them.
MAX_ISSUER_CHARS = 2048
#: Readings of recent (mandate, attestation) pairs kept: an agent presents the
#: same two with every request. With each artifact at most 16 Ki characters
#: (requests.MAX_ARTIFACT_CHARS), they hold at most 8 MiB of token text.
CLAIMS_MEMO_ENTRIES = 256


@dataclass(frozen=True)
class Claimed:
    """What the artifacts say before verification: the input policy is asked about.

    Never trusted on its own: a decision uses it only when verification
    reports the same subject, issuer, environment and attribution from
    verified artifacts. One reading is shared by every decision that
    presents the same artifacts: `env` and `attribution` are read, never
    changed.
    """

    subject: str
    issuer: str
    env: dict[str, Any]
    attribution: dict[str, Any]


def _jws_payload(token: str) -> Mapping[str, Any] | None:
    # The one strict reader verification uses too: claims it would refuse to
    # read (duplicate members, another spelling of a segment, numbers beyond
    # I-JSON, deep nesting) are never shown to policy.
    try:
        return parse_compact(token).payload
    except TokenError:
        return None


def claimed_inputs(request: engine_pb2.AuthorizeRequest) -> Claimed | None:
    """The subject, issuer, attested environment and attribution the artifacts claim.

    None when the mandate is absent or unreadable, or an attestation is
    present but unreadable: policy is then not asked, and the decision cannot
    be an ALLOW.
    """
    return _claimed(request.mandate, request.attestation)


@functools.lru_cache(maxsize=CLAIMS_MEMO_ENTRIES)
def _claimed(mandate_token: str, attestation_token: str) -> Claimed | None:
    # What the two tokens claim is a function of their text alone (nothing
    # here is checked against a clock or a key), so a reading is kept.
    mandate = _jws_payload(mandate_token) if mandate_token else None
    if mandate is None or not all(
        isinstance(mandate.get(name), str) and mandate[name] for name in ("sub", "iss")
    ):
        return None
    attribution = mandate.get("att", {})
    if not isinstance(attribution, dict):
        attribution = {}
    env: dict[str, Any] = {}
    if attestation_token:
        attestation = _jws_payload(attestation_token)
        if attestation is None:
            return None  # an attestation verification would not read is not an absent one
        observed = attestation.get("env")
        if isinstance(observed, dict):
            env = observed
    claimed = Claimed(
        subject=mandate["sub"], issuer=mandate["iss"], env=env, attribution=attribution
    )
    if len(claimed.subject) > MAX_SUBJECT_CHARS or len(claimed.issuer) > MAX_ISSUER_CHARS:
        return None
    try:
        # What cannot be canonical JSON (lone surrogates, integers past 2^53)
        # can neither reach policy as a Struct nor the log as an entry.
        canonical_json(
            {"sub": claimed.subject, "iss": claimed.issuer, "env": env, "att": attribution}
        )
    except CanonicalizationError:
        return None
    return claimed
