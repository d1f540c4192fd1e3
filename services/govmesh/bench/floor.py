"""The mesh's transport without its work: the floor the four-process design stands on.

    python -m govmesh.bench.floor peer PORT
    python -m govmesh.bench.floor front PORT LINEAGE [VERIFICATION POLICY]

A `front` answers Authorize in the engine's shape and nothing else: each call
becomes one VerifyRequest and one EvaluateRequest, sent concurrently, then
one AppendRequest, each through the engine's own peer transports
(`govmesh.engine.peers`: batches on long-lived streams) and batchers, with
the engine's default batch settings and the lineage linger that waits only
while other calls are on their way. It then answers with the echo's fixed
answer. A `peer` answers every batch on VerifyStream, EvaluateStream and
AppendStream at once, with one empty answer per request.

No signature, no JSON, no policy, no Postgres, no tracing: what the floor
costs is gRPC's and asyncio's own work for one call in and three batched
messages out over four processes. `govmesh bench --floor` drives it with the
same client and requests as the mesh, in the same run: what the mesh spends
above the floor is the decision's own work; what the floor itself spends no
change to that work can remove.

Given only LINEAGE, the front asks lineage alone: the floor of a design in
which verification and policy answer inside the engine's process, and only
the log stays a hop away.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import psutil

from govmesh.bench.echo import ECHO_ANSWER, authorize_server, serve_until_stopped
from govmesh.engine.batching import Batcher, SendBatch
from govmesh.engine.config import EngineSettings
from govmesh.engine.peers import GrpcLineage, GrpcPolicy, GrpcVerification, open_channel
from govmesh.faults.mesh import free_port
from govmesh.v1 import engine_pb2, lineage_pb2, policy_pb2, verification_pb2

#: Each batch may take this long; the floor's peers answer at once, so only a
#: machine stalled for seconds reaches it (the front then fails the call).
PEER_TIMEOUT_S = 10.0


# -- the peers -------------------------------------------------------------------------


def _answering(
    service: str,
    method: str,
    batch_type: Any,
    answer_type: Any,
    items: str,
    answers: str,
    item_type: Any,
) -> grpc.GenericRpcHandler:
    """`service/method` as a stream that answers each batch at once.

    Each answer echoes the batch's sequence and holds one empty answer per
    item of the batch (`items` and `answers` name the repeated fields).
    """

    async def handle(batches: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for batch in batches:
            count = len(getattr(batch, items))
            yield answer_type(sequence=batch.sequence, **{answers: [item_type()] * count})

    handler = grpc.stream_stream_rpc_method_handler(
        handle,
        request_deserializer=batch_type.FromString,
        response_serializer=answer_type.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(service, {method: handler})


def _service(module: Any, name: str) -> str:
    return str(module.DESCRIPTOR.services_by_name[name].full_name)


async def _peer(port: int) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            _answering(
                _service(verification_pb2, "Verification"),
                "VerifyStream",
                verification_pb2.VerifyBatchRequest,
                verification_pb2.VerifyBatchResponse,
                "requests",
                "responses",
                verification_pb2.VerifyResponse,
            ),
            _answering(
                _service(policy_pb2, "PolicyAuthority"),
                "EvaluateStream",
                policy_pb2.EvaluateBatchRequest,
                policy_pb2.EvaluateBatchResponse,
                "requests",
                "responses",
                policy_pb2.EvaluateResponse,
            ),
            _answering(
                _service(lineage_pb2, "Lineage"),
                "AppendStream",
                lineage_pb2.AppendBatchRequest,
                lineage_pb2.AppendBatchResponse,
                "entries",
                "results",
                lineage_pb2.AppendResponse,
            ),
        )
    )
    await serve_until_stopped(server, port)


# -- the front -------------------------------------------------------------------------


def _default(name: str) -> Any:
    return EngineSettings.model_fields[name].default


def _peer_batcher(name: str, send: SendBatch[Any, Any]) -> Batcher[Any, Any]:
    """A verification or policy batcher with the engine's default settings."""
    return Batcher(
        name=name,
        send=send,
        max_batch=_default("peer_batch_max"),
        max_in_flight=_default("peer_max_in_flight"),
        linger_s=_default("peer_linger_ms") / 1000,
    )


