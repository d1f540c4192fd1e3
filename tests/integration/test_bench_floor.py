"""The transport floor carries every call through each of its peers, as the engine does."""

from __future__ import annotations

import os
import signal

import grpc
import pytest

from govmesh.bench.echo import ECHO_ANSWER
from govmesh.bench.floor import SHAPES, floor_mesh
from govmesh.v1 import engine_pb2, engine_pb2_grpc

REQUEST = engine_pb2.AuthorizeRequest(
    action="payments.transfer", resource="account:acme/treasury", mandate="m", proof="p"
)


def _authorize(target: str, timeout: float) -> engine_pb2.AuthorizeResponse:
    with grpc.insecure_channel(target) as channel:
        stub = engine_pb2_grpc.AuthorizationEngineStub(channel)
        answer: engine_pb2.AuthorizeResponse = stub.Authorize(REQUEST, timeout=timeout)
        return answer


@pytest.mark.parametrize("peers", [3, 1])
def test_each_call_waits_for_every_peer_of_the_floor(peers: int) -> None:
    with floor_mesh(peers) as floor:
        assert set(floor.processes) == {"front", *SHAPES[peers]}
        assert _authorize(floor.target, timeout=10) == ECHO_ANSWER
        for role, peer in floor.processes.items():
            if role == "front":
                continue
            os.kill(peer.pid, signal.SIGSTOP)
            try:
                with pytest.raises(grpc.RpcError) as stalled:
                    _authorize(floor.target, timeout=0.5)
                assert stalled.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            finally:
                os.kill(peer.pid, signal.SIGCONT)
            # The peer answers the batch it held; the next call goes through again.
            assert _authorize(floor.target, timeout=10) == ECHO_ANSWER


def test_the_floor_takes_only_its_two_shapes() -> None:
    with pytest.raises(ValueError, match="3 peers"), floor_mesh(2):
        pass
