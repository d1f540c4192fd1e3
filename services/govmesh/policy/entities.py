"""The Cedar entities of a govmesh request (DESIGN.md section 5).

The principal is `Agent::"<mandate sub>"`, a member of `Issuer::"<mandate
iss>"`; action and resource are `Action::"<action>"` and
`Resource::"<resource>"`. The entity store of a request holds the principal
and its issuer, nothing else: govmesh has no entity attributes.
"""

from __future__ import annotations

from typing import Any

PRINCIPAL_TYPE = "Agent"
ISSUER_TYPE = "Issuer"
ACTION_TYPE = "Action"
RESOURCE_TYPE = "Resource"


def uid(entity_type: str, entity_id: str) -> dict[str, str]:
    """An entity uid in Cedar's JSON form."""
    return {"type": entity_type, "id": entity_id}


def request_entities(principal: str, issuer: str) -> list[dict[str, Any]]:
    """The entity store of a request: the principal, a member of its issuer."""
    issuer_uid = uid(ISSUER_TYPE, issuer)
    return [
        {"uid": uid(PRINCIPAL_TYPE, principal), "attrs": {}, "parents": [issuer_uid]},
        {"uid": issuer_uid, "attrs": {}, "parents": []},
    ]
