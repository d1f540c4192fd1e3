"""The gRPC edge of the policy authority."""

from __future__ import annotations

import grpc
from google.protobuf import json_format

from govmesh.policy.core import Bundle, PolicyInput, evaluate
from govmesh.v1 import common_pb2, policy_pb2, policy_pb2_grpc


class PolicyServicer(policy_pb2_grpc.PolicyAuthorityServicer):
    """Answers Evaluate calls under the loaded bundle."""

    def __init__(self, *, bundle: Bundle) -> None:
        self._bundle = bundle

    async def Evaluate(
        self,
        request: policy_pb2.EvaluateRequest,
        context: grpc.aio.ServicerContext[policy_pb2.EvaluateRequest, policy_pb2.EvaluateResponse],
    ) -> policy_pb2.EvaluateResponse:
        bundle = self._bundle
        decision = evaluate(
            bundle,
            PolicyInput(
                principal=request.principal,
                action=request.action,
                resource=request.resource,
                context=json_format.MessageToDict(request.context),
            ),
        )
        return policy_pb2.EvaluateResponse(
            request_digest=request.request_digest,
            decision=common_pb2.ALLOW if decision.allowed else common_pb2.DENY,
            bundle=common_pb2.BundleRef(version=bundle.version, epoch=bundle.epoch),
            determining_policies=decision.determining_policies,
            errors=decision.errors,
            message="; ".join(decision.errors),
        )
