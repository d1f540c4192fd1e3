"""The gRPC edge of the policy authority: protobuf in, core calls, protobuf out."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, NoReturn, TypeVar, cast

import asyncpg
import grpc
from google.protobuf import json_format, timestamp_pb2
from sqlalchemy.exc import SQLAlchemyError

from govmesh.artifacts.answers import MAX_MESSAGE_TEXT_BYTES, clip, clip_list, evaluate_answer_bound
from govmesh.policy.authority import Authority, NotReady
from govmesh.policy.bundle import CompiledBundle
from govmesh.policy.core import PolicyDecision, PolicyRequest
from govmesh.policy.metrics import PolicyMetrics
from govmesh.policy.store import (
    EpochRecord,
    PolicyStore,
    ShadowRecord,
    StoredBundle,
    UnknownBundle,
)
from govmesh.runtime.db import DatabaseUnavailable
from govmesh.runtime.status import abort_with
from govmesh.runtime.streams import BatchSizeError, answer_batches
from govmesh.v1 import common_pb2, policy_pb2, policy_pb2_grpc

logger = logging.getLogger(__name__)

T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]

DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 1000

#: What a caller reads when the policy service fails in a way it did not mean to.
INTERNAL_MESSAGE = "policy failed"


async def _guarded(context: Context, call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except (SQLAlchemyError, OSError, asyncpg.PostgresError) as exc:
        logger.warning("policy store unavailable: %s", exc)
        await _abort(context, DatabaseUnavailable("the policy store is unavailable"))
    except Exception as exc:
        await _abort(context, exc)


async def _abort(context: Context, exc: BaseException) -> NoReturn:
    # The status comes from the error's kind (govmesh.runtime.status); only
    # the wording of a replica without a bundle is the edge's own.
    message = f"no valid policy bundle: {exc}" if isinstance(exc, NotReady) else None
    await abort_with(context, exc, message=message, internal_message=INTERNAL_MESSAGE)


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _decision(decision: PolicyDecision) -> common_pb2.Decision.ValueType:
    return common_pb2.ALLOW if decision.allowed else common_pb2.DENY


def epoch_info(record: EpochRecord) -> policy_pb2.EpochInfo:
    """An epoch of the history as protobuf."""
    return policy_pb2.EpochInfo(
        epoch=record.epoch,
        active_version=record.active_version,
        shadow_version=record.shadow_version or "",
        signer_kid=record.signer_kid,
        note=record.note,
        created_at=_timestamp(record.created_at),
        statement=record.statement,
    )


def bundle_info(
    stored: StoredBundle, compiled: CompiledBundle | None = None
) -> policy_pb2.BundleInfo:
    """A bundle's description as protobuf; files and ids when it is compiled."""
    info = policy_pb2.BundleInfo(
        version=stored.version,
        signer_kid=stored.signer_kid,
        policy_count=stored.policy_count,
        has_schema=stored.has_schema,
        metadata=stored.metadata,
        published_at=_timestamp(stored.published_at),
    )
    if compiled is not None:
        info.files.extend(sorted(p.name for p in compiled.source.policies))
        info.policy_ids.extend(compiled.policy_ids)
    return info


def _disagreement(record: ShadowRecord) -> policy_pb2.ShadowDisagreement:
    message = policy_pb2.ShadowDisagreement(
        epoch=record.epoch,
        recorded_at=_timestamp(record.recorded_at),
        request_digest=record.request_digest,
        decision_id=record.decision_id,
        principal=record.principal,
        issuer=record.issuer,
        action=record.action,
        resource=record.resource,
        active_decision=common_pb2.Decision.Value(record.active_decision),
        active_determining=record.active_determining,
        active_errors=record.active_errors,
        shadow_decision=common_pb2.Decision.Value(record.shadow_decision),
        shadow_determining=record.shadow_determining,
        shadow_errors=record.shadow_errors,
    )
    json_format.ParseDict(record.context, message.context)
    return message


def _limit(requested: int) -> int:
    return min(requested or DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)


#: The most requests one EvaluateBatch may carry.
MAX_BATCH = 1024


