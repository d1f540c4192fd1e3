"""Verification of a request's artifacts: pure logic, no gRPC.

`Verifier.verify` runs every check of `REQUIRED_CHECKS` and reports each with
its own verdict, so the engine can tell exactly what failed and can check that
the overall verdict agrees with the parts. The rules every check follows:

- A check passes only when it was evaluated on its inputs and held. A check
  that nothing evaluated fails with INTERNAL_ERROR; a check whose input is
  absent fails with MISSING_AUTHORIZATION, one whose input is unreadable with
  INVALID_VERIFICATION. Nothing passes by default.
- Checks are evaluated on what each artifact says even when another check
  found it forged, so that every problem is reported, not only the first;
  the forged artifact's own check fails, so the answer is a deny regardless.
- Claims are returned only when every check passed, and then exactly as the
  verified artifacts state them.
- The replay store is written only for a proof whose signature and bindings
  verified, under a mandate that verified: a forged request never burns a
  nonce. Otherwise the store is only read.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from govmesh.artifacts import ATTESTATION_TYP, AUDIENCE, MANDATE_TYP, PROOF_TYP
from govmesh.artifacts.answers import quoted
from govmesh.artifacts.canonical import (
    CanonicalizationError,
    canonical_json,
    request_digest,
    sha256_b64url,
)
from govmesh.artifacts.checks import REQUIRED_CHECKS, Check, Reason, primary_reason
from govmesh.artifacts.entries import text_problem
from govmesh.artifacts.jws import CompactJWS, TokenError, parse_compact
from govmesh.artifacts.keys import jwk_thumbprint
from govmesh.artifacts.names import is_action, is_resource
from govmesh.artifacts.trust import TrustedParty, VerifyingKey
from govmesh.v1 import common_pb2
from govmesh.verification.cache import token_key
from govmesh.verification.jose import check_header, header_key, verify_signature
from govmesh.verification.trustsource import TrustState

logger = logging.getLogger(__name__)

PASSED: Reason = common_pb2.DENY_REASON_UNSPECIFIED
MISSING: Reason = common_pb2.MISSING_AUTHORIZATION
INVALID: Reason = common_pb2.INVALID_VERIFICATION
EXPIRED: Reason = common_pb2.EXPIRED_AUTHORIZATION
REPLAYED: Reason = common_pb2.REPLAY_DETECTED
ENV_MISMATCH: Reason = common_pb2.ENVIRONMENT_MISMATCH
RUNTIME: Reason = common_pb2.RUNTIME_INTEGRITY_FAILURE
OUT_OF_SCOPE: Reason = common_pb2.POLICY_MISMATCH
MALFORMED: Reason = common_pb2.MALFORMED_REQUEST
UNAVAILABLE: Reason = common_pb2.PEER_UNAVAILABLE
TIMEOUT: Reason = common_pb2.PEER_TIMEOUT
INTERNAL: Reason = common_pb2.INTERNAL_ERROR

#: The longest proof jti accepted.
MAX_JTI_CHARS = 256
#: Distinct proof keys whose import and thumbprint are remembered.
PROOF_KEY_CACHE_SIZE = 1024
#: The latest time a claim may name, 9999-12-31T23:59:59Z, in seconds since 1970.
MAX_NUMERIC_DATE = 253_402_300_799


# --- collaborators -------------------------------------------------------------


class ReplayStoreUnavailable(Exception):
    """The replay store could not answer; the proof cannot be called fresh."""


class ReplayStoreTimeout(ReplayStoreUnavailable):
    """The replay store did not answer in time."""


class ProofWindowClosed(Exception):
    """By the replay store's clock, the proof can no longer be accepted.

    The store's clock, one for every replica, decides both when a nonce may
    be forgotten and until when it may be recorded: a replica whose own clock
    is behind cannot accept a proof whose nonce was already forgotten.
    """


class ReplayStore(Protocol):
    """Proof nonces seen by any verification replica, shared by all of them."""

    async def remember(self, key: bytes, expires_at: float, *, timeout: float) -> bool:
        """Record `key` unless present; True when it was new. Atomic across replicas.

        `expires_at` is when the proof stops being acceptable anywhere. A
        store that forgets keys once they expire raises ProofWindowClosed for
        one whose `expires_at` has passed by the clock it forgets them by.
        """
        ...

    async def seen(self, key: bytes, *, timeout: float) -> bool:
        """Whether `key` is recorded, without recording it."""
        ...


class TrustProvider(Protocol):
    """The trust configuration in force."""

    def current(self) -> TrustState: ...


@dataclass(frozen=True)
class VerificationConfig:
    """Windows and bounds, in seconds."""

    clock_skew_s: float = 5.0
    proof_window_s: float = 60.0
    replay_timeout_s: float = 1.0


# --- inputs and results --------------------------------------------------------


@dataclass(frozen=True)
class VerificationInput:
    """What verification is asked about.

    `context` is the request context as JSON, or None when the request's
    context could not be read as JSON.
    """

    request_digest: str
    action: str
    resource: str
    context: Mapping[str, Any] | None
    mandate: str
    proof: str
    attestation: str = ""


@dataclass(frozen=True)
class CheckOutcome:
    """One check's verdict; a failed check carries its deny reason."""

    check: Check
    passed: bool
    reason: Reason = PASSED
    detail: str = ""


