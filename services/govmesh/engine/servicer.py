"""The gRPC edge of the engine: the public AuthorizationEngine API."""

from __future__ import annotations

import logging
import uuid

import grpc
from govmesh.engine.core import Engine
from govmesh.v1 import common_pb2, engine_pb2, engine_pb2_grpc

logger = logging.getLogger(__name__)


class EngineServicer(engine_pb2_grpc.AuthorizationEngineServicer):
    """Answers Authorize; a deny is an answer, never a gRPC error."""

    def __init__(self, *, engine: Engine) -> None:
        self._engine = engine

    async def Authorize(
        self,
        request: engine_pb2.AuthorizeRequest,
        context: grpc.aio.ServicerContext[
            engine_pb2.AuthorizeRequest, engine_pb2.AuthorizeResponse
        ],
    ) -> engine_pb2.AuthorizeResponse:
        try:
            return await self._engine.authorize(request)
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