class PolicyServicer(policy_pb2_grpc.PolicyAuthorityServicer):
    """Answers Evaluate under the current snapshot, and the bundle administration calls."""

    def __init__(
        self, *, authority: Authority, store: PolicyStore, metrics: PolicyMetrics | None = None
    ) -> None:
        self._authority = authority
        self._store = store
        self._metrics = metrics

    async def Evaluate(
        self, request: policy_pb2.EvaluateRequest, context: Context
    ) -> policy_pb2.EvaluateResponse:
        await self._require_bundle(context)
        try:
            return self._evaluate(request)
        except Exception as exc:
            await _abort(context, exc)

    async def EvaluateBatch(
        self, request: policy_pb2.EvaluateBatchRequest, context: Context
    ) -> policy_pb2.EvaluateBatchResponse:
        if not 0 < len(request.requests) <= MAX_BATCH:
            await _abort(context, BatchSizeError(MAX_BATCH, "requests"))
        await self._require_bundle(context)
        try:
            # No await between the evaluations: the whole batch sees one snapshot.
            answers = [self._evaluate(r) for r in request.requests]
        except Exception as exc:
            await _abort(context, exc)
        return policy_pb2.EvaluateBatchResponse(responses=answers)

    async def EvaluateStream(
        self, request_iterator: AsyncIterator[policy_pb2.EvaluateBatchRequest], context: Context
    ) -> AsyncIterator[policy_pb2.EvaluateBatchResponse]:
        async def answer(
            request: policy_pb2.EvaluateBatchRequest,
        ) -> policy_pb2.EvaluateBatchResponse:
            # What EvaluateBatch would end with as its status is the batch's error.
            response = policy_pb2.EvaluateBatchResponse(sequence=request.sequence)
            if not 0 < len(request.requests) <= MAX_BATCH:
                response.error = str(BatchSizeError(MAX_BATCH, "requests"))
            elif self._authority.snapshot is None:
                response.error = f"no valid policy bundle loaded: {self._authority.problem}"
            else:
                try:
                    # No await between the evaluations: the whole batch sees one snapshot.
                    response.responses.extend([self._evaluate(r) for r in request.requests])
                except NotReady as exc:
                    del response.responses[:]
                    response.error = f"no valid policy bundle: {exc}"
                except Exception:
                    logger.exception("policy batch failed")
                    del response.responses[:]
                    response.error = "policy evaluation failed"
            return response

        async for response in answer_batches(request_iterator, answer):
            yield response

    async def _require_bundle(self, context: Context) -> None:
        if self._authority.snapshot is None:
            problem = self._authority.problem
            await abort_with(
                context, NotReady(problem), message=f"no valid policy bundle loaded: {problem}"
            )

    def _evaluate(self, request: policy_pb2.EvaluateRequest) -> policy_pb2.EvaluateResponse:
        started = time.perf_counter()
        answer = self._authority.evaluate(
            PolicyRequest(
                principal=request.principal,
                issuer=request.issuer,
                action=request.action,
                resource=request.resource,
                # Read straight from the Struct (a Mapping): numbers arrive as doubles.
                context=cast(Mapping[str, Any], request.context),
            ),
            request_digest=request.request_digest,
            decision_id=request.decision_id,
        )
        if self._metrics is not None:
            self._metrics.evaluated(answer, time.perf_counter() - started)
        response = self._response(
            request, answer.snapshot.epoch, answer.snapshot.active.version, answer.active
        )
        if answer.shadow is not None and answer.snapshot.shadow is not None:
            response.shadow.CopyFrom(
                policy_pb2.ShadowEvaluation(
                    bundle=common_pb2.BundleRef(
                        version=answer.snapshot.shadow.version, epoch=answer.snapshot.epoch
                    ),
                    decision=_decision(answer.shadow),
                    determining_policies=clip_list(answer.shadow.determining),
                    errors=clip_list(answer.shadow.errors),
                )
            )
        if response.ByteSize() > evaluate_answer_bound(request):
            # Cannot happen with the lists and message clipped; should it
            # anyway, a fixed-size deny rather than an answer that could fail
            # the batch it travels in.
            logger.error("policy answer exceeds its bound; answering a deny")
            return self._response(
                request,
                answer.snapshot.epoch,
                answer.snapshot.active.version,
                PolicyDecision(False, errors=("the answer exceeded its size bound",)),
            )
        return response

    @staticmethod
    def _response(
        request: policy_pb2.EvaluateRequest, epoch: int, version: str, decision: PolicyDecision
    ) -> policy_pb2.EvaluateResponse:
        # Errors quote the caller's context and any number of policies may
        # determine: both lists and the message are clipped, so that the
        # answer stays within evaluate_answer_bound.
        errors, determining = clip_list(decision.errors), clip_list(decision.determining)
        if errors:
            message = "policy evaluation failed: " + "; ".join(errors)
        elif decision.allowed:
            message = "permitted by " + ", ".join(determining)
        elif determining:
            message = "forbidden by " + ", ".join(determining)
        else:
            message = "no policy permits this request"
        return policy_pb2.EvaluateResponse(
            request_digest=request.request_digest,
            decision=_decision(decision),
            bundle=common_pb2.BundleRef(version=version, epoch=epoch),
            determining_policies=determining,
            errors=errors,
            message=clip(message, MAX_MESSAGE_TEXT_BYTES),
        )

    # --- administration -----------------------------------------------------------------

    async def PublishBundle(
        self, request: policy_pb2.PublishBundleRequest, context: Context
    ) -> policy_pb2.PublishBundleResponse:
        published = await _guarded(
            context,
            lambda: self._authority.publish(
                request.bundle.content,
                request.bundle.signature,
                request.activation,
                note=request.note,
            ),
        )
        response = policy_pb2.PublishBundleResponse(
            bundle=bundle_info(published.stored, published.bundle), created=published.created
        )
        if published.epoch is not None:
            response.epoch.CopyFrom(epoch_info(published.epoch))
        return response

    async def Activate(
        self, request: policy_pb2.ActivateRequest, context: Context
    ) -> policy_pb2.ActivateResponse:
        record = await _guarded(
            context, lambda: self._authority.activate(request.activation, note=request.note)
        )
        return policy_pb2.ActivateResponse(epoch=epoch_info(record))

    async def GetState(
        self, request: policy_pb2.GetStateRequest, context: Context
    ) -> policy_pb2.PolicyState:
        current = await _guarded(context, self._store.current)
        state = policy_pb2.PolicyState(ready=self._authority.ready, problem=self._authority.problem)
        if current is not None:
            state.current.CopyFrom(epoch_info(current))
        snapshot = self._authority.snapshot
        if snapshot is not None:
            state.serving.CopyFrom(
                common_pb2.BundleRef(version=snapshot.active.version, epoch=snapshot.epoch)
            )
            if snapshot.shadow is not None:
                state.shadow.CopyFrom(
                    common_pb2.BundleRef(version=snapshot.shadow.version, epoch=snapshot.epoch)
                )
        return state

    async def ListBundles(
        self, request: policy_pb2.ListBundlesRequest, context: Context
    ) -> policy_pb2.ListBundlesResponse:
        limit = _limit(request.limit)
        bundles = await _guarded(context, lambda: self._store.bundles(limit))
        history = await _guarded(context, lambda: self._store.history(limit))
        return policy_pb2.ListBundlesResponse(
            bundles=[bundle_info(b) for b in bundles], history=[epoch_info(e) for e in history]
        )

    async def GetBundle(
        self, request: policy_pb2.GetBundleRequest, context: Context
    ) -> policy_pb2.GetBundleResponse:
        async def get() -> policy_pb2.GetBundleResponse:
            version = await self._store.resolve(request.version)
            stored = await self._store.bundle(version)
            if stored is None:
                raise UnknownBundle(f"no bundle has version {version}")
            compiled = await self._authority.compiled(version)
            epochs = await self._store.history(MAX_LIST_LIMIT, version=version)
            return policy_pb2.GetBundleResponse(
                info=bundle_info(stored, compiled),
                bundle=policy_pb2.SignedBundle(content=stored.content, signature=stored.signature),
                epochs=[epoch_info(e) for e in epochs],
            )

        return await _guarded(context, get)

    async def ShadowReport(
        self, request: policy_pb2.ShadowReportRequest, context: Context
    ) -> policy_pb2.ShadowReportResponse:
        async def report() -> policy_pb2.ShadowReportResponse:
            record = await self._shadow_epoch(request.epoch)
            assert record.shadow_version is not None
            epochs, counts, records = await self._store.shadow_report(
                record.active_version, record.shadow_version, _limit(request.limit)
            )
            return policy_pb2.ShadowReportResponse(
                active_version=record.active_version,
                shadow_version=record.shadow_version,
                epochs=epochs,
                evaluated=counts.evaluated,
                disagreed=counts.disagreed,
                dropped=counts.dropped,
                disagreements=[_disagreement(r) for r in records],
            )

        return await _guarded(context, report)

    async def _shadow_epoch(self, epoch: int) -> EpochRecord:
        if epoch:
            record = await self._store.epoch(epoch)
            if record is None:
                raise UnknownBundle(f"no epoch {epoch}")
            if record.shadow_version is None:
                raise UnknownBundle(f"epoch {epoch} has no shadow bundle")
            return record
        for record in await self._store.history(MAX_LIST_LIMIT):
            if record.shadow_version is not None:
                return record
        raise UnknownBundle("no epoch has had a shadow bundle")
