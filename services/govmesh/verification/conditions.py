"""What the request and the tokens' claims must satisfy: steps 1, 2, 4, 5, 8, 9 and 10.

Each step evaluates what the tokens say, whether or not their signatures
verified (steps 3, 6 and 7 decide that), so that every problem is reported;
each returns its check's Verdict. Step 5 also returns until when the proof
may be accepted, which decides whether step 11 may record its nonce.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from govmesh.artifacts.answers import quoted
from govmesh.artifacts.canonical import CanonicalizationError, request_digest
from govmesh.artifacts.checks import Check
from govmesh.artifacts.names import is_action, is_resource
from govmesh.artifacts.trust import Trust
from govmesh.verification.claims import (
    audience_is_govmesh,
    binding_satisfied,
    cnf_jkt,
    glob_match,
    measurement_list,
    numeric_date,
    object_claim,
    scope_patterns,
    time_problem,
)
from govmesh.verification.results import (
    ENV_MISMATCH,
    EXPIRED,
    INTERNAL,
    INVALID,
    MALFORMED,
    MISSING,
    OUT_OF_SCOPE,
    RUNTIME,
    Problem,
    Verdict,
    VerificationInput,
)
from govmesh.verification.signatures import Presented


def check_presence(mandate: Presented, proof: Presented) -> Verdict:
    """1. A mandate and a proof are present."""
    missing = [p.kind for p in (mandate, proof) if p.absent]
    if missing:
        return Verdict(Check.PRESENCE, ((MISSING, "no " + " and no ".join(missing)),))
    return Verdict(Check.PRESENCE)


def check_digest(request: VerificationInput) -> Verdict:
    """2. request_digest is the digest of the request's action, resource and context."""
    check = Check.DIGEST
    if request.context is None:
        return Verdict(check, ((MALFORMED, "context is not JSON"),))
    try:
        digest = request_digest(request.action, request.resource, request.context)
    except CanonicalizationError as exc:
        return Verdict(check, ((MALFORMED, f"context has no canonical form: {exc}"),))
    if not request.request_digest:
        return Verdict(check, ((MALFORMED, "no request_digest"),))
    if digest != request.request_digest:
        detail = "request_digest does not match action, resource and context"
        return Verdict(check, ((INVALID, detail),))
    return Verdict(check)


def check_issuer(mandate: Presented, trust: Trust | None) -> Verdict:
    """4. The mandate's issuer is trusted for its subject, and its audience is govmesh."""
    check = Check.ISSUER
    payload = mandate.payload
    if payload is None:
        return Verdict(check, (mandate.why_unusable(),))
    if trust is None:
        return Verdict(check, ((INTERNAL, "trust configuration unusable"),))
    problems: list[Problem] = []
    iss, sub = payload.get("iss"), payload.get("sub")
    issuer = trust.issuers.get(iss) if isinstance(iss, str) else None
    if issuer is None:
        problems.append((INVALID, f"issuer {quoted(iss)} is not trusted"))
    elif not isinstance(sub, str) or not issuer.may_issue_for(sub):
        # A subject names one agent whoever signs: another issuer's subject
        # would reach the policies written for that agent.
        problems.append((INVALID, f"issuer {quoted(iss)} may not issue for subject {quoted(sub)}"))
    if not audience_is_govmesh(payload.get("aud")):
        problems.append((INVALID, f"audience {quoted(payload.get('aud'))} is not govmesh"))
    return Verdict(check, tuple(problems))


@dataclass(frozen=True)
class Windows:
    """Step 5's finding.

    `proof_expires_at` is when the proof stops being acceptable anywhere (its
    iat, plus the proof window and the clock skew), when it is inside its
    window now; None when it is not, and then its nonce is never recorded.
    """

    verdict: Verdict
    proof_expires_at: float | None = None


def _window_problems(
    token: Presented, now: float, clock_skew_s: float, *, exp: bool, nbf: bool, nbf_required: bool
) -> Iterable[Problem]:
    payload = token.payload
    if payload is None:
        yield token.why_unusable()
        return
    kind = token.kind
    iat = numeric_date(payload.get("iat"))
    if iat is None:
        yield INVALID, f"{kind} {time_problem(payload, 'iat')}"
    elif iat > now + clock_skew_s:
        yield EXPIRED, f"{kind} issued in the future"
    if exp:
        expires = numeric_date(payload.get("exp"))
        if expires is None:
            yield INVALID, f"{kind} {time_problem(payload, 'exp')}"
        elif now >= expires + clock_skew_s:
            yield EXPIRED, f"{kind} expired"
    if nbf and (nbf_required or "nbf" in payload):
        not_before = numeric_date(payload.get("nbf"))
        if not_before is None:
            yield INVALID, f"{kind} {time_problem(payload, 'nbf')}"
        elif now < not_before - clock_skew_s:
            yield EXPIRED, f"{kind} not yet valid"


