"""Verification of a request's artifacts: pure logic, no gRPC.

Verifier.verify runs every check and reports each with its own verdict, so
the engine can tell exactly what failed and can check that the overall verdict
agrees with the parts.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import import_key

from govmesh.artifacts import AUDIENCE, MANDATE_TYP
from govmesh.artifacts.checks import REQUIRED_CHECKS, Check, primary_reason
from govmesh.artifacts.trust import Trust
from govmesh.v1 import common_pb2

# The JWS algorithms govmesh accepts, per key type; anything else is refused.
_ALGS_BY_KTY = {"OKP": ("EdDSA",), "EC": ("ES256",), "RSA": ("RS256",)}


@dataclass(frozen=True)
class CheckOutcome:
    """One check's verdict."""

    check: Check
    passed: bool
    reason: int = common_pb2.DENY_REASON_UNSPECIFIED
    detail: str = ""


@dataclass(frozen=True)
class VerificationInput:
    """What verification is asked about."""

    request_digest: str
    action: str
    resource: str
    mandate: str
    proof: str
    attestation: str


@dataclass
class VerificationResult:
    """Every check's outcome and, when the mandate verified, its claims."""

    outcomes: list[CheckOutcome]
    claims: dict[str, Any] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        """True only when every required check is present and passed."""
        by_check = {outcome.check: outcome for outcome in self.outcomes}
        return all(c in by_check and by_check[c].passed for c in REQUIRED_CHECKS)

    @property
    def reason(self) -> int:
        """The primary deny reason; DENY_REASON_UNSPECIFIED when verified."""
        if self.verified:
            return common_pb2.DENY_REASON_UNSPECIFIED
        failed = [o.reason for o in self.outcomes if not o.passed]
        return primary_reason(failed or [common_pb2.INTERNAL_ERROR])


class _Failed(Exception):
    def __init__(self, check: Check, reason: int, detail: str) -> None:
        super().__init__(detail)
        self.outcome = CheckOutcome(check, False, reason, detail)


def _decode_segment(token: str, index: int) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS")
    from govmesh.artifacts.canonical import b64url_decode

    value = json.loads(b64url_decode(parts[index]))
    if not isinstance(value, dict):
        raise ValueError("JWS segment is not a JSON object")
    return value


