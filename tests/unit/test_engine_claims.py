"""What the engine reads from the artifacts before verification, and the readings it keeps."""

from __future__ import annotations

import pytest

from govmesh.artifacts.jws import parse_compact
from govmesh.engine import claims
from govmesh.engine.claims import CLAIMS_MEMO_ENTRIES, claimed_inputs
from tests.unit.engine_fakes import ISSUER, SUBJECT, authorize_request, jws

MANDATE = jws({"iss": ISSUER, "sub": SUBJECT, "att": {"session": "s1"}})


def attestation(cluster: str) -> str:
    return jws({"iss": "https://attestor.example", "env": {"cluster": cluster}})


@pytest.fixture(autouse=True)
def fresh_memo() -> None:
    claims._claimed.cache_clear()


def test_the_same_artifacts_are_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    reads = []

    def counting(token: str) -> object:
        reads.append(token)
        return parse_compact(token)

    monkeypatch.setattr(claims, "parse_compact", counting)
    request = authorize_request(mandate=MANDATE, attestation=attestation("prod-eu-1"))

    first = claimed_inputs(request)
    again = claimed_inputs(authorize_request(mandate=MANDATE, attestation=request.attestation))

    assert first is not None and again is first
    assert first.env == {"cluster": "prod-eu-1"} and first.subject == SUBJECT
    assert len(reads) == 2  # the mandate and the attestation, once each


def test_a_reading_is_kept_for_the_pair_not_for_the_mandate_alone() -> None:
    eu = claimed_inputs(authorize_request(mandate=MANDATE, attestation=attestation("prod-eu-1")))
    us = claimed_inputs(authorize_request(mandate=MANDATE, attestation=attestation("prod-us-1")))
    unreadable = claimed_inputs(authorize_request(mandate=MANDATE, attestation="not.a.jws"))
    bare = claimed_inputs(authorize_request(mandate=MANDATE, attestation=""))

    assert eu is not None and eu.env == {"cluster": "prod-eu-1"}
    assert us is not None and us.env == {"cluster": "prod-us-1"}
    assert unreadable is None  # an unreadable attestation is not an absent one
    assert bare is not None and bare.env == {}


def test_the_readings_kept_are_bounded() -> None:
    for n in range(CLAIMS_MEMO_ENTRIES + 50):
        claimed_inputs(authorize_request(mandate=MANDATE, attestation=attestation(f"c{n}")))

    assert claims._claimed.cache_info().currsize == CLAIMS_MEMO_ENTRIES