async def _front(port: int, lineage: str, checks: tuple[str, str] | None) -> None:
    """Answer Authorize through lineage and, when `checks` names them, verification and policy."""
    before_lineage = 0
    channels = [open_channel(lineage)]
    appender = GrpcLineage(channels[0])
    transports: list[GrpcLineage | GrpcVerification | GrpcPolicy] = [appender]
    append: Batcher[Any, Any] = Batcher(
        name="lineage",
        send=lambda requests, timeout: appender.append_batch(requests, timeout=timeout),
        max_batch=_default("lineage_batch_max"),
        max_in_flight=_default("lineage_max_in_flight"),
        linger_s=_default("lineage_linger_ms") / 1000,
        expected=lambda: before_lineage,
    )
    batchers = [append]
    ask: Callable[[engine_pb2.AuthorizeRequest], Awaitable[object]] | None = None
    if checks is not None:
        channels += [open_channel(target) for target in checks]
        verifier, evaluator = GrpcVerification(channels[1]), GrpcPolicy(channels[2])
        transports += [verifier, evaluator]
        verify = _peer_batcher(
            "verification",
            lambda requests, timeout: verifier.verify_batch(requests, timeout=timeout),
        )
        evaluate = _peer_batcher(
            "policy",
            lambda requests, timeout: evaluator.evaluate_batch(requests, timeout=timeout),
        )
        batchers += [verify, evaluate]

        def ask(request: engine_pb2.AuthorizeRequest) -> Awaitable[object]:
            return asyncio.gather(
                verify.submit(
                    verification_pb2.VerifyRequest(
                        action=request.action,
                        resource=request.resource,
                        mandate=request.mandate,
                        proof=request.proof,
                        attestation=request.attestation,
                    ),
                    timeout=PEER_TIMEOUT_S,
                ),
                evaluate.submit(
                    policy_pb2.EvaluateRequest(action=request.action, resource=request.resource),
                    timeout=PEER_TIMEOUT_S,
                ),
            )

    async def authorize(raw: bytes, context: object) -> bytes:
        nonlocal before_lineage
        request = engine_pb2.AuthorizeRequest.FromString(raw)
        if ask is not None:
            before_lineage += 1
            try:
                await ask(request)
            finally:
                before_lineage -= 1
        await append.submit(lineage_pb2.AppendRequest(entry=raw), timeout=PEER_TIMEOUT_S)
        return ECHO_ANSWER.SerializeToString()

    for transport in transports:
        transport.open()
    for batcher in batchers:
        batcher.start()
    try:
        await serve_until_stopped(authorize_server(authorize), port)
    finally:
        for batcher in batchers:
            await batcher.close()
        for transport in transports:
            await transport.close()
        for channel in channels:
            await channel.close()


# -- running it ------------------------------------------------------------------------


#: The peers of each shape, in the order the front takes their addresses.
SHAPES = {3: ("lineage", "verification", "policy"), 1: ("lineage",)}


@dataclass(frozen=True)
class Floor:
    """A running floor: its front's target and its processes by role ("front" and the peers)."""

    target: str
    processes: dict[str, psutil.Process]

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds (user + system) each process has used so far, by role."""
        used = {}
        for role, process in self.processes.items():
            times = process.cpu_times()
            used[role] = times.user + times.system
        return used


@contextlib.contextmanager
def floor_mesh(peers: int) -> Iterator[Floor]:
    """Run a front and `peers` peers (3: the design's shape; 1: lineage only), each a process."""
    if peers not in SHAPES:
        raise ValueError("the floor has 3 peers (verification, policy, lineage) or 1 (lineage)")
    roles = (*SHAPES[peers], "front")
    front, *ports = [free_port() for _ in range(1 + peers)]
    commands = [[sys.executable, "-m", __name__, "peer", str(port)] for port in ports]
    commands.append(
        [sys.executable, "-m", __name__, "front", str(front)]
        + [f"127.0.0.1:{port}" for port in ports]
    )
    started = [subprocess.Popen(command) for command in commands]
    target = f"127.0.0.1:{front}"
    try:
        deadline = time.monotonic() + 30
        for port in (*ports, front):
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                grpc.channel_ready_future(channel).result(
                    timeout=max(deadline - time.monotonic(), 1)
                )
        yield Floor(
            target, {role: psutil.Process(p.pid) for role, p in zip(roles, started, strict=True)}
        )
    finally:
        for process in started:
            process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def main(argv: list[str]) -> None:
    """`peer PORT`, or `front PORT LINEAGE [VERIFICATION POLICY]`."""
    match argv:
        case ["peer", port]:
            asyncio.run(_peer(int(port)))
        case ["front", port, lineage]:
            asyncio.run(_front(int(port), lineage, None))
        case ["front", port, lineage, verification, policy]:
            asyncio.run(_front(int(port), lineage, (verification, policy)))
        case _:
            raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
