"""In-memory peers for engine unit tests: honest by default, each fault injectable."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from joserfc.jwk import OKPKey

from govmesh.artifacts.checks import REQUIRED_CHECKS
from govmesh.engine.consistency import EpochTracker
from govmesh.engine.core import DecisionConfig, Engine
from govmesh.engine.grants import Ed25519GrantSigner
from govmesh.engine.protocols import PeerUnavailable
from govmesh.lineage.core import EntryRejected, check_entry, leaf_hash
from govmesh.v1 import common_pb2, engine_pb2, policy_pb2, verification_pb2

SUBJECT = "spiffe://test/agent"
ISSUER = "https://issuer.test"
BUNDLE = common_pb2.BundleRef(version="b" * 64, epoch=3)


def jws(payload: Mapping[str, Any]) -> str:
    """An unsigned compact JWS shape with `payload`: the engine only reads claims from it."""
    from govmesh.artifacts.canonical import b64url

    return ".".join(
        [b64url(b'{"alg":"EdDSA"}'), b64url(json.dumps(payload).encode()), b64url(b"sig")]
    )


def authorize_request(**overrides: Any) -> engine_pb2.AuthorizeRequest:
    """A well-formed request whose mandate names SUBJECT, issued by ISSUER."""
    context = overrides.pop("context", {"amount": 250})
    fields: dict[str, Any] = {
        "action": "payments.transfer",
        "resource": "account:acme/treasury",
        "mandate": jws({"iss": ISSUER, "sub": SUBJECT, "att": {"session": "s1"}}),
        "proof": jws({"jti": "p1"}),
        **overrides,
    }
    request = engine_pb2.AuthorizeRequest(**fields)
    json_format.ParseDict(context, request.context)
    return request


def passing_verification(
    request: verification_pb2.VerifyRequest,
) -> verification_pb2.VerifyResponse:
    """What an honest verification service answers for a valid request."""
    response = verification_pb2.VerifyResponse(request_digest=request.request_digest, verified=True)
    for check in REQUIRED_CHECKS:
        response.checks.add(name=check.value, verdict=common_pb2.CHECK_PASSED)
    response.claims.subject = SUBJECT
    response.claims.issuer = ISSUER
    response.claims.cnf_jkt = "jkt"
    response.claims.attestor = "https://attestor.test"
    response.claims.measurements.append("sha256:" + "ab" * 32)
    response.trust_version = "trust-v1"
    json_format.ParseDict({"session": "s1"}, response.claims.attribution)
    return response


def permitting_policy(request: policy_pb2.EvaluateRequest) -> policy_pb2.EvaluateResponse:
    """What an honest policy authority answers when a policy permits."""
    return policy_pb2.EvaluateResponse(
        request_digest=request.request_digest,
        decision=common_pb2.ALLOW,
        bundle=BUNDLE,
        determining_policies=["permit-all"],
    )


@dataclass
class FakeVerification:
    """Answers with `answer(request)`; `delay` seconds first; `error` raised instead."""

    answer: Callable[[verification_pb2.VerifyRequest], verification_pb2.VerifyResponse] = (
        passing_verification
    )
    delay: float = 0.0
    error: BaseException | None = None
    calls: list[verification_pb2.VerifyRequest] = field(default_factory=list)

    async def verify(
        self, request: verification_pb2.VerifyRequest, *, timeout: float
    ) -> verification_pb2.VerifyResponse:
        self.calls.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.answer(request)


@dataclass
class FakePolicy:
    """Answers with `answer(request)`; `delay` seconds first; `error` raised instead."""

    answer: Callable[[policy_pb2.EvaluateRequest], policy_pb2.EvaluateResponse] = permitting_policy
    delay: float = 0.0
    error: BaseException | None = None
    calls: list[policy_pb2.EvaluateRequest] = field(default_factory=list)

    async def evaluate(
        self, request: policy_pb2.EvaluateRequest, *, timeout: float
    ) -> policy_pb2.EvaluateResponse:
        self.calls.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.answer(request)


@dataclass
class FakeLineage:
    """An in-memory log that commits and returns real receipts.

    It refuses what the lineage service refuses (its entry rules, a logged
    decision id), as the engine's lineage client reports it.
    """

    delay: float = 0.0
    error: BaseException | None = None
    entries: list[bytes] = field(default_factory=list)

    async def append(
        self, entry: bytes, decision_id: str, *, timeout: float
    ) -> common_pb2.LineageReceipt:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        try:
            check_entry(entry, decision_id)
        except EntryRejected as exc:
            raise PeerUnavailable(f"lineage refused the entry: {exc}") from None
        if any(json.loads(e)["decision_id"] == decision_id for e in self.entries):
            raise PeerUnavailable(f"lineage refused the entry: decision {decision_id} is logged")
        self.entries.append(entry)
        return common_pb2.LineageReceipt(
            index=len(self.entries) - 1,
            leaf_hash=leaf_hash(entry),
            tree_size=len(self.entries),
            checkpoint="test-checkpoint",
        )

    def decoded(self) -> list[dict[str, Any]]:
        return [json.loads(entry) for entry in self.entries]


@dataclass
class FakeSpool:
    """Keeps spooled denies in memory; `error` makes put() fail like a full disk."""

    error: OSError | None = None
    delay: float = 0.0
    entries: list[tuple[bytes, str]] = field(default_factory=list)

    async def put(self, entry: bytes, decision_id: str) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        self.entries.append((entry, decision_id))


@dataclass
class Harness:
    """An engine wired to fakes, with every fake reachable for fault injection."""

    engine: Engine
    verification: FakeVerification
    policy: FakePolicy
    lineage: FakeLineage
    spool: FakeSpool
    key: OKPKey


def build_engine(
    *,
    verification: FakeVerification | None = None,
    policy: FakePolicy | None = None,
    lineage: FakeLineage | None = None,
    spool: FakeSpool | None = None,
    config: DecisionConfig | None = None,
    clock: Callable[[], float] | None = None,
    epochs: EpochTracker | None = None,
    engine_id: str = "engine-test",
    monotonic: Callable[[], float] | None = None,
) -> Harness:
    """An engine over fakes; defaults are honest peers and generous deadlines."""
    import time

    from govmesh.artifacts.keys import generate_ed25519

    key = generate_ed25519()
    harness = Harness(
        engine=None,  # type: ignore[arg-type]
        verification=verification or FakeVerification(),
        policy=policy or FakePolicy(),
        lineage=lineage or FakeLineage(),
        spool=spool or FakeSpool(),
        key=key,
    )
    harness.engine = Engine(
        verification=harness.verification,
        policy=harness.policy,
        lineage=harness.lineage,
        spool=harness.spool,
        grants=Ed25519GrantSigner(
            key=key, issuer="govmesh", audience="executor", ttl_s=30, clock=clock or time.time
        ),
        config=config
        or DecisionConfig(
            verification_timeout_s=1.0, policy_timeout_s=1.0, lineage_timeout_s=1.0, budget_s=2.0
        ),
        engine_id=engine_id,
        epochs=epochs or EpochTracker.unsafe_without_store_floor(),
        clock=clock or time.time,
        monotonic=monotonic or time.monotonic,
    )
    return harness
