"""Reading the claims of mandates, proofs and attestations, and what their values mean.

Pure functions of a token's payload: each reader returns the claim in the
one form the checks use, or None when it is absent or ill-typed, and the
`*_claim_problems` functions say why a token's required claims are unusable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from govmesh.artifacts import AUDIENCE
from govmesh.artifacts.canonical import CanonicalizationError, canonical_json
from govmesh.artifacts.entries import text_problem

#: The longest proof jti accepted.
MAX_JTI_CHARS = 256
#: The latest time a claim may name, 9999-12-31T23:59:59Z, in seconds since 1970.
MAX_NUMERIC_DATE = 253_402_300_799


def nonempty_string(value: object) -> str | None:
    """`value` when it is a string of at least one character, else None."""
    return value if isinstance(value, str) and value else None


def numeric_date(value: object) -> float | None:
    """A time claim (iat, nbf, exp: an RFC 7519 NumericDate) in seconds, or None.

    The one reader of every time claim: a number, not a bool, from 1970 to the
    end of year 9999. Outside that range it is no time a mandate means, and
    sums with the clock and windows would lose exactness (a float of 1e300)
    or fail outright, so such a claim is unreadable, never compared.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not 0 <= value <= MAX_NUMERIC_DATE:  # NaN fails this too
        return None
    return float(value)


def time_problem(payload: Mapping[str, Any], name: str) -> str:
    """Why the time claim `name` is unreadable (for a claim `numeric_date` refused)."""
    if name not in payload:
        return f"{name} missing"
    return f"{name} is not a time in seconds from 1970 to 9999"


def _time_problems(
    payload: Mapping[str, Any], required: Iterable[str], optional: Iterable[str] = ()
) -> list[str]:
    names = [*required, *(n for n in optional if n in payload)]
    return [time_problem(payload, n) for n in names if numeric_date(payload.get(n)) is None]


def cnf_jkt(payload: Mapping[str, Any]) -> str | None:
    """The thumbprint of the key a token is bound to (cnf.jkt), or None."""
    cnf = payload.get("cnf")
    return nonempty_string(cnf.get("jkt")) if isinstance(cnf, dict) else None


def audience_is_govmesh(value: object) -> bool:
    """Whether an aud claim is govmesh's audience, or a list of strings holding it."""
    if isinstance(value, str):
        return value == AUDIENCE
    return isinstance(value, list) and all(isinstance(a, str) for a in value) and AUDIENCE in value


def scope_patterns(payload: Mapping[str, Any]) -> list[tuple[str, str]] | None:
    """A mandate's scope as (action, resource) glob patterns, or None when unreadable."""
    entries = payload.get("scope")
    if not isinstance(entries, list):
        return None
    scope = []
    for entry in entries:
        # Exactly these two members: an unknown member could be a constraint
        # this verifier would silently drop, widening the mandate.
        if not isinstance(entry, dict) or set(entry) != {"action", "resource"}:
            return None
        action, resource = nonempty_string(entry["action"]), nonempty_string(entry["resource"])
        if action is None or resource is None:
            return None
        scope.append((action, resource))
    return scope


def object_claim(payload: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """The claim `name` when it is a JSON object, else None."""
    value = payload.get(name)
    return value if isinstance(value, dict) else None


def measurement_list(payload: Mapping[str, Any]) -> list[str] | None:
    """An attestation's measurements when they are a list of strings, else None."""
    value = payload.get("measurements")
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        return None
    return value


def _unrecordable(payload: Mapping[str, Any], names: tuple[str, ...]) -> list[str]:
    # Claims the decision log records: one lineage could not store (a NUL,
    # a control character, a value too long to index) would leave a
    # decision that cannot be logged, so it does not verify.
    problems = []
    for name in names:
        value = nonempty_string(payload.get(name))
        problem = None if value is None else text_problem(value)
        if problem is not None:
            problems.append(f"{name} {problem}")
    return problems


def mandate_claim_problems(payload: Mapping[str, Any]) -> list[str]:
    """What is missing, ill-typed or unrecordable among a mandate's required claims."""
    problems = [
        f"{n} missing" for n in ("iss", "sub", "jti") if nonempty_string(payload.get(n)) is None
    ]
    problems += _unrecordable(payload, ("iss", "sub", "jti"))
    if "aud" not in payload:
        problems.append("aud missing")
    problems += _time_problems(payload, ("iat", "nbf", "exp"))
    if scope_patterns(payload) is None:
        problems.append("scope is not a list of {action, resource} patterns")
    if cnf_jkt(payload) is None:
        problems.append("cnf.jkt missing")
    if object_claim(payload, "env") is None:
        problems.append("env binding missing or not an object")
    if "att" in payload and object_claim(payload, "att") is None:
        problems.append("att is not an object")
    return problems


def attestation_claim_problems(payload: Mapping[str, Any]) -> list[str]:
    """What is missing, ill-typed or unrecordable among an attestation's required claims."""
    problems = [f"{n} missing" for n in ("iss", "sub") if nonempty_string(payload.get(n)) is None]
    problems += _unrecordable(payload, ("iss", "sub"))
    problems += _time_problems(payload, ("iat", "exp"), optional=("nbf",))
    if cnf_jkt(payload) is None:
        problems.append("cnf.jkt missing")
    if object_claim(payload, "env") is None:
        problems.append("env missing or not an object")
    if measurement_list(payload) is None:
        problems.append("measurements is not a list of strings")
    return problems


def proof_jti(payload: Mapping[str, Any]) -> str | None:
    """A proof's jti, or None when it is missing or longer than MAX_JTI_CHARS."""
    jti = nonempty_string(payload.get("jti"))
    return None if jti is None or len(jti) > MAX_JTI_CHARS else jti


def proof_claim_problems(payload: Mapping[str, Any]) -> list[str]:
    """What is missing, ill-typed or unrecordable among a proof's required claims."""
    problems = _unrecordable(payload, ("jti",))
    if proof_jti(payload) is None:
        problems.append(f"jti missing or longer than {MAX_JTI_CHARS} characters")
    problems += _time_problems(payload, ("iat",))
    problems += [f"{n} missing" for n in ("req", "ath") if nonempty_string(payload.get(n)) is None]
    return problems


def glob_match(pattern: str, text: str) -> bool:
    """Whether `text` matches `pattern`, where `*` matches any run of characters.

    `*` is the only special character. Linear in practice: the literal parts
    between stars are found left to right, which is exact for star-only globs.
    """
    parts = pattern.split("*")
    if len(parts) == 1:
        return pattern == text
    head, *middle, tail = parts
    if len(text) < len(head) + len(tail) or not text.startswith(head) or not text.endswith(tail):
        return False
    position, end = len(head), len(text) - len(tail)
    for part in middle:
        if not part:
            continue
        found = text.find(part, position, end)
        if found < 0:
            return False
        position = found + len(part)
    return True


def json_equal(a: object, b: object) -> bool:
    """Equality of JSON values as JSON (1 == 1.0, True != 1); unrepresentable is unequal."""
    if type(a) is str and type(b) is str:
        return a == b  # the common case, without serializing
    try:
        return canonical_json(a) == canonical_json(b)
    except CanonicalizationError:
        return False


def binding_satisfied(want: object, observed: object) -> bool:
    """One env binding claim: equality, or any of a list's values."""
    if isinstance(want, list):
        return any(json_equal(option, observed) for option in want)
    return json_equal(want, observed)
