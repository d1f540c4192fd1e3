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

Each step is a function that returns its check's verdict and what it
established for the steps after it; a step that needs another's finding
takes it as an argument, so the order below is the only one that can be
written. The steps live by concern: `signatures` (3, 6, 7), `conditions`
(1, 2, 4, 5, 8, 9, 10), `nonces` (11); `claims` reads the tokens' claims and
`results` holds what verification is asked and answers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from govmesh.verification.claims import (
    binding_satisfied,
    cnf_jkt,
    glob_match,
    numeric_date,
    object_claim,
)
from govmesh.verification.conditions import (
    Windows,
    check_digest,
    check_environment,
    check_issuer,
    check_presence,
    check_runtime,
    check_scope,
    check_windows,
)
from govmesh.verification.nonces import (
    ProofWindowClosed,
    ReplayCheck,
    ReplayStore,
    ReplayStoreTimeout,
    ReplayStoreUnavailable,
    check_replay,
    proof_nonce,
    recording_deadline,
    replay_key,
)
from govmesh.verification.results import (
    CheckOutcome,
    Verdict,
    VerificationInput,
    VerificationResult,
    VerifiedClaims,
    outcomes,
)
from govmesh.verification.signatures import (
    AttestationSignature,
    MandateSignature,
    Possession,
    Presented,
    ProofKeyCache,
    check_attestation_signature,
    check_mandate_signature,
    check_possession,
    read_presented,
)
from govmesh.verification.trustsource import TrustState

__all__ = [
    "CheckOutcome",
    "ProofWindowClosed",
    "ReplayStore",
    "ReplayStoreTimeout",
    "ReplayStoreUnavailable",
    "TrustProvider",
    "VerificationConfig",
    "VerificationInput",
    "VerificationResult",
    "VerifiedClaims",
    "Verifier",
    "binding_satisfied",
    "glob_match",
    "replay_key",
]

logger = logging.getLogger(__name__)


class TrustProvider(Protocol):
    """The trust configuration in force."""

    def current(self) -> TrustState: ...


@dataclass(frozen=True)
class VerificationConfig:
    """Windows and bounds, in seconds."""

    clock_skew_s: float = 5.0
    proof_window_s: float = 60.0
    replay_timeout_s: float = 1.0


class Examination(NamedTuple):
    """Steps 1 to 10 under one trust state: what each found, and the proof they read."""

    state: TrustState
    proof: Presented
    presence: Verdict
    digest: Verdict
    signature: MandateSignature
    issuer: Verdict
    windows: Windows
    possession: Possession
    attestation: AttestationSignature
    environment: Verdict
    runtime: Verdict
    scope: Verdict

    def verdicts(self) -> tuple[Verdict, ...]:
        return (
            self.presence,
            self.digest,
            self.signature.verdict,
            self.issuer,
            self.windows.verdict,
            self.possession.verdict,
            self.attestation.verdict,
            self.environment,
            self.runtime,
            self.scope,
        )


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
        self._proof_keys = ProofKeyCache()

    async def verify(
        self, request: VerificationInput, *, timeout: float | None = None
    ) -> VerificationResult:
        """Run every check on `request`; never raises but for cancellation.

        `timeout` is the seconds the caller can still wait; the replay store
        is given at most that, and never more than `replay_timeout_s`.

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
        self, request: VerificationInput, timeout_s: float | None
    ) -> VerificationResult:
        now = self._clock()
        state = self._trust.current()
        exam = self._examine(request, state, now)
        budget_s = self._config.replay_timeout_s if timeout_s is None else timeout_s
        budget_s = min(budget_s, self._config.replay_timeout_s)
        # 11. Replay.
        replay = await self._check_replay(exam, budget_s)
        # 12. A reload while waiting: re-examine under the configuration in force.
        latest = self._trust.current()
        if latest.generation != state.generation:
            exam = self._examine(request, latest, self._clock())
            if not replay.recorded:
                # 11 only read the store (the proof did not qualify then); if it
                # qualifies now, its nonce must be recorded before it can pass.
                replay = await self._check_replay(exam, budget_s)
        checked = outcomes((*exam.verdicts(), replay.verdict))
        claims = None
        if all(o.passed for o in checked):
            claims = verified_claims(exam.signature, exam.possession, exam.attestation)
        return VerificationResult(
            request_digest=request.request_digest,
            outcomes=checked,
            claims=claims,
            trust_version=exam.state.version,
        )

    def _examine(self, request: VerificationInput, state: TrustState, now: float) -> Examination:
        """Steps 1 to 10 under `state`, at `now`."""
        skew_s = self._config.clock_skew_s
        mandate = read_presented("mandate", request.mandate, state, now)
        proof = read_presented("proof", request.proof, state, now)
        attestation = read_presented("attestation", request.attestation, state, now)
        # 1. Presence.
        presence = check_presence(mandate, proof)
        # 2. Digest.
        digest = check_digest(request)
        # 3. Signature of the mandate.
        signature = check_mandate_signature(mandate, state, now, clock_skew_s=skew_s)
        # 4. Issuer and audience.
        issuer = check_issuer(mandate, state.trust)
        # 5. Windows.
        windows = check_windows(
            mandate,
            proof,
            attestation,
            now,
            clock_skew_s=skew_s,
            proof_window_s=self._config.proof_window_s,
        )
        # 6. Proof of possession.
        possession = check_possession(proof, mandate, request.request_digest, self._proof_keys)
        # 7. Attestation.
        attested = check_attestation_signature(attestation, state, now, clock_skew_s=skew_s)
        # 8. Environment.
        environment = check_environment(mandate, attestation, state.trust)
        # 9. Runtime.
        runtime = check_runtime(mandate, attestation, state.trust)
        # 10. Scope.
        scope = check_scope(mandate, request)
        return Examination(
            state=state,
            proof=proof,
            presence=presence,
            digest=digest,
            signature=signature,
            issuer=issuer,
            windows=windows,
            possession=possession,
            attestation=attested,
            environment=environment,
            runtime=runtime,
            scope=scope,
        )

    async def _check_replay(self, exam: Examination, budget_s: float) -> ReplayCheck:
        """11. Replay, on what steps 3 to 6 of `exam` established."""
        nonce = proof_nonce(exam.proof, exam.possession)
        record_until = recording_deadline(
            exam.signature, exam.issuer, exam.windows, exam.possession
        )
        return await check_replay(nonce, record_until, self._replay, budget_s=budget_s)


def verified_claims(
    signature: MandateSignature, possession: Possession, attestation: AttestationSignature
) -> VerifiedClaims:
    """The claims of a verified request, as its signed tokens state them."""
    mandate, proof = signature.signed_claims, possession.signed_claims
    assert mandate is not None and proof is not None
    env: Mapping[str, Any] = {}
    attestor, measurements = "", ()
    if attestation.presented:
        attested = attestation.signed_claims
        assert attested is not None
        env = attested["env"]
        attestor = str(attested["iss"])
        measurements = tuple(attested["measurements"])
    exp = numeric_date(mandate.get("exp"))
    assert exp is not None
    return VerifiedClaims(
        issuer=str(mandate["iss"]),
        subject=str(mandate["sub"]),
        mandate_id=str(mandate["jti"]),
        cnf_jkt=str(cnf_jkt(mandate)),
        env=env,
        attribution=object_claim(mandate, "att") or {},
        mandate_expires_at=int(exp),
        proof_id=str(proof["jti"]),
        attestor=attestor,
        measurements=measurements,
    )
