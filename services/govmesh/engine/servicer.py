"""The gRPC edge of the engine: the public AuthorizationEngine API."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
import uuid

import grpc
from google.protobuf.message import DecodeError
from grpc_status import rpc_status

from govmesh.engine.admission import Admission, Refusal, Refused
from govmesh.engine.core import Engine
from govmesh.engine.metrics import EngineMetrics
from govmesh.engine.requests import UnreadableRequest
from govmesh.runtime.status import to_rpc_status
from govmesh.v1 import common_pb2, engine_pb2, engine_pb2_grpc

logger = logging.getLogger(__name__)

#: The google.rpc.ErrorInfo reasons of an admission refusal (govmesh.runtime.status);
#: the client reads them to tell a busy engine from a request too large to send.
REFUSAL_REASONS = {
    Refusal.QUEUE_FULL: "ADMISSION_QUEUE_FULL",
    Refusal.DEADLINE: "ADMISSION_DEADLINE_TOO_SHORT",
}
#: The `reason` label of govmesh_engine_admission_refusals_total.
REFUSAL_LABELS = {Refusal.QUEUE_FULL: "queue_full", Refusal.DEADLINE: "deadline_too_short"}


class EngineServicer(engine_pb2_grpc.AuthorizationEngineServicer):
    """Answers Authorize; a deny is an answer, never a gRPC error.

    A request first waits for admission (govmesh.engine.admission). One that
    is refused there gets RESOURCE_EXHAUSTED, the one error that is not a
    deny: it was never decided, took no decision id or sequence number, and
    has nothing to record in lineage. Once
    admitted, each decision runs as its own task, shielded from the call: a
    caller that cancels, or whose deadline passes, stops waiting for the
    answer, but the decision is still recorded in lineage or the spool, and
    keeps its admission slot until it is. A caller cannot keep its denies out
    of the log by hanging up.
    """

    def __init__(
        self, *, engine: Engine, admission: Admission, metrics: EngineMetrics | None = None
    ) -> None:
        self._engine = engine
        self._admission = admission
        self._metrics = metrics
        if metrics is not None:
            # Read when scraped, nothing on the decision path.
            metrics.admission_queue_depth.set_function(lambda: admission.stats().queued)
        self._in_flight: set[asyncio.Task[engine_pb2.AuthorizeResponse]] = set()

    @property
    def admission(self) -> Admission:
        """The admission controller, whose stats() count refusals."""
        return self._admission

    async def drain(self, timeout: float) -> None:
        """Wait (at most `timeout`) for the decisions still being recorded."""
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=timeout)

    async def Authorize(
        self,
        request: engine_pb2.AuthorizeRequest,
        context: grpc.aio.ServicerContext[
            engine_pb2.AuthorizeRequest, engine_pb2.AuthorizeResponse
        ],
    ) -> engine_pb2.AuthorizeResponse:
        try:
            slot = await self._admission.admit(time_remaining=context.time_remaining())
        except Refused as refused:
            if self._metrics is not None:
                self._metrics.refusal(REFUSAL_LABELS[refused.why]).inc()
            # Not decided, so not answered with a decision: an error the
            # client reads as DENY, never a partial decision.
            await context.abort_with_status(refusal_status(refused))
        # The decision's budget starts inside authorize, now that it is admitted,
        # and stretches to what the caller's deadline leaves (none: as far as it goes).
        remaining = context.time_remaining()
        started = time.perf_counter()
        decision = asyncio.ensure_future(
            self._engine.authorize(
                request, time_remaining=math.inf if remaining is None else remaining
            )
        )
        self._in_flight.add(decision)
        decision.add_done_callback(self._in_flight.discard)
        decision.add_done_callback(lambda _: slot.release())
        if self._metrics is not None:
            # Counted when the decision is made, whether or not its caller still waits.
            decision.add_done_callback(functools.partial(_observe, self._metrics, started))
        try:
            return await asyncio.shield(decision)
        except Exception:
            # Engine.authorize already turns failures into denies; this is the
            # last line, and it too answers DENY rather than an error.
            logger.exception("authorize failed outside the decision path")
            return engine_pb2.AuthorizeResponse(
                decision=common_pb2.DENY,
                reason=common_pb2.INTERNAL_ERROR,
                decision_id=str(uuid.uuid4()),
                failed_checks=["engine"],
                message="internal error",
            )


def refusal_status(refused: Refused) -> grpc.Status:
    """RESOURCE_EXHAUSTED with a google.rpc.Status naming why and when to try again.

    Refused is an Exhausted error; its reason depends on why it was refused,
    and the caller learns how long it would have waited.
    """
    status: grpc.Status = rpc_status.to_status(
        to_rpc_status(
            refused,
            message=f"engine busy: {refused.why.value}",
            reason=REFUSAL_REASONS[refused.why],
            metadata={
                "expected_wait_ms": f"{refused.expected_wait_s * 1000:.0f}",
                "queued": str(refused.queued),
            },
            retry_delay=refused.expected_wait_s,
        )
    )
    return status


def _observe(
    metrics: EngineMetrics, started: float, decision: asyncio.Future[engine_pb2.AuthorizeResponse]
) -> None:
    seconds = time.perf_counter() - started
    if decision.cancelled() or decision.exception() is not None:
        # Authorize answers these with DENY INTERNAL_ERROR.
        metrics.decided(common_pb2.DENY, common_pb2.INTERNAL_ERROR, seconds)
        return
    answer = decision.result()
    metrics.decided(answer.decision, answer.reason, seconds)


def read_request(data: bytes) -> engine_pb2.AuthorizeRequest | UnreadableRequest:
    """Parse a request without failing: unparsable bytes become a request to deny."""
    try:
        return engine_pb2.AuthorizeRequest.FromString(data)
    except DecodeError:
        return UnreadableRequest("the request is not a valid AuthorizeRequest protobuf")


def add_to_server(servicer: EngineServicer, server: grpc.aio.Server) -> None:
    """Register the engine so that even unparsable requests get an answered DENY.

    The generated registration would let grpc answer such bytes with an UNKNOWN
    error naming a Python exception; the public API answers with a decision.
    """
    handler = grpc.unary_unary_rpc_method_handler(
        servicer.Authorize,
        request_deserializer=read_request,
        response_serializer=engine_pb2.AuthorizeResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, {"Authorize": handler}),)
    )


SERVICE_NAME = engine_pb2.DESCRIPTOR.services_by_name["AuthorizationEngine"].full_name
