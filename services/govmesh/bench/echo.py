"""A no-op grpc.aio server answering Authorize: the floor a Python gRPC service stands on.

    python -m govmesh.bench.echo PORT        # serve until SIGTERM

Answers every Authorize call with the same small AuthorizeResponse, without
interceptors or any work, so that `govmesh bench` can drive it with the same
client and print how the mesh compares with the cheapest unary call grpc.aio
can make on this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc

from govmesh.v1 import common_pb2, engine_pb2

_SERVICE = engine_pb2.DESCRIPTOR.services_by_name["AuthorizationEngine"].full_name
#: What the echo answers every call with.
ECHO_ANSWER = engine_pb2.AuthorizeResponse(
    decision=common_pb2.DENY, reason=common_pb2.INTERNAL_ERROR, message="echo"
)


async def _serve(port: int) -> None:
    answer = ECHO_ANSWER

    async def authorize(request: bytes, context: object) -> bytes:
        return answer.SerializeToString()

    await serve_until_stopped(authorize_server(authorize), port)


def authorize_server(
    authorize: Callable[[bytes, Any], Awaitable[bytes]],
) -> grpc.aio.Server:
    """A bare grpc.aio server whose one method, Authorize, is `authorize` (bytes in and out)."""
    server = grpc.aio.server()
    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(authorize)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(_SERVICE, {"Authorize": handler}),)
    )
    return server


async def serve_until_stopped(server: grpc.aio.Server, port: int) -> None:
    """Serve on the loopback's `port` until SIGTERM."""
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


@contextlib.contextmanager
def echo_server(port: int) -> Iterator[str]:
    """Run the echo server in its own process; yields its target."""
    process = subprocess.Popen([sys.executable, "-m", "govmesh.bench.echo", str(port)])
    target = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        with grpc.insecure_channel(target) as channel:
            grpc.channel_ready_future(channel).result(timeout=max(deadline - time.monotonic(), 1))
        yield target
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1])))