def check_windows(
    mandate: Presented,
    proof: Presented,
    attestation: Presented,
    now: float,
    *,
    clock_skew_s: float,
    proof_window_s: float,
) -> Windows:
    """5. Every token is inside its validity window, the proof no older than the proof window."""
    problems = list(
        _window_problems(mandate, now, clock_skew_s, exp=True, nbf=True, nbf_required=True)
    )
    proof_problems = list(
        _window_problems(proof, now, clock_skew_s, exp=False, nbf=False, nbf_required=False)
    )
    proof_expires_at = None
    if not proof_problems and proof.payload is not None:
        iat = numeric_date(proof.payload.get("iat"))
        if iat is not None and iat < now - proof_window_s:
            proof_problems.append((EXPIRED, f"proof older than {proof_window_s:g} s"))
        elif iat is not None:
            proof_expires_at = iat + proof_window_s + clock_skew_s
    problems += proof_problems
    if not attestation.absent:
        problems += _window_problems(
            attestation, now, clock_skew_s, exp=True, nbf=True, nbf_required=False
        )
    return Windows(Verdict(Check.WINDOW, tuple(problems)), proof_expires_at)


def check_environment(mandate: Presented, attestation: Presented, trust: Trust | None) -> Verdict:
    """8. The attestation is for the mandate's subject and key, and satisfies its env binding."""
    check = Check.ENVIRONMENT
    if mandate.payload is None:
        return Verdict(check, (mandate.why_unusable(),))
    binding = object_claim(mandate.payload, "env")
    if binding is None:
        return Verdict(check, ((INVALID, "mandate env binding missing or not an object"),))
    if attestation.absent:
        if binding:
            detail = f"mandate binds {', '.join(sorted(binding))}; no attestation presented"
            return Verdict(check, ((ENV_MISMATCH, detail),))
        return Verdict(check)
    attested = attestation.payload
    if attested is None:
        return Verdict(check, (attestation.why_unusable(),))
    problems: list[Problem] = []
    if attested.get("sub") != mandate.payload.get("sub"):
        problems.append((ENV_MISMATCH, "attestation is for another subject"))
    if cnf_jkt(attested) != cnf_jkt(mandate.payload):
        problems.append((ENV_MISMATCH, "attestation is for another key (cnf.jkt)"))
    env = object_claim(attested, "env")
    if env is None:
        problems.append((INVALID, "attestation env missing or not an object"))
        return Verdict(check, tuple(problems))
    # Only what its attestor may attest is observed: every attested claim,
    # bound by the mandate or not, since policy reads them all. (An
    # attestor that is not trusted fails check 7 already.)
    iss = attested.get("iss")
    attestor = trust.attestors.get(iss) if trust and isinstance(iss, str) else None
    beyond = attestor.unattestable(env) if attestor is not None else []
    if beyond:
        problems.append((ENV_MISMATCH, f"attestor {iss} may not attest {', '.join(beyond)}"))
    missing = sorted(key for key in binding if key not in env)
    wrong = sorted(
        key for key in binding if key in env and not binding_satisfied(binding[key], env[key])
    )
    if missing:
        problems.append((ENV_MISMATCH, f"attested env lacks {', '.join(missing)}"))
    if wrong:
        problems.append((ENV_MISMATCH, f"attested env differs on {', '.join(wrong)}"))
    return Verdict(check, tuple(problems))


def check_runtime(mandate: Presented, attestation: Presented, trust: Trust | None) -> Verdict:
    """9. Every attested measurement is allowed, and an env binding needs at least one."""
    check = Check.RUNTIME
    if trust is None:
        return Verdict(check, ((INTERNAL, "trust configuration unusable"),))
    measurements: list[str] = []
    if not attestation.absent:
        attested = attestation.payload
        if attested is None:
            return Verdict(check, (attestation.why_unusable(),))
        found = measurement_list(attested)
        if found is None:
            return Verdict(check, ((INVALID, "attestation measurements unreadable"),))
        measurements = found
    problems: list[Problem] = []
    unknown = [m for m in measurements if m not in trust.allowed_measurements]
    if unknown:
        shown = ", ".join(m[:23] for m in unknown[:3])
        problems.append((RUNTIME, f"measurement not on the allow list: {shown}"))
    if not measurements:
        binding = object_claim(mandate.payload, "env") if mandate.payload is not None else None
        if mandate.payload is None:
            problems.append(mandate.why_unusable())
        elif binding is None:
            problems.append((INVALID, "mandate env binding missing or not an object"))
        elif binding:
            problems.append((RUNTIME, "the mandate binds an environment; no measurement"))
    return Verdict(check, tuple(problems))


def check_scope(mandate: Presented, request: VerificationInput) -> Verdict:
    """10. Action and resource are names in the grammar, inside one of the mandate's patterns."""
    check = Check.SCOPE
    payload = mandate.payload
    if payload is None:
        return Verdict(check, (mandate.why_unusable(),))
    scope = scope_patterns(payload)
    if scope is None:
        return Verdict(check, ((INVALID, "mandate scope unreadable"),))
    # Patterns are matched only against names in the one grammar: a `*`
    # must not reach a spelling an executor reads as another name.
    if not (is_action(request.action) and is_resource(request.resource)):
        return Verdict(check, ((MALFORMED, "action or resource outside the name grammar"),))
    if not any(
        glob_match(action, request.action) and glob_match(resource, request.resource)
        for action, resource in scope
    ):
        detail = f"{request.action} on {request.resource} is outside the mandate's scope"
        return Verdict(check, ((OUT_OF_SCOPE, detail),))
    return Verdict(check)