@dataclass(frozen=True)
class VerifiedClaims:
    """What verified artifacts say, as the engine needs it."""

    issuer: str
    subject: str
    mandate_id: str
    cnf_jkt: str
    env: Mapping[str, Any]
    attribution: Mapping[str, Any]
    mandate_expires_at: int
    proof_id: str
    attestor: str = ""
    measurements: tuple[str, ...] = ()


@dataclass(frozen=True)
class VerificationResult:
    """Every required check's outcome, in REQUIRED_CHECKS order, and the claims if verified."""

    request_digest: str
    outcomes: tuple[CheckOutcome, ...]
    claims: VerifiedClaims | None = None
    trust_version: str = ""

    def __post_init__(self) -> None:
        if tuple(o.check for o in self.outcomes) != REQUIRED_CHECKS:
            raise ValueError("a result reports every required check exactly once, in order")
        for outcome in self.outcomes:
            if outcome.passed != (outcome.reason == PASSED):
                raise ValueError(f"check {outcome.check} has a verdict without its reason")
        if self.claims is not None and not self.verified:
            raise ValueError("claims are returned only when every check passed")

    @property
    def verified(self) -> bool:
        """True only when every required check passed."""
        return all(outcome.passed for outcome in self.outcomes)

    @property
    def failed(self) -> tuple[CheckOutcome, ...]:
        """The failed checks, in REQUIRED_CHECKS order."""
        return tuple(o for o in self.outcomes if not o.passed)

    @property
    def reason(self) -> Reason:
        """The primary deny reason; DENY_REASON_UNSPECIFIED when verified."""
        failed = self.failed
        if not failed:
            return PASSED
        return primary_reason(o.reason for o in failed)

    @classmethod
    def internal_error(cls, digest: str, detail: str) -> VerificationResult:
        """Every check failed with INTERNAL_ERROR: the answer when verification itself broke."""
        return cls(
            request_digest=digest,
            outcomes=tuple(CheckOutcome(c, False, INTERNAL, detail) for c in REQUIRED_CHECKS),
        )


# --- reading claims --------------------------------------------------------------


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _numeric_date(value: object) -> float | None:
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


def _time_problem(payload: Mapping[str, Any], name: str) -> str:
    """Why the time claim `name` is unreadable (for a claim `_numeric_date` refused)."""
    if name not in payload:
        return f"{name} missing"
    return f"{name} is not a time in seconds from 1970 to 9999"


def _time_problems(
    payload: Mapping[str, Any], required: Iterable[str], optional: Iterable[str] = ()
) -> list[str]:
    names = [*required, *(n for n in optional if n in payload)]
    return [_time_problem(payload, n) for n in names if _numeric_date(payload.get(n)) is None]


def _jkt(payload: Mapping[str, Any]) -> str | None:
    cnf = payload.get("cnf")
    return _text(cnf.get("jkt")) if isinstance(cnf, dict) else None


def _audience_ok(value: object) -> bool:
    if isinstance(value, str):
        return value == AUDIENCE
    return isinstance(value, list) and all(isinstance(a, str) for a in value) and AUDIENCE in value


def _scope(payload: Mapping[str, Any]) -> list[tuple[str, str]] | None:
    entries = payload.get("scope")
    if not isinstance(entries, list):
        return None
    scope = []
    for entry in entries:
        # Exactly these two members: an unknown member could be a constraint
        # this verifier would silently drop, widening the mandate.
        if not isinstance(entry, dict) or set(entry) != {"action", "resource"}:
            return None
        action, resource = _text(entry["action"]), _text(entry["resource"])
        if action is None or resource is None:
            return None
        scope.append((action, resource))
    return scope