class Verifier:
    """Verifies mandates against the trust configuration."""

    def __init__(self, *, trust: Trust, clock: Callable[[], float], clock_skew_s: float) -> None:
        self._trust = trust
        self._clock = clock
        self._skew = clock_skew_s

    def verify(self, request: VerificationInput) -> VerificationResult:
        """Run every check on `request`.

        1. Presence: a mandate and a proof must both be present.
        2. Signature: the mandate is a compact JWS with the mandate typ, signed
           by a key of the issuer it names, with that key's pinned algorithm.
        3. Issuer: the issuer is trusted and the audience is govmesh.
        4. Window: exp and nbf hold within the clock skew.
        """
        outcomes: list[CheckOutcome] = []
        # 1. Presence.
        missing = [name for name in ("mandate", "proof") if not getattr(request, name)]
        if missing:
            outcomes.append(
                CheckOutcome(
                    Check.PRESENCE,
                    False,
                    common_pb2.MISSING_AUTHORIZATION,
                    "missing " + " and ".join(missing),
                )
            )
        else:
            outcomes.append(CheckOutcome(Check.PRESENCE, True))
        if not request.mandate:
            for check in (Check.SIGNATURE, Check.ISSUER, Check.WINDOW):
                outcomes.append(
                    CheckOutcome(check, False, common_pb2.MISSING_AUTHORIZATION, "no mandate")
                )
            return VerificationResult(outcomes)

        claims: dict[str, Any] = {}
        try:
            # 2. Signature (and 3. issuer, which names the keys to try).
            claims = self._verify_mandate_signature(request.mandate)
            outcomes.append(CheckOutcome(Check.SIGNATURE, True))
        except _Failed as failure:
            outcomes.append(failure.outcome)
            for check in (Check.ISSUER, Check.WINDOW):
                if check != failure.outcome.check:
                    outcomes.append(
                        CheckOutcome(
                            check, False, common_pb2.INVALID_VERIFICATION, "mandate not verified"
                        )
                    )
            if failure.outcome.check == Check.ISSUER:
                outcomes.append(
                    CheckOutcome(
                        Check.SIGNATURE,
                        False,
                        common_pb2.INVALID_VERIFICATION,
                        "issuer not trusted",
                    )
                )
            return VerificationResult(outcomes)

        # 3. Issuer and audience.
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if AUDIENCE in auds:
            outcomes.append(CheckOutcome(Check.ISSUER, True))
        else:
            outcomes.append(
                CheckOutcome(
                    Check.ISSUER, False, common_pb2.INVALID_VERIFICATION, f"audience {aud!r}"
                )
            )
        # 4. Window.
        outcomes.append(self._window(claims))
        return VerificationResult(outcomes, claims)

    def _verify_mandate_signature(self, token: str) -> dict[str, Any]:
        try:
            header = _decode_segment(token, 0)
            payload = _decode_segment(token, 1)
        except ValueError as exc:
            raise _Failed(
                Check.SIGNATURE, common_pb2.INVALID_VERIFICATION, f"malformed mandate: {exc}"
            ) from None
        if header.get("typ") != MANDATE_TYP:
            raise _Failed(
                Check.SIGNATURE,
                common_pb2.INVALID_VERIFICATION,
                f"mandate typ {header.get('typ')!r}",
            )
        issuer = self._trust.issuers.get(str(payload.get("iss")))
        if issuer is None:
            raise _Failed(
                Check.ISSUER,
                common_pb2.INVALID_VERIFICATION,
                f"issuer {payload.get('iss')!r} not trusted",
            )
        kid = header.get("kid")
        candidates = [k for k in issuer.keys if k.get("kid") == kid] if kid else []
        if not kid and len(issuer.keys) == 1 and "kid" not in issuer.keys[0]:
            candidates = list(issuer.keys)
        if len(candidates) != 1:
            raise _Failed(Check.SIGNATURE, common_pb2.INVALID_VERIFICATION, f"unknown key {kid!r}")
        jwk = candidates[0]
        allowed = _ALGS_BY_KTY.get(str(jwk.get("kty")), ())
        pinned = jwk.get("alg")
        if header.get("alg") not in allowed or (pinned is not None and pinned != header["alg"]):
            raise _Failed(
                Check.SIGNATURE,
                common_pb2.INVALID_VERIFICATION,
                f"alg {header.get('alg')!r} not allowed for this key",
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                key = import_key(jwk)
                verified = jws.deserialize_compact(token, key, algorithms=[header["alg"]])
        except (JoseError, ValueError, TypeError) as exc:
            raise _Failed(
                Check.SIGNATURE, common_pb2.INVALID_VERIFICATION, f"bad signature: {exc}"
            ) from None
        claims = json.loads(verified.payload)
        assert isinstance(claims, dict)
        return claims

    def _window(self, claims: dict[str, Any]) -> CheckOutcome:
        now = self._clock()
        exp, nbf = claims.get("exp"), claims.get("nbf", claims.get("iat"))
        for name, value in (("exp", exp), ("nbf", nbf)):
            if not isinstance(value, int | float) or isinstance(value, bool):
                return CheckOutcome(
                    Check.WINDOW, False, common_pb2.INVALID_VERIFICATION, f"{name} missing"
                )
        assert isinstance(exp, int | float) and isinstance(nbf, int | float)
        if now > exp + self._skew:
            return CheckOutcome(
                Check.WINDOW, False, common_pb2.EXPIRED_AUTHORIZATION, "mandate expired"
            )
        if now < nbf - self._skew:
            return CheckOutcome(
                Check.WINDOW, False, common_pb2.EXPIRED_AUTHORIZATION, "mandate not yet valid"
            )
        return CheckOutcome(Check.WINDOW, True)
