"""The presented tokens and the checks of their signatures: steps 3, 6 and 7.

Each step returns its check's Verdict together with what it established for
the steps after it: the claims of a token whose signature verified (the
claims the answer may report) and, for the proof, the thumbprint of the key
it carries (the namespace of its nonce in the replay store).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from govmesh.artifacts import ATTESTATION_TYP, MANDATE_TYP, PROOF_TYP
from govmesh.artifacts.answers import quoted
from govmesh.artifacts.canonical import sha256_b64url
from govmesh.artifacts.checks import Check
from govmesh.artifacts.jws import CompactJWS, TokenError, parse_compact
from govmesh.artifacts.keys import jwk_thumbprint
from govmesh.artifacts.trust import Trust, TrustedParty, VerifyingKey
from govmesh.verification.cache import token_key
from govmesh.verification.claims import (
    attestation_claim_problems,
    cnf_jkt,
    mandate_claim_problems,
    numeric_date,
    proof_claim_problems,
)
from govmesh.verification.jose import check_header, header_key, verify_signature
from govmesh.verification.results import INTERNAL, INVALID, MISSING, Problem, Verdict
from govmesh.verification.trustsource import TrustState

#: Distinct proof keys whose import and thumbprint are remembered.
PROOF_KEY_CACHE_SIZE = 1024


# --- the tokens as presented ----------------------------------------------------------


class Presented(NamedTuple):
    """One token as the request presents it: parsed, or why it could not be.

    `verified_before` is True when it came from the verified-token cache of
    the trust state it was read under: its signature verified then.
    """

    kind: str
    token: str
    jws: CompactJWS | None = None
    error: str = ""
    verified_before: bool = False

    @property
    def absent(self) -> bool:
        return not self.token

    @property
    def payload(self) -> Mapping[str, Any] | None:
        return self.jws.payload if self.jws is not None else None

    def why_unusable(self) -> Problem:
        """Why a check that needs this token cannot be evaluated (absent, or unparsable)."""
        if self.absent:
            return MISSING, f"no {self.kind}"
        return INVALID, f"{self.kind} unreadable: {self.error}"


def read_presented(kind: str, token: str, state: TrustState, now: float) -> Presented:
    """Parse a token, or take it from `state`'s verified-token cache."""
    if not token:
        return Presented(kind, token)
    if kind != "proof":
        cached = state.cache.get(token_key(kind, token), now)
        if cached is not None:
            return Presented(kind, token, cached, verified_before=True)
    try:
        return Presented(kind, token, parse_compact(token))
    except TokenError as exc:
        return Presented(kind, token, error=str(exc))


def _party_signature_problem(
    presented: Presented,
    typ: str,
    parties: Mapping[str, TrustedParty],
    state: TrustState,
    now: float,
    clock_skew_s: float,
) -> Problem | None:
    """Why `presented` is not signed by a key of the party its iss names; None when it is.

    A token that verifies is put in `state`'s verified-token cache until it
    expires (plus the skew).
    """
    jws = presented.jws
    if jws is None:
        return INVALID, f"{presented.kind} malformed: {presented.error}"
    if presented.verified_before:
        return None  # verified before under this trust state (cache hit)
    if state.trust is None:
        return INTERNAL, f"trust configuration unusable: {state.error}"
    try:
        alg = check_header(jws, typ)
        iss = jws.payload.get("iss")
        party = parties.get(iss) if isinstance(iss, str) else None
        if party is None:
            raise TokenError(f"no key to verify with: {quoted(iss)} is not trusted")
        kid = jws.header.get("kid")
        key = party.key_for(kid)
        if key is None and kid is None:
            raise TokenError(f"no kid, and {quoted(iss)} does not have exactly one key without kid")
        if key is None:
            raise TokenError(f"{quoted(iss)} has no key {quoted(kid)}")
        verify_signature(jws, alg=alg, pinned=key.alg, key=key.key)
    except TokenError as exc:
        return INVALID, f"{presented.kind}: {exc}"
    exp = numeric_date(jws.payload.get("exp"))
    if exp is not None:
        expires_at = exp + clock_skew_s
        state.cache.put(token_key(presented.kind, presented.token), jws, expires_at, now)
    return None


@dataclass(frozen=True)
class SignedToken:
    """What step 3 or 7 found: the verdict, and the token's claims when its signature verified."""

    verdict: Verdict
    signed_claims: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class _PartyToken:
    """What steps 3 and 7 hold a token signed by a trusted party to."""

    check: Check
    typ: str
    claim_problems: Callable[[Mapping[str, Any]], list[str]]
    #: The parties of the trust configuration whose keys may sign it.
    parties: Callable[[Trust], Mapping[str, TrustedParty]]


_MANDATE = _PartyToken(
    Check.SIGNATURE, MANDATE_TYP, mandate_claim_problems, lambda trust: trust.issuers
)
_ATTESTATION = _PartyToken(
    Check.ATTESTATION, ATTESTATION_TYP, attestation_claim_problems, lambda trust: trust.attestors
)


def _check_party_token(
    presented: Presented,
    rules: _PartyToken,
    state: TrustState,
    now: float,
    clock_skew_s: float,
) -> tuple[Verdict, Mapping[str, Any] | None]:
    """A present token signed by a party (3, 7): the verdict, and its claims when it verified."""
    parties = rules.parties(state.trust) if state.trust else {}
    signature = _party_signature_problem(presented, rules.typ, parties, state, now, clock_skew_s)
    problems = [] if signature is None else [signature]
    payload = presented.payload
    if payload is None:
        return Verdict(rules.check, tuple(problems)), None
    found = rules.claim_problems(payload)
    if found:
        problems.append((INVALID, f"{presented.kind} claims: " + ", ".join(found)))
    return Verdict(rules.check, tuple(problems)), payload if signature is None else None


