"""A paced load of valid and invalid Authorize calls, every answer recorded.

Four kinds of request, in a fixed rotation: `valid` (a good mandate and a
fresh proof), `forged` (a mandate signed by a key no issuer holds),
`replay` (a request sent before, its proof unchanged) and `forbidden`
(valid artifacts, an amount the sample policy caps). Every call records what
the caller saw: the decision, its reason, decision id, grant, lineage
receipt, latency, or the gRPC status when no answer came.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf import json_format

from govmesh.artifacts.canonical import b64url_decode
from govmesh.artifacts.keys import generate_ed25519
from govmesh.cli.devsetup import DEV_ISSUER, DEV_SUBJECT, DevSetup
from govmesh.client import Initiator, issue_mandate
from govmesh.v1 import common_pb2, engine_pb2, engine_pb2_grpc

KINDS = ("valid",) * 7 + ("forged", "replay", "forbidden")
ACTION, RESOURCE = "payments.transfer", "account:acme/treasury"


@dataclass(frozen=True)
class Outcome:
    """One call, as its caller saw it."""

    kind: str
    phase: str
    started: float  # monotonic
    latency: float
    code: str  # the gRPC status name; "OK" for an answer
    decision: str = ""  # "ALLOW" or "DENY" when answered
    reason: str = ""
    decision_id: str = ""
    grant: str = ""
    receipt_index: int | None = None
    receipt_leaf: bytes = b""
    proof_jti: str = ""

    @property
    def answered(self) -> bool:
        return self.code == "OK"


def _jti(token: str) -> str:
    payload = json.loads(b64url_decode(token.split(".")[1]))
    return str(payload["jti"])


class LoadGenerator:
    """Sends requests at `rate` per second, at most `concurrency` in flight."""

    def __init__(
        self,
        target: str,
        setup: DevSetup,
        *,
        rate: float,
        concurrency: int,
        timeout: float,
    ) -> None:
        self._target = target
        self._rate = rate
        self._concurrency = concurrency
        self._timeout = timeout
        self._agent = Initiator(setup.dev_key("agent"))
        scope = [{"action": ACTION, "resource": "account:acme/*"}]
        self._mandate = issue_mandate(
            setup.dev_key("issuer"),
            issuer=DEV_ISSUER,
            subject=DEV_SUBJECT,
            holder_thumbprint=self._agent.thumbprint,
            scope=scope,
            ttl_s=24 * 3600,
        )
        self._forged = issue_mandate(
            generate_ed25519(),
            issuer=DEV_ISSUER,
            subject=DEV_SUBJECT,
            holder_thumbprint=self._agent.thumbprint,
            scope=scope,
            ttl_s=24 * 3600,
        )
        self._sent: engine_pb2.AuthorizeRequest | None = None
        self.phase = "steady"
        self.outcomes: list[Outcome] = []
        self.listeners: list[Callable[[Outcome], None]] = []

    def _request(self, kind: str, n: int) -> engine_pb2.AuthorizeRequest:
        if kind == "replay" and self._sent is not None:
            return self._sent
        mandate = self._forged if kind == "forged" else self._mandate
        # A distinct context per call, so every valid request has its own digest.
        context = {"amount": 5000 if kind == "forbidden" else 250, "n": n}
        request = engine_pb2.AuthorizeRequest(
            action=ACTION,
            resource=RESOURCE,
            mandate=mandate,
            proof=self._agent.proof(mandate, ACTION, RESOURCE, context),
        )
        json_format.ParseDict(context, request.context)
        if kind == "valid":
            self._sent = request
        return request

    async def run(self, stop: asyncio.Event, *, max_requests: int | None = None) -> None:
        """Send until `stop` is set (or `max_requests` were sent); waits for the last answers."""
        async with grpc.aio.insecure_channel(
            self._target, options=[("grpc.max_reconnect_backoff_ms", 250)]
        ) as channel:
            stub = engine_pb2_grpc.AuthorizationEngineStub(channel)
            slots = asyncio.Semaphore(self._concurrency)
            calls: set[asyncio.Task[None]] = set()
            n = 0
            next_at = time.monotonic()
            while not stop.is_set() and (max_requests is None or n < max_requests):
                kind = KINDS[n % len(KINDS)]
                request = self._request(kind, n)
                await slots.acquire()
                call = asyncio.create_task(self._call(stub, kind, request, slots))
                calls.add(call)
                call.add_done_callback(calls.discard)
                n += 1
                next_at += 1 / self._rate
                delay = next_at - time.monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                else:
                    next_at = time.monotonic()  # behind: do not burst to catch up
            await asyncio.gather(*calls, return_exceptions=True)

    async def _call(
        self,
        stub: engine_pb2_grpc.AuthorizationEngineAsyncStub,
        kind: str,
        request: engine_pb2.AuthorizeRequest,
        slots: asyncio.Semaphore,
    ) -> None:
        phase = self.phase
        started = time.monotonic()
        try:
            response = await stub.Authorize(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            outcome = Outcome(
                kind=kind,
                phase=phase,
                started=started,
                latency=time.monotonic() - started,
                code=exc.code().name,
                proof_jti=_jti(request.proof),
            )
        else:
            receipt = response.lineage if response.HasField("lineage") else None
            outcome = Outcome(
                kind=kind,
                phase=phase,
                started=started,
                latency=time.monotonic() - started,
                code="OK",
                decision=common_pb2.Decision.Name(response.decision),
                reason=common_pb2.DenyReason.Name(response.reason),
                decision_id=response.decision_id,
                grant=response.grant,
                receipt_index=receipt.index if receipt is not None else None,
                receipt_leaf=receipt.leaf_hash if receipt is not None else b"",
                proof_jti=_jti(request.proof),
            )
        finally:
            slots.release()
        self.outcomes.append(outcome)
        for listener in self.listeners:
            listener(outcome)
