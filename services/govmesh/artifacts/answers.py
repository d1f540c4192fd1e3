"""How large a peer's answer may be: the bounds verification and policy build within.

The engine sends the calls of concurrent decisions to a peer in one batch, and
the batch's answer must fit in one gRPC message. A request's own size is
bounded by the engine's limits, but its answer could be far larger: details
that quote what the caller sent, evaluation errors that quote context keys,
the same text again in the message. So that one request can never push the
answer of a batch past the limit and fail every other member, each answer
has a bound known before it is asked (`verify_answer_bound`,
`evaluate_answer_bound`): peers clip what they say to fit it, and answer a
fixed-size deny if an answer would still exceed it; the engine's batcher adds
up these bounds, not the requests, when it fills a batch.

What a caller controls is quoted only up to `MAX_QUOTED_CHARS` (`quoted`);
every detail, error and message is clipped to a byte bound (`clip`).
"""

from __future__ import annotations

import reprlib
from collections.abc import Iterable

from govmesh.v1 import policy_pb2, verification_pb2

#: The most characters of a caller-controlled value a detail quotes.
MAX_QUOTED_CHARS = 64
#: The most UTF-8 bytes of one check detail or one evaluation error.
MAX_DETAIL_BYTES = 256
#: The most UTF-8 bytes of an answer's message.
MAX_MESSAGE_TEXT_BYTES = 1024
#: The most UTF-8 bytes of a list of errors or of determining policies, framing included.
MAX_LIST_BYTES = 2048
#: Protobuf framing of one repeated string: its tag and a length of up to 3 bytes.
_ITEM_FRAMING = 4
#: Kept free in a clipped list for the note on what was left out.
_NOTE_BYTES = 64

#: Everything in a VerifyResponse but the echoed digest and the claims: eleven
#: checks with clipped details, the clipped message, the trust version, with room.
VERIFY_ANSWER_BASE = 5 * 1024
#: Claims are read from the mandate and the attestation; as a protobuf Struct,
#: JSON grows at most 5.5 times (a list of one-digit numbers), and JSON is 3/4
#: of its base64url text, so 5 bytes per token character always suffice.
CLAIMS_PER_TOKEN_CHAR = 5
#: The proof contributes its jti (at most 256 characters) to the claims.
PROOF_CLAIMS_BYTES = 1024
#: Everything in an EvaluateResponse but the echoed digest: the bundle, clipped
#: lists of errors and determining policies for the active and shadow bundles,
#: the clipped message, with room.
EVALUATE_ANSWER_BASE = 10 * 1024

_ELLIPSIS = "…"
_REPR = reprlib.Repr()
_REPR.maxstring = MAX_QUOTED_CHARS
_REPR.maxother = MAX_QUOTED_CHARS
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = 4
_REPR.maxlevel = 2


def clip(text: str, limit: int = MAX_DETAIL_BYTES) -> str:
    """`text` in at most `limit` UTF-8 bytes, cut short with an ellipsis.

    Characters protobuf cannot carry (lone surrogates) become backslash
    escapes, so that the clipped text can always be sent.
    """
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return data.decode("utf-8")
    room = limit - len(_ELLIPSIS.encode("utf-8"))
    return data[: max(room, 0)].decode("utf-8", "ignore") + _ELLIPSIS


def quoted(value: object) -> str:
    """A caller-controlled value for a detail: its repr, at most about MAX_QUOTED_CHARS.

    reprlib does bounded work whatever the value (a long string, a deep
    structure), and repr escapes whatever is not printable.
    """
    return clip(_REPR.repr(value), 2 * MAX_QUOTED_CHARS)


def clip_list(items: Iterable[str], limit: int = MAX_LIST_BYTES) -> list[str]:
    """As many of `items`, each clipped to MAX_DETAIL_BYTES, as fit in `limit` bytes.

    When some are left out, the last kept item says how many.
    """
    items = list(items)
    kept: list[str] = []
    used = 0
    for n, item in enumerate(items):
        text = clip(item)
        cost = len(text.encode("utf-8")) + _ITEM_FRAMING
        # Room is always kept for the note on what was left out.
        if used + cost > limit - _NOTE_BYTES:
            kept.append(f"{_ELLIPSIS} and {len(items) - n} more")
            break
        kept.append(text)
        used += cost
    return kept


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def verify_answer_bound(request: verification_pb2.VerifyRequest) -> int:
    """The most bytes verification's answer to `request` may take."""
    return (
        VERIFY_ANSWER_BASE
        + _utf8_len(request.request_digest)
        + PROOF_CLAIMS_BYTES
        + CLAIMS_PER_TOKEN_CHAR * (len(request.mandate) + len(request.attestation))
    )


def evaluate_answer_bound(request: policy_pb2.EvaluateRequest) -> int:
    """The most bytes policy's answer to `request` may take."""
    return EVALUATE_ANSWER_BASE + _utf8_len(request.request_digest)