# --- 3. the mandate's signature -----------------------------------------------------------


@dataclass(frozen=True)
class MandateSignature(SignedToken):
    """Step 3's finding."""


def check_mandate_signature(
    mandate: Presented, state: TrustState, now: float, *, clock_skew_s: float
) -> MandateSignature:
    """3. The mandate is signed by a key of its issuer and carries every required claim."""
    if mandate.absent:
        return MandateSignature(Verdict(Check.SIGNATURE, (mandate.why_unusable(),)))
    verdict, signed_claims = _check_party_token(mandate, _MANDATE, state, now, clock_skew_s)
    return MandateSignature(verdict, signed_claims)


# --- 6. proof of possession ------------------------------------------------------------------


@dataclass(frozen=True)
class ProofKey:
    """The public key a proof carries in its header: its pinned alg, the key, its thumbprint."""

    alg: str
    key: VerifyingKey
    thumbprint: str


class ProofKeyCache:
    """The proof keys already imported, least recently used first out.

    An initiator signs every proof with the same key; importing it and
    computing its thumbprint again for each request would be wasted work.
    The cache is keyed by the jwk's full content, so a hit is the same key.
    """

    def __init__(self, max_entries: int = PROOF_KEY_CACHE_SIZE) -> None:
        self._max_entries = max_entries
        self._keys: OrderedDict[str, ProofKey] = OrderedDict()

    def key_of(self, jws: CompactJWS) -> ProofKey:
        """The proof's header key; TokenError or ValueError when it is not a usable key.

        Its cost is bounded (`check_key_cost`, through `header_key`) before
        anything imports it or verifies with it.
        """
        jwk = jws.header.get("jwk")
        cache_key = json.dumps(jwk, sort_keys=True) if isinstance(jwk, dict) else None
        if cache_key is not None:
            known = self._keys.get(cache_key)
            if known is not None:
                self._keys.move_to_end(cache_key)
                return known
        pinned, key, params = header_key(jws)
        entry = ProofKey(pinned, key, jwk_thumbprint(params))
        if cache_key is not None:
            self._keys[cache_key] = entry
            if len(self._keys) > self._max_entries:
                self._keys.popitem(last=False)
        return entry


@dataclass(frozen=True)
class Possession:
    """Step 6's finding.

    `key_thumbprint` is the thumbprint of the key the proof carries, once
    that key is known to be usable (whatever else failed); `signed_claims` is
    the proof's payload when its signature verified.
    """

    verdict: Verdict
    key_thumbprint: str | None = None
    signed_claims: Mapping[str, Any] | None = None


def check_possession(
    proof: Presented, mandate: Presented, request_digest: str, proof_keys: ProofKeyCache
) -> Possession:
    """6. The proof is signed by the key the mandate is bound to, for this request and mandate."""
    check = Check.POP
    if proof.absent:
        return Possession(Verdict(check, (proof.why_unusable(),)))
    jws = proof.jws
    if jws is None:
        return Possession(Verdict(check, ((INVALID, f"proof malformed: {proof.error}"),)))
    problems: list[Problem] = []
    # The key first: a key too costly to verify with is refused before any
    # signature is checked with it.
    key: ProofKey | None = None
    alg: str | None = None
    try:
        key = proof_keys.key_of(jws)
    except (TokenError, ValueError) as exc:
        problems.append((INVALID, f"proof: {exc}"))
    try:
        alg = check_header(jws, PROOF_TYP)
    except TokenError as exc:
        problems.append((INVALID, f"proof: {exc}"))
    claim_problems = proof_claim_problems(jws.payload)
    if claim_problems:
        problems.append((INVALID, "proof claims: " + ", ".join(claim_problems)))
    thumbprint = key.thumbprint if key is not None else None
    mandate_payload = mandate.payload
    if mandate_payload is None:
        problems.append(mandate.why_unusable())
    elif thumbprint is not None and thumbprint != cnf_jkt(mandate_payload):
        problems.append((INVALID, "proof key is not the key the mandate is bound to"))
    if jws.payload.get("req") != request_digest:
        problems.append((INVALID, "proof is for another request (req)"))
    if not mandate.absent:
        ath = sha256_b64url(mandate.token.encode("utf-8"))
        if jws.payload.get("ath") != ath:
            problems.append((INVALID, "proof is for another mandate (ath)"))
    # The signature last, and only when it alone decides the check: a proof
    # that is not for this request, or whose key is not the one the mandate
    # is bound to, fails whatever its signature, so it costs no signature
    # verification.
    signed_claims = None
    if key is not None and alg is not None and not problems:
        try:
            verify_signature(jws, alg=alg, pinned=key.alg, key=key.key)
            signed_claims = jws.payload
        except TokenError as exc:
            problems.append((INVALID, f"proof: {exc}"))
    return Possession(Verdict(check, tuple(problems)), thumbprint, signed_claims)


# --- 7. the attestation --------------------------------------------------------------------


@dataclass(frozen=True)
class AttestationSignature(SignedToken):
    """Step 7's finding; `presented` is False when the request carries no attestation.

    Step 7 accepts a request without one; step 8 decides whether the mandate
    needed one.
    """

    presented: bool = True


def check_attestation_signature(
    attestation: Presented, state: TrustState, now: float, *, clock_skew_s: float
) -> AttestationSignature:
    """7. An attestation, when presented, is signed by a trusted attestor and carries its claims."""
    if attestation.absent:
        return AttestationSignature(Verdict(Check.ATTESTATION), presented=False)
    verdict, signed = _check_party_token(attestation, _ATTESTATION, state, now, clock_skew_s)
    return AttestationSignature(verdict, presented=True, signed_claims=signed)
