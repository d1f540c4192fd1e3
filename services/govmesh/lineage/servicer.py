"""The gRPC edge of the lineage service."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grpc
from sqlalchemy.exc import SQLAlchemyError

from govmesh.lineage.core import EntryRejected, Receipt, check_entry
from govmesh.lineage.store import LineageStore
from govmesh.v1 import common_pb2, lineage_pb2, lineage_pb2_grpc

logger = logging.getLogger(__name__)

MAX_BATCH = 4096


def _receipt(receipt: Receipt) -> common_pb2.LineageReceipt:
    return common_pb2.LineageReceipt(
        index=receipt.index,
        leaf_hash=receipt.leaf_hash,
        tree_size=receipt.tree_size,
        checkpoint=receipt.checkpoint,
    )


class LineageServicer(lineage_pb2_grpc.LineageServicer):
    """Appends decisions to the log and reads them back."""

    def __init__(self, *, store: LineageStore) -> None:
        self._store = store

    async def _append(
        self,
        requests: Sequence[lineage_pb2.AppendRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> list[lineage_pb2.AppendResponse]:
        responses = [lineage_pb2.AppendResponse(decision_id=r.decision_id) for r in requests]
        checked = []
        positions = []
        for position, request in enumerate(requests):
            try:
                checked.append(check_entry(request.entry, request.decision_id))
                positions.append(position)
            except EntryRejected as exc:
                responses[position].error = str(exc)
        if checked:
            try:
                results = await self._store.append(checked)
            except (SQLAlchemyError, OSError) as exc:
                logger.warning("append failed", extra={"error": str(exc)})
                await context.abort(grpc.StatusCode.UNAVAILABLE, "lineage store unavailable")
            for position, result in zip(positions, results, strict=True):
                if isinstance(result, Receipt):
                    responses[position].receipt.CopyFrom(_receipt(result))
                else:
                    responses[position].error = str(result)
        return responses

    async def Append(
        self, request: lineage_pb2.AppendRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> lineage_pb2.AppendResponse:
        [response] = await self._append([request], context)
        if response.error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, response.error)
        return response

    async def AppendBatch(
        self, request: lineage_pb2.AppendBatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> lineage_pb2.AppendBatchResponse:
        if not 0 < len(request.entries) <= MAX_BATCH:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"a batch holds 1..{MAX_BATCH} entries"
            )
        return lineage_pb2.AppendBatchResponse(
            results=await self._append(list(request.entries), context)
        )

    async def GetCheckpoint(
        self, request: lineage_pb2.GetCheckpointRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> lineage_pb2.GetCheckpointResponse:
        return lineage_pb2.GetCheckpointResponse(tree_size=await self._store.size())

    async def GetEntry(
        self, request: lineage_pb2.GetEntryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> lineage_pb2.GetEntryResponse:
        try:
            found = await self._store.get(request.decision_id)
        except SQLAlchemyError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "decision_id is not a UUID")
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such decision")
        index, entry, leaf = found
        return lineage_pb2.GetEntryResponse(index=index, entry=entry, leaf_hash=leaf)
