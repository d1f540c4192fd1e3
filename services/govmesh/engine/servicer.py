"""The gRPC edge of the engine: the public AuthorizationEngine API."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid

import grpc
from google.protobuf.message import DecodeError

from govmesh.engine.core import Engine, UnreadableRequest
from govmesh.engine.metrics import EngineMetrics
from govmesh.v1 import common_pb2, engine_pb2, engine_pb2_grpc

logger = logging.getLogger(__name__)


class EngineServicer(engine_pb2_grpc.AuthorizationEngineServicer):
    """Answers Authorize; a deny is an answer, never a gRPC error.

    Each decision runs as its own task, shielded from the call: a caller that
    cancels, or whose deadline passes, stops waiting for the answer, but the
    decision is still recorded in lineage or the spool. A caller cannot keep
    its denies out of the log by hanging up.
    """

    def __init__(self, *, engine: Engine, metrics: EngineMetrics | None = None) -> None:
        self._engine = engine
        self._metrics = metrics
        self._in_flight: set[asyncio.Task[engine_pb2.AuthorizeResponse]] = set()

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
        started = time.perf_counter()
        decision = asyncio.ensure_future(self._engine.authorize(request))
        self._in_flight.add(decision)
        decision.add_done_callback(self._in_flight.discard)
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
