"""Step 11: a proof's nonce, and the store shared by every replica that remembers it.

The nonce is recorded only for a proof that verified (steps 3, 4 and 6)
inside its window (step 5): `recording_deadline` takes those steps' findings
as arguments and returns until when the nonce may be recorded, or None when
it may only be looked up. A forged request never burns a nonce.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from govmesh.artifacts.checks import Check
from govmesh.runtime.errors import PreconditionFailed, Unavailable
from govmesh.verification.claims import proof_jti
from govmesh.verification.conditions import Windows
from govmesh.verification.results import (
    EXPIRED,
    INVALID,
    REPLAYED,
    TIMEOUT,
    UNAVAILABLE,
    Problem,
    Verdict,
)
from govmesh.verification.signatures import MandateSignature, Possession, Presented


class ReplayStoreUnavailable(Unavailable):
    """The replay store could not answer; the proof cannot be called fresh."""


class ReplayStoreTimeout(ReplayStoreUnavailable):
    """The replay store did not answer in time."""


class ProofWindowClosed(PreconditionFailed):
    """By the replay store's clock, the proof can no longer be accepted.

    The store's clock, one for every replica, decides both when a nonce may
    be forgotten and until when it may be recorded: a replica whose own clock
    is behind cannot accept a proof whose nonce was already forgotten.
    """


class ReplayStore(Protocol):
    """Proof nonces seen by any verification replica, shared by all of them.

    `timeout` is in seconds.
    """

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


def replay_key(jkt: str, jti: str) -> bytes:
    """The replay store key: SHA-256 of a proof's jti within its key's namespace.

    Keyed by the proof key too, so that nobody can burn another key's nonces.
    """
    # A thumbprint is base64url, never a newline: the encoding is unambiguous.
    return hashlib.sha256(f"{jkt}\n{jti}".encode()).digest()


@dataclass(frozen=True)
class Nonce:
    """A proof's jti and its key in the replay store."""

    jti: str
    key: bytes


def proof_nonce(proof: Presented, possession: Possession) -> Nonce | Problem:
    """The proof's nonce, keyed in the namespace of the key step 6 read; or why there is none."""
    payload = proof.payload
    if payload is None:
        return proof.why_unusable()
    jti = proof_jti(payload)
    if jti is None:
        return INVALID, "proof jti missing"
    if possession.key_thumbprint is None:
        return INVALID, "proof key unreadable"
    try:
        return Nonce(jti, replay_key(possession.key_thumbprint, jti))
    except UnicodeEncodeError:
        return INVALID, "proof jti is not UTF-8"


def recording_deadline(
    signature: MandateSignature, issuer: Verdict, windows: Windows, possession: Possession
) -> float | None:
    """Until when the proof's nonce may be recorded; None when it may only be looked up.

    Only a proof inside its window (5) whose signature and bindings verified
    (6), under a mandate whose signature (3) and issuer (4) verified.
    """
    if issuer.check is not Check.ISSUER:
        raise ValueError(f"recording needs the issuer check's verdict, not {issuer.check}'s")
    if (
        windows.proof_expires_at is not None
        and possession.verdict.passed
        and signature.verdict.passed
        and issuer.passed
    ):
        return windows.proof_expires_at
    return None


@dataclass(frozen=True)
class ReplayCheck:
    """Step 11's finding, and whether it recorded the nonce."""

    verdict: Verdict
    recorded: bool


async def check_replay(
    nonce: Nonce | Problem, record_until: float | None, store: ReplayStore, *, budget_s: float
) -> ReplayCheck:
    """11. The proof's nonce was not seen before: recorded when `record_until` allows, else read.

    The store's clock has the last word on the window (ProofWindowClosed).
    A store that cannot answer fails the check: never "assume fresh".
    """
    check = Check.REPLAY
    if not isinstance(nonce, Nonce):
        return ReplayCheck(Verdict(check, (nonce,)), recorded=False)
    problem: Problem | None = None
    try:
        if record_until is not None:
            fresh = await store.remember(nonce.key, record_until, timeout=budget_s)
        else:
            fresh = not await store.seen(nonce.key, timeout=budget_s)
    except ProofWindowClosed as exc:
        problem = EXPIRED, f"proof outside its window: {exc}"
    except ReplayStoreTimeout as exc:
        problem = TIMEOUT, f"replay store did not answer in time: {exc}"
    except ReplayStoreUnavailable as exc:
        problem = UNAVAILABLE, f"replay store unavailable: {exc}"
    else:
        if not fresh:
            problem = REPLAYED, f"proof {nonce.jti[:64]} was already used"
    if problem is not None:
        return ReplayCheck(Verdict(check, (problem,)), recorded=False)
    return ReplayCheck(Verdict(check), recorded=record_until is not None)