def _object(payload: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    value = payload.get(name)
    return value if isinstance(value, dict) else None


def _measurements(payload: Mapping[str, Any]) -> list[str] | None:
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
        value = _text(payload.get(name))
        problem = None if value is None else text_problem(value)
        if problem is not None:
            problems.append(f"{name} {problem}")
    return problems


def mandate_claim_problems(payload: Mapping[str, Any]) -> list[str]:
    """What is missing, ill-typed or unrecordable among a mandate's required claims."""
    problems = [f"{n} missing" for n in ("iss", "sub", "jti") if _text(payload.get(n)) is None]
    problems += _unrecordable(payload, ("iss", "sub", "jti"))
    if "aud" not in payload:
        problems.append("aud missing")
    problems += _time_problems(payload, ("iat", "nbf", "exp"))
    if _scope(payload) is None:
        problems.append("scope is not a list of {action, resource} patterns")
    if _jkt(payload) is None:
        problems.append("cnf.jkt missing")
    if _object(payload, "env") is None:
        problems.append("env binding missing or not an object")
    if "att" in payload and _object(payload, "att") is None:
        problems.append("att is not an object")
    return problems


def attestation_claim_problems(payload: Mapping[str, Any]) -> list[str]:
    """What is missing, ill-typed or unrecordable among an attestation's required claims."""
    problems = [f"{n} missing" for n in ("iss", "sub") if _text(payload.get(n)) is None]
    problems += _unrecordable(payload, ("iss", "sub"))
    problems += _time_problems(payload, ("iat", "exp"), optional=("nbf",))
    if _jkt(payload) is None:
        problems.append("cnf.jkt missing")
    if _object(payload, "env") is None:
        problems.append("env missing or not an object")
    if _measurements(payload) is None:
        problems.append("measurements is not a list of strings")
    return problems


def proof_claim_problems(payload: Mapping[str, Any]) -> list[str]:
    """What is missing, ill-typed or unrecordable among a proof's required claims."""
    problems = _unrecordable(payload, ("jti",))
    jti = _text(payload.get("jti"))
    if jti is None or len(jti) > MAX_JTI_CHARS:
        problems.append(f"jti missing or longer than {MAX_JTI_CHARS} characters")
    problems += _time_problems(payload, ("iat",))
    problems += [f"{n} missing" for n in ("req", "ath") if _text(payload.get(n)) is None]
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


def replay_key(jkt: str, jti: str) -> bytes:
    """The replay store key: SHA-256 of a proof's jti within its key's namespace.

    Keyed by the proof key too, so that nobody can burn another key's nonces.
    """
    # A thumbprint is base64url, never a newline: the encoding is unambiguous.
    return hashlib.sha256(f"{jkt}\n{jti}".encode()).digest()


# --- one verification ------------------------------------------------------------


@dataclass
class _Artifact:
    kind: str
    token: str
    jws: CompactJWS | None = None
    error: str = ""
    authentic: bool = False

    @property
    def absent(self) -> bool:
        return not self.token

    @property
    def payload(self) -> Mapping[str, Any] | None:
        return self.jws.payload if self.jws is not None else None

    def unavailable(self) -> tuple[Reason, str]:
        """Why a check that needs this artifact cannot be evaluated."""
        if self.absent:
            return MISSING, f"no {self.kind}"
        return INVALID, f"{self.kind} unreadable: {self.error}"


@dataclass
class _Findings:
    """What each check found; a check nothing evaluated fails."""

    problems: dict[Check, list[tuple[Reason, str]]] = field(default_factory=dict)
    evaluated: set[Check] = field(default_factory=set)

    def ok(self, check: Check) -> None:
        self.evaluated.add(check)

    def fail(self, check: Check, reason: Reason, detail: str) -> None:
        self.evaluated.add(check)
        self.problems.setdefault(check, []).append((reason, detail))

    def passed(self, check: Check) -> bool:
        return check in self.evaluated and check not in self.problems

    def failed(self, check: Check) -> bool:
        return check in self.problems

    def outcome(self, check: Check) -> CheckOutcome:
        problems = self.problems.get(check)
        if problems:
            reason = primary_reason(r for r, _ in problems)
            return CheckOutcome(check, False, reason, "; ".join(d for _, d in problems))
        if check in self.evaluated:
            return CheckOutcome(check, True)
        return CheckOutcome(check, False, INTERNAL, "not evaluated")


@dataclass
class _Examination:
    """The synchronous part of one verification, under one trust state."""

    state: TrustState
    findings: _Findings
    mandate: _Artifact
    proof: _Artifact
    attestation: _Artifact
    proof_jkt: str | None = None
    proof_fresh_window: bool = False


class Verifier:
    """Verifies a request's mandate, proof and attestation."""

    def __init__(
        self,
        *,
        trust: TrustProvider,
        replay: ReplayStore,
        clock: Callable[[], float],
        config: VerificationConfig,
    ) -> None:
        self._trust = trust
        self._replay = replay
        self._clock = clock
        self._config = config
        self._proof_keys: OrderedDict[str, tuple[str, VerifyingKey, str]] = OrderedDict()

    async def verify(
        self, request: VerificationInput, *, timeout: float | None = None
    ) -> VerificationResult:
        """Run every check on `request`; never raises but for cancellation.

        1. Presence: a mandate and a proof are present.
        2. Digest: request_digest is recomputed from action, resource, context.
        3. Signature: the mandate is a compact JWS of the mandate typ, signed
           by the key its kid names among its issuer's keys, with that key's
           pinned algorithm (or found in the verified-token cache), and carries
           every required claim.
        4. Issuer: the issuer is trusted, the sub is inside its subject
           namespaces, and the audience is govmesh.
        5. Window: mandate exp/nbf/iat, proof iat and attestation exp/nbf/iat,
           each within the clock skew; the proof no older than the proof window.
        6. Proof of possession: typ, a public jwk whose pinned alg signed the
           proof, its thumbprint == mandate cnf.jkt, req == request digest,
           ath == SHA-256 of the mandate.
        7. Attestation (when presented): typ, a trusted attestor's key, its
           signature, its required claims.
        8. Environment: the attestation names the mandate's sub and cnf.jkt,
           its attestor may attest every claim of its env, and its env
           satisfies every claim of the mandate's env binding; a binding
           without attestation fails.
        9. Runtime: every measurement is on the allow list, and a binding
           needs at least one.
        10. Scope: action and resource are names in the one grammar
            (govmesh.artifacts.names) and match one of the mandate's scope entries.
        11. Replay: a proof that passed 3, 4 and 6 inside its window is
            recorded in the shared store, and fails if it was there already;
            any other proof is only looked up. The store's clock has the last
            word on the window: a proof it holds for expired fails with
            EXPIRED_AUTHORIZATION, whatever this replica's clock says. A store
            that cannot be reached fails the check with PEER_UNAVAILABLE, one
            that does not answer in time with PEER_TIMEOUT: never "assume fresh".
        12. If the trust configuration changed while 11 waited, 3-10 are
            evaluated again under the new one, so no answer relies on a key
            that was removed in the meantime.
        """
        try:
            return await self._verify(request, timeout)
        except Exception:
            logger.exception("verification failed")
            return VerificationResult.internal_error(request.request_digest, "internal error")

    async def _verify(
        self, request: VerificationInput, timeout: float | None
    ) -> VerificationResult:
        now = self._clock()
        state = self._trust.current()
        exam = self._examine(request, state, now)
        # 11. Replay.
        replay, recorded = await self._check_replay(exam, timeout)
        # 12. A reload while waiting: re-examine under the configuration in force.
        latest = self._trust.current()
        if latest.generation != state.generation:
            exam = self._examine(request, latest, self._clock())
            if not recorded:
                # 11 only read the store (the proof did not qualify then); if it
                # qualifies now, its nonce must be recorded before it can pass.
                replay, _ = await self._check_replay(exam, timeout)
        findings = exam.findings
        if replay is None:
            findings.ok(Check.REPLAY)
        else:
            findings.fail(Check.REPLAY, *replay)
        outcomes = tuple(findings.outcome(check) for check in REQUIRED_CHECKS)
        claims = None
        if all(o.passed for o in outcomes):
            claims = self._claims(exam)
        return VerificationResult(
            request_digest=request.request_digest,
            outcomes=outcomes,
            claims=claims,
            trust_version=exam.state.version,
        )

    # -- steps 1 to 10 -------------------------------------------------------------

    def _examine(self, request: VerificationInput, state: TrustState, now: float) -> _Examination:
        findings = _Findings()
        exam = _Examination(
            state=state,
            findings=findings,
            mandate=self._read("mandate", request.mandate, state, now),
            proof=self._read("proof", request.proof, state, now),
            attestation=self._read("attestation", request.attestation, state, now),
        )
        # 1. Presence.
        missing = [a.kind for a in (exam.mandate, exam.proof) if a.absent]
        if missing:
            findings.fail(Check.PRESENCE, MISSING, "no " + " and no ".join(missing))
        else:
            findings.ok(Check.PRESENCE)
        # 2. Digest.
        self._check_digest(request, findings)
        # 3. Signature of the mandate.
        self._check_mandate(exam, now)
        # 4. Issuer and audience.
        self._check_issuer(exam)
        # 5. Windows.
        self._check_windows(exam, now)
        # 6. Proof of possession.
        self._check_proof(exam, request)
        # 7. Attestation.
        self._check_attestation(exam, now)
        # 8. Environment.
        self._check_environment(exam)
        # 9. Runtime.
        self._check_runtime(exam)
        # 10. Scope.
        self._check_scope(exam, request)
        return exam

    @staticmethod
    def _check_digest(request: VerificationInput, findings: _Findings) -> None:
        if request.context is None:
            findings.fail(Check.DIGEST, MALFORMED, "context is not JSON")
            return
        try:
            digest = request_digest(request.action, request.resource, request.context)
        except CanonicalizationError as exc:
            findings.fail(Check.DIGEST, MALFORMED, f"context has no canonical form: {exc}")
            return
        if not request.request_digest:
            findings.fail(Check.DIGEST, MALFORMED, "no request_digest")
        elif digest != request.request_digest:
            findings.fail(
                Check.DIGEST, INVALID, "request_digest does not match action, resource and context"
            )
        else:
            findings.ok(Check.DIGEST)

    @staticmethod
    def _read(kind: str, token: str, state: TrustState, now: float) -> _Artifact:
        """Parse an artifact, or take it from the verified-token cache."""
        artifact = _Artifact(kind, token)
        if artifact.absent:
            return artifact
        if kind != "proof":
            cached = state.cache.get(token_key(kind, token), now)
            if cached is not None:
                artifact.jws, artifact.authentic = cached, True
                return artifact
        try:
            artifact.jws = parse_compact(token)
        except TokenError as exc:
            artifact.error = str(exc)
        return artifact

    def _signed_by_party(
        self,
        artifact: _Artifact,
        typ: str,
        parties: Mapping[str, TrustedParty],
        check: Check,
        exam: _Examination,
        now: float,
    ) -> None:
        """Verify `artifact`'s signature with a key of the party its iss names."""
        findings, state, jws = exam.findings, exam.state, artifact.jws
        if jws is None:
            findings.fail(check, INVALID, f"{artifact.kind} malformed: {artifact.error}")
            return
        if artifact.authentic:
            return  # verified before under this trust state (cache hit)
        if state.trust is None:
            findings.fail(check, INTERNAL, f"trust configuration unusable: {state.error}")
            return
        try:
            alg = check_header(jws, typ)
            iss = jws.payload.get("iss")
            party = parties.get(iss) if isinstance(iss, str) else None
            if party is None:
                raise TokenError(f"no key to verify with: {quoted(iss)} is not trusted")
            kid = jws.header.get("kid")
            key = party.key_for(kid)
            if key is None and kid is None:
                raise TokenError(
                    f"no kid, and {quoted(iss)} does not have exactly one key without kid"
                )
            if key is None:
                raise TokenError(f"{quoted(iss)} has no key {quoted(kid)}")
            verify_signature(jws, alg=alg, pinned=key.alg, key=key.key)
        except TokenError as exc:
            findings.fail(check, INVALID, f"{artifact.kind}: {exc}")
            return
        artifact.authentic = True
        exp = _numeric_date(jws.payload.get("exp"))
        if exp is not None:
            expires_at = exp + self._config.clock_skew_s
            state.cache.put(token_key(artifact.kind, artifact.token), jws, expires_at, now)

    def _check_mandate(self, exam: _Examination, now: float) -> None:
        mandate, findings = exam.mandate, exam.findings
        if mandate.absent:
            findings.fail(Check.SIGNATURE, *mandate.unavailable())
            return
        issuers = exam.state.trust.issuers if exam.state.trust else {}
        self._signed_by_party(mandate, MANDATE_TYP, issuers, Check.SIGNATURE, exam, now)
        if mandate.payload is None:
            return
        problems = mandate_claim_problems(mandate.payload)
        if problems:
            findings.fail(Check.SIGNATURE, INVALID, "mandate claims: " + ", ".join(problems))
        findings.ok(Check.SIGNATURE)

    @staticmethod
    def _check_issuer(exam: _Examination) -> None:
        mandate, findings, trust = exam.mandate, exam.findings, exam.state.trust
        payload = mandate.payload
        if payload is None:
            findings.fail(Check.ISSUER, *mandate.unavailable())
            return
        if trust is None:
            findings.fail(Check.ISSUER, INTERNAL, "trust configuration unusable")
            return
        iss, sub = payload.get("iss"), payload.get("sub")
        issuer = trust.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            findings.fail(Check.ISSUER, INVALID, f"issuer {quoted(iss)} is not trusted")
        elif not isinstance(sub, str) or not issuer.may_issue_for(sub):
            # A subject names one agent whoever signs: another issuer's subject
            # would reach the policies written for that agent.
            findings.fail(
                Check.ISSUER,
                INVALID,
                f"issuer {quoted(iss)} may not issue for subject {quoted(sub)}",
            )
        if not _audience_ok(payload.get("aud")):
            findings.fail(
                Check.ISSUER, INVALID, f"audience {quoted(payload.get('aud'))} is not govmesh"
            )
        findings.ok(Check.ISSUER)

    def _check_windows(self, exam: _Examination, now: float) -> None:
        skew, findings = self._config.clock_skew_s, exam.findings

        def window(
            artifact: _Artifact, *, exp: bool, nbf: bool, nbf_required: bool
        ) -> Iterable[tuple[Reason, str]]:
            payload = artifact.payload
            if payload is None:
                yield artifact.unavailable()
                return
            kind = artifact.kind
            iat = _numeric_date(payload.get("iat"))
            if iat is None:
                yield INVALID, f"{kind} {_time_problem(payload, 'iat')}"
            elif iat > now + skew:
                yield EXPIRED, f"{kind} issued in the future"
            if exp:
                expires = _numeric_date(payload.get("exp"))
                if expires is None:
                    yield INVALID, f"{kind} {_time_problem(payload, 'exp')}"
                elif now >= expires + skew:
                    yield EXPIRED, f"{kind} expired"
            if nbf and (nbf_required or "nbf" in payload):
                not_before = _numeric_date(payload.get("nbf"))
                if not_before is None:
                    yield INVALID, f"{kind} {_time_problem(payload, 'nbf')}"
                elif now < not_before - skew:
                    yield EXPIRED, f"{kind} not yet valid"

        problems = list(window(exam.mandate, exp=True, nbf=True, nbf_required=True))
        proof_problems = list(window(exam.proof, exp=False, nbf=False, nbf_required=False))
        proof_payload = exam.proof.payload
        if not proof_problems and proof_payload is not None:
            iat = _numeric_date(proof_payload.get("iat"))
            if iat is not None and iat < now - self._config.proof_window_s:
                proof_problems.append(
                    (EXPIRED, f"proof older than {self._config.proof_window_s:g} s")
                )
        exam.proof_fresh_window = not proof_problems
        problems += proof_problems
        if not exam.attestation.absent:
            problems += window(exam.attestation, exp=True, nbf=True, nbf_required=False)
        for reason, detail in problems:
            findings.fail(Check.WINDOW, reason, detail)
        findings.ok(Check.WINDOW)

    def _proof_key(self, jws: CompactJWS) -> tuple[str, VerifyingKey, str]:
        """The proof's header key: (pinned alg, key, thumbprint), imported once per distinct jwk.

        An initiator signs every proof with the same key; importing it and
        computing its thumbprint again for each request would be wasted work.
        The cache is keyed by the jwk's full content, so a hit is the same key.
        """
        jwk = jws.header.get("jwk")
        cache_key = json.dumps(jwk, sort_keys=True) if isinstance(jwk, dict) else None
        if cache_key is not None:
            known = self._proof_keys.get(cache_key)
            if known is not None:
                self._proof_keys.move_to_end(cache_key)
                return known
        pinned, key, params = header_key(jws)
        entry = (pinned, key, jwk_thumbprint(params))
        if cache_key is not None:
            self._proof_keys[cache_key] = entry
            if len(self._proof_keys) > PROOF_KEY_CACHE_SIZE:
                self._proof_keys.popitem(last=False)
        return entry

    def _check_proof(self, exam: _Examination, request: VerificationInput) -> None:
        proof, mandate, findings = exam.proof, exam.mandate, exam.findings
        if proof.absent:
            findings.fail(Check.POP, *proof.unavailable())
            return
        jws = proof.jws
        if jws is None:
            findings.fail(Check.POP, INVALID, f"proof malformed: {proof.error}")
            return
        key = alg = None
        try:
            pinned, key, exam.proof_jkt = self._proof_key(jws)
        except (TokenError, ValueError) as exc:
            findings.fail(Check.POP, INVALID, f"proof: {exc}")
        try:
            alg = check_header(jws, PROOF_TYP)
        except TokenError as exc:
            findings.fail(Check.POP, INVALID, f"proof: {exc}")
        problems = proof_claim_problems(jws.payload)
        if problems:
            findings.fail(Check.POP, INVALID, "proof claims: " + ", ".join(problems))
        mandate_payload = mandate.payload
        if mandate_payload is None:
            findings.fail(Check.POP, *mandate.unavailable())
        elif exam.proof_jkt is not None and exam.proof_jkt != _jkt(mandate_payload):
            findings.fail(Check.POP, INVALID, "proof key is not the key the mandate is bound to")
        if jws.payload.get("req") != request.request_digest:
            findings.fail(Check.POP, INVALID, "proof is for another request (req)")
        if not mandate.absent:
            ath = sha256_b64url(mandate.token.encode("utf-8"))
            if jws.payload.get("ath") != ath:
                findings.fail(Check.POP, INVALID, "proof is for another mandate (ath)")
        # The signature last, and only when it alone decides the check: a proof
        # that is not for this request, or whose key is not the one the mandate
        # (verified at step 3, before this) is bound to, fails whatever its
        # signature, so it costs no signature verification.
        if key is not None and alg is not None and not findings.failed(Check.POP):
            try:
                verify_signature(jws, alg=alg, pinned=pinned, key=key)
                proof.authentic = True
            except TokenError as exc:
                findings.fail(Check.POP, INVALID, f"proof: {exc}")
        findings.ok(Check.POP)

    def _check_attestation(self, exam: _Examination, now: float) -> None:
        attestation, findings = exam.attestation, exam.findings
        if attestation.absent:
            findings.ok(Check.ATTESTATION)
            return
        attestors = exam.state.trust.attestors if exam.state.trust else {}
        self._signed_by_party(attestation, ATTESTATION_TYP, attestors, Check.ATTESTATION, exam, now)
        if attestation.payload is None:
            return
        problems = attestation_claim_problems(attestation.payload)
        if problems:
            findings.fail(Check.ATTESTATION, INVALID, "attestation claims: " + ", ".join(problems))
        findings.ok(Check.ATTESTATION)

    @staticmethod
    def _check_environment(exam: _Examination) -> None:
        mandate, attestation, findings = exam.mandate, exam.attestation, exam.findings
        check = Check.ENVIRONMENT
        binding = _object(mandate.payload, "env") if mandate.payload is not None else None
        if mandate.payload is None:
            findings.fail(check, *mandate.unavailable())
            return
        if binding is None:
            findings.fail(check, INVALID, "mandate env binding missing or not an object")
            return
        if attestation.absent:
            if binding:
                findings.fail(
                    check,
                    ENV_MISMATCH,
                    f"mandate binds {', '.join(sorted(binding))}; no attestation presented",
                )
            findings.ok(check)
            return
        attested = attestation.payload
        if attested is None:
            findings.fail(check, *attestation.unavailable())
            return
        if attested.get("sub") != mandate.payload.get("sub"):
            findings.fail(check, ENV_MISMATCH, "attestation is for another subject")
        if _jkt(attested) != _jkt(mandate.payload):
            findings.fail(check, ENV_MISMATCH, "attestation is for another key (cnf.jkt)")
        env = _object(attested, "env")
        if env is None:
            findings.fail(check, INVALID, "attestation env missing or not an object")
            return
        # Only what its attestor may attest is observed: every attested claim,
        # bound by the mandate or not, since policy reads them all. (An
        # attestor that is not trusted fails check 7 already.)
        trust, iss = exam.state.trust, attested.get("iss")
        attestor = trust.attestors.get(iss) if trust and isinstance(iss, str) else None
        beyond = attestor.unattestable(env) if attestor is not None else []
        if beyond:
            findings.fail(check, ENV_MISMATCH, f"attestor {iss} may not attest {', '.join(beyond)}")
        missing = sorted(key for key in binding if key not in env)
        wrong = sorted(
            key for key in binding if key in env and not binding_satisfied(binding[key], env[key])
        )
        if missing:
            findings.fail(check, ENV_MISMATCH, f"attested env lacks {', '.join(missing)}")
        if wrong:
            findings.fail(check, ENV_MISMATCH, f"attested env differs on {', '.join(wrong)}")
        findings.ok(check)

    @staticmethod
    def _check_runtime(exam: _Examination) -> None:
        mandate, attestation, findings = exam.mandate, exam.attestation, exam.findings
        check, trust = Check.RUNTIME, exam.state.trust
        binding = _object(mandate.payload, "env") if mandate.payload is not None else None
        if trust is None:
            findings.fail(check, INTERNAL, "trust configuration unusable")
            return
        measurements: list[str] = []
        if not attestation.absent:
            attested = attestation.payload
            if attested is None:
                findings.fail(check, *attestation.unavailable())
                return
            found = _measurements(attested)
            if found is None:
                findings.fail(check, INVALID, "attestation measurements unreadable")
                return
            measurements = found
        unknown = [m for m in measurements if m not in trust.allowed_measurements]
        if unknown:
            shown = ", ".join(m[:23] for m in unknown[:3])
            findings.fail(check, RUNTIME, f"measurement not on the allow list: {shown}")
        if not measurements:
            if mandate.payload is None:
                findings.fail(check, *mandate.unavailable())
            elif binding is None:
                findings.fail(check, INVALID, "mandate env binding missing or not an object")
            elif binding:
                findings.fail(check, RUNTIME, "the mandate binds an environment; no measurement")
        findings.ok(check)

    @staticmethod
    def _check_scope(exam: _Examination, request: VerificationInput) -> None:
        mandate, findings = exam.mandate, exam.findings
        payload = mandate.payload
        if payload is None:
            findings.fail(Check.SCOPE, *mandate.unavailable())
            return
        scope = _scope(payload)
        if scope is None:
            findings.fail(Check.SCOPE, INVALID, "mandate scope unreadable")
            return
        # Patterns are matched only against names in the one grammar: a `*`
        # must not reach a spelling an executor reads as another name.
        if not (is_action(request.action) and is_resource(request.resource)):
            findings.fail(Check.SCOPE, MALFORMED, "action or resource outside the name grammar")
            return
        if not any(
            glob_match(action, request.action) and glob_match(resource, request.resource)
            for action, resource in scope
        ):
            findings.fail(
                Check.SCOPE,
                OUT_OF_SCOPE,
                f"{request.action} on {request.resource} is outside the mandate's scope",
            )
        findings.ok(Check.SCOPE)

    # -- step 11 ----------------------------------------------------------------------

    async def _check_replay(
        self, exam: _Examination, timeout: float | None
    ) -> tuple[tuple[Reason, str] | None, bool]:
        """(None when the proof is fresh, else the reason and detail; whether it was recorded)."""
        proof, findings = exam.proof, exam.findings
        payload = proof.payload
        if payload is None:
            return proof.unavailable(), False
        jti = _text(payload.get("jti"))
        if jti is None or len(jti) > MAX_JTI_CHARS:
            return (INVALID, "proof jti missing"), False
        if exam.proof_jkt is None:
            return (INVALID, "proof key unreadable"), False
        try:
            key = replay_key(exam.proof_jkt, jti)
        except UnicodeEncodeError:
            return (INVALID, "proof jti is not UTF-8"), False
        budget = self._config.replay_timeout_s if timeout is None else timeout
        budget = min(budget, self._config.replay_timeout_s)
        record = (
            exam.proof_fresh_window
            and findings.passed(Check.POP)
            and findings.passed(Check.SIGNATURE)
            and findings.passed(Check.ISSUER)
        )
        try:
            if record:
                iat = _numeric_date(payload.get("iat"))
                assert iat is not None
                expires_at = iat + self._config.proof_window_s + self._config.clock_skew_s
                fresh = await self._replay.remember(key, expires_at, timeout=budget)
            else:
                fresh = not await self._replay.seen(key, timeout=budget)
        except ProofWindowClosed as exc:
            return (EXPIRED, f"proof outside its window: {exc}"), False
        except ReplayStoreTimeout as exc:
            return (TIMEOUT, f"replay store did not answer in time: {exc}"), False
        except ReplayStoreUnavailable as exc:
            return (UNAVAILABLE, f"replay store unavailable: {exc}"), False
        if not fresh:
            return (REPLAYED, f"proof {jti[:64]} was already used"), False
        return None, record

    # -- claims --------------------------------------------------------------------------

    @staticmethod
    def _claims(exam: _Examination) -> VerifiedClaims:
        mandate, proof, attestation = exam.mandate.payload, exam.proof.payload, None
        assert mandate is not None and proof is not None
        assert exam.mandate.authentic and exam.proof.authentic
        env: Mapping[str, Any] = {}
        attestor, measurements = "", ()
        if not exam.attestation.absent:
            attestation = exam.attestation.payload
            assert attestation is not None and exam.attestation.authentic
            env = attestation["env"]
            attestor = str(attestation["iss"])
            measurements = tuple(attestation["measurements"])
        exp = _numeric_date(mandate.get("exp"))
        assert exp is not None
        return VerifiedClaims(
            issuer=str(mandate["iss"]),
            subject=str(mandate["sub"]),
            mandate_id=str(mandate["jti"]),
            cnf_jkt=str(_jkt(mandate)),
            env=env,
            attribution=_object(mandate, "att") or {},
            mandate_expires_at=int(exp),
            proof_id=str(proof["jti"]),
            attestor=attestor,
            measurements=measurements,
        )
