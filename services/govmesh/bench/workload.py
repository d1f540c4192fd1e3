"""The benchmark's requests: valid work, and every deny a caller can cause.

A valid request is what an agent sends for one tool call: its mandate (bound
to the attested environment), a fresh attestation and a fresh proof of
possession for exactly this request. Every `deny_every`-th request is instead
one of the caller-side denies below, in rotation, so that each check's
failure path runs under load too and is counted by its exact reason.

The replay is resolved when it is sent, not when it is planned: it resends a
request that was already ALLOWed, so the original is never the one refused.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from govmesh.artifacts.keys import generate_ed25519
from govmesh.cli.devsetup import (
    DEV_ATTESTOR,
    DEV_ENV,
    DEV_ISSUER,
    DEV_MEASUREMENT,
    DEV_SUBJECT,
    DevSetup,
)
from govmesh.client import Initiator, issue_attestation, issue_mandate
from govmesh.v1 import engine_pb2

ACTION = "payments.transfer"
RESOURCE = "account:acme/treasury"
#: What the sample policy allows, and what it refuses (it caps amounts at 1,000).
ALLOWED_AMOUNT, DENIED_AMOUNT = 250, 5000
#: The environment valid mandates are bound to; the attestation proves it.
BINDING = {"cluster": DEV_ENV["cluster"], "region": DEV_ENV["region"]}

VALID = "valid"
#: Each caller-side deny the workload sends, and the reason it must get.
DENIES: dict[str, str] = {
    "malformed": "MALFORMED_REQUEST",
    "no mandate": "MISSING_AUTHORIZATION",
    "forged mandate": "INVALID_VERIFICATION",
    "expired mandate": "EXPIRED_AUTHORIZATION",
    "replayed proof": "REPLAY_DETECTED",
    "other environment": "ENVIRONMENT_MISMATCH",
    "unknown runtime": "RUNTIME_INTEGRITY_FAILURE",
    "over the policy's cap": "POLICY_MISMATCH",
}
_REPLAY = "replayed proof"


@dataclass(frozen=True)
class Planned:
    """One request of a run, and what it must get."""

    kind: str  # VALID or a key of DENIES
    request: engine_pb2.AuthorizeRequest | None  # None: a replay, resolved when sent

    @property
    def expected(self) -> str:
        """ "ALLOW", or the reason the deny must carry."""
        return "ALLOW" if self.kind == VALID else DENIES[self.kind]


@dataclass
class Workload:
    """Makes the requests of each run from one development trust setup."""

    setup: DevSetup
    #: Every n-th request is a deny (0: valid requests only).
    deny_every: int = 10
    _allowed: deque[engine_pb2.AuthorizeRequest] = field(default_factory=lambda: deque(maxlen=64))

    def __post_init__(self) -> None:
        self.agent = Initiator(self.setup.dev_key("agent"))
        issuer = self.setup.dev_key("issuer")
        mandate: dict[str, Any] = {
            "issuer": DEV_ISSUER,
            "subject": DEV_SUBJECT,
            "holder_thumbprint": self.agent.thumbprint,
            "scope": [{"action": ACTION, "resource": "account:acme/*"}],
            "env": BINDING,
        }
        self._mandate = issue_mandate(issuer, ttl_s=24 * 3600, **mandate)
        self._forged = issue_mandate(generate_ed25519(), ttl_s=24 * 3600, **mandate)
        # Issued two hours ago for ten minutes: past its exp by far more than any skew.
        self._expired = issue_mandate(
            issuer, ttl_s=600, clock=lambda: time.time() - 7200, **mandate
        )

    def plan(self, count: int, *, denies: bool = True) -> list[Planned]:
        """`count` requests, proofs made now (so that signing is not measured).

        Without `denies`, every request is valid: a warm-up, which also gives
        the replays of later plans something ALLOWed to resend.

        The proof window (60 s by default) bounds how long a plan stays valid:
        plan each run just before it.
        """
        attested = self._attestation(DEV_ENV, DEV_MEASUREMENT)
        elsewhere = self._attestation({**DEV_ENV, "cluster": "prod"}, DEV_MEASUREMENT)
        tampered = self._attestation(DEV_ENV, "sha256:" + "0" * 64)
        kinds = list(DENIES)
        planned = []
        for n in range(count):
            kind = VALID
            if denies and self.deny_every and n % self.deny_every == self.deny_every - 1:
                kind = kinds[(n // self.deny_every) % len(kinds)]
            mandate, attestation, resource, amount = self._mandate, attested, RESOURCE, None
            match kind:
                case "malformed":
                    resource = "account:acme/Treasury"  # upper case: outside the name grammar
                case "no mandate":
                    mandate = ""
                case "forged mandate":
                    mandate = self._forged
                case "expired mandate":
                    mandate = self._expired
                case "other environment":
                    attestation = elsewhere
                case "unknown runtime":
                    attestation = tampered
                case "over the policy's cap":
                    amount = DENIED_AMOUNT
            if kind == _REPLAY:
                planned.append(Planned(kind, None))
                continue
            # A distinct context per request: every valid one has its own digest.
            context = {"amount": amount or ALLOWED_AMOUNT, "n": n}
            request = engine_pb2.AuthorizeRequest(
                action=ACTION,
                resource=resource,
                mandate=mandate,
                attestation=attestation,
                proof=self.agent.proof(mandate or self._mandate, ACTION, resource, context),
            )
            json_format.ParseDict(context, request.context)
            planned.append(Planned(kind, request))
        return planned

    def request(self, planned: Planned) -> engine_pb2.AuthorizeRequest:
        """The request to send for `planned`: a replay resends one already ALLOWed."""
        if planned.request is not None:
            return planned.request
        if not self._allowed:
            raise RuntimeError("a replay needs an ALLOWed request first: warm the mesh up")
        return self._allowed[-1]

    def allowed(self, request: engine_pb2.AuthorizeRequest) -> None:
        """Note a request the mesh ALLOWed: the next replays resend it."""
        self._allowed.append(request)

    def _attestation(self, env: dict[str, str], measurement: str) -> str:
        return issue_attestation(
            self.setup.dev_key("attestor"),
            issuer=DEV_ATTESTOR,
            subject=DEV_SUBJECT,
            holder_thumbprint=self.agent.thumbprint,
            env=env,
            measurements=[measurement],
            ttl_s=300,
        )
