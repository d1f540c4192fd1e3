"""Step 1 of a decision: is the request one that can be decided on at all.

Checked before any peer is asked: names, sizes and required fields. A
request that fails here is answered DENY MALFORMED_REQUEST.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from govmesh.artifacts.canonical import json_depth
from govmesh.artifacts.names import InvalidName, check_action, check_resource
from govmesh.artifacts.structs import struct_to_dict
from govmesh.runtime.errors import InvalidInput
from govmesh.v1 import engine_pb2

MAX_CONTEXT_BYTES = 16 * 1024
MAX_CONTEXT_DEPTH = 16
MAX_ARTIFACT_CHARS = 16 * 1024


class MalformedRequest(InvalidInput, ValueError):
    """A request that cannot be decided on; answered DENY MALFORMED_REQUEST."""


@dataclass(frozen=True)
class UnreadableRequest:
    """Bytes that did not parse as an AuthorizeRequest; decided like any malformed request."""

    detail: str


def validate(request: engine_pb2.AuthorizeRequest) -> dict[str, Any]:
    """Check names, sizes and required fields; return the context as plain JSON.

    Raises MalformedRequest with the first problem found.
    """
    # Names another spelling could stand for are refused here, before anyone
    # is asked: the grammar is govmesh.artifacts.names, shared by every reader.
    try:
        check_action(request.action)
        check_resource(request.resource)
    except InvalidName as exc:
        raise MalformedRequest(str(exc)) from None
    for name in ("mandate", "proof", "attestation"):
        value = getattr(request, name)
        if len(value) > MAX_ARTIFACT_CHARS:
            raise MalformedRequest(f"{name} is longer than {MAX_ARTIFACT_CHARS} characters")
        if value and not value.isascii():
            raise MalformedRequest(f"{name} is not a compact JWS")
    if request.context.ByteSize() > MAX_CONTEXT_BYTES:
        raise MalformedRequest(f"context is larger than {MAX_CONTEXT_BYTES} bytes")
    try:
        context = struct_to_dict(request.context)
    except (ValueError, TypeError) as exc:
        raise MalformedRequest(f"context is not JSON: {exc}") from None
    if json_depth(context, MAX_CONTEXT_DEPTH) > MAX_CONTEXT_DEPTH:
        raise MalformedRequest(f"context is nested deeper than {MAX_CONTEXT_DEPTH}")
    return context
