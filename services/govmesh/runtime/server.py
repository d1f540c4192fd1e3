"""One serve loop for every govmesh service.

A service supplies a `Service` object; `serve()` gives it a grpc.aio server
with the standard health service and reflection, starts it, and on SIGTERM or
SIGINT marks it NOT_SERVING, stops it with a grace period and closes the
service. The process then exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from govmesh.runtime.metrics import MetricsEndpoint, MetricsServer, start_metrics_server
from govmesh.runtime.tracing import TracedRegistrar

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024

#: The health name that is SERVING whenever the process runs its server, ready
#: or not: what liveness and startup probes ask. Readiness asks the overall
#: status (""), which a service may hold at NOT_SERVING, e.g. the policy
#: authority without a bundle, without being restarted for it.
LIVENESS_SERVICE = "govmesh.liveness"

#: Allocations between young-generation collections (CPython's default is 700).
#: A decision allocates a few hundred short-lived objects, nearly all freed
#: by reference counting; collecting less often costs a little memory and
#: saves the CPU of scanning them again and again.
GC_THRESHOLD = (20_000, 20, 20)

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health:
    """Sets the health status of the overall server and of each named service."""

    def __init__(self, servicer: health.aio.HealthServicer, names: Sequence[str]) -> None:
        self._servicer = servicer
        self._names = ("", *names)
        self.serving = False
        self.stopping = False

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING or NOT_SERVING for every name this server answers for.

        Once the server is stopping it stays NOT_SERVING, whatever the service
        reports: load balancers must not send it new calls during the grace.
        """
        if serving and self.stopping:
            return
        self.serving = serving
        status = _SERVING if serving else _NOT_SERVING
        for name in self._names:
            await self._servicer.set(name, status)


class Service(Protocol):
    """What a govmesh service gives the runtime."""

    @property
    def service_names(self) -> Sequence[str]:
        """Fully-qualified gRPC service names, e.g. "govmesh.v1.Verification"."""

    async def start(self, health: Health) -> None:
        """Open resources (database, keys) before the server accepts calls.

        Called with health NOT_SERVING; the runtime reports SERVING afterwards
        unless `ready()` says otherwise.
        """

    def register(self, server: grpc.aio.Server) -> None:
        """Add the service's servicers to the server."""

    def ready(self) -> bool:
        """Whether the service can answer now (e.g. the policy authority has a bundle)."""

    async def close(self) -> None:
        """Release resources after the server stopped."""


async def serve(
    service: Service,
    *,
    listen: str,
    grace_period_s: float,
    port_file: str | None = None,
    stop: asyncio.Event | None = None,
    maximum_concurrent_rpcs: int | None = None,
    metrics: MetricsEndpoint | None = None,
    reuse_port: bool = False,
) -> None:
    """Run `service` until SIGTERM/SIGINT (or `stop` is set), then stop gracefully.

    `maximum_concurrent_rpcs` bounds the calls the server holds at once (None:
    unbounded); calls beyond it are answered RESOURCE_EXHAUSTED by grpc itself.
    With `metrics`, its registry is served over HTTP from before the service
    starts (a taken port stops start-up at once) until after it closed.
    With `reuse_port`, other processes that also ask for it may listen on the
    same address (SO_REUSEPORT) and the kernel spreads connections over them;
    without it a taken address stops start-up, as it should for a process
    started there by mistake.
    """
    stop = stop or asyncio.Event()
    exporter: MetricsServer | None = None
    if metrics is not None:
        exporter = start_metrics_server(metrics.listen, metrics.registry)
        logger.info("serving metrics", extra={"url": exporter.url})
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    server = grpc.aio.server(
        maximum_concurrent_rpcs=maximum_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            # Clients reconnect every few minutes, so engines re-resolve DNS and
            # spread over replicas added since they connected.
            ("grpc.max_connection_age_ms", 300_000),
            ("grpc.max_connection_age_grace_ms", 30_000),
        ],
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    status = Health(health_servicer, service.service_names)
    await status.set_serving(False)
    # Reflection picks its asyncio servicer by the server's type: the server
    # itself, untraced, like health.
    reflection.enable_server_reflection(
        (*service.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    traced = TracedRegistrar(server).server()

    try:
        if not await _start_unless_stopped(service, status, stop):
            logger.info("stopped before serving")
            return
        service.register(traced)
        port = server.add_insecure_port(listen)
        if port == 0:
            raise OSError(f"cannot listen on {listen}")
        host = listen.rpartition(":")[0]
        address = f"{host}:{port}"
        _settle_garbage_collection()
        await server.start()
        await health_servicer.set(LIVENESS_SERVICE, _SERVING)
        await status.set_serving(service.ready())
        if metrics is not None and metrics.port_file and exporter is not None:
            _write_atomically(Path(metrics.port_file), exporter.address)
        if port_file:
            _write_atomically(Path(port_file), address)
        logger.info("serving", extra={"address": address, "services": list(service.service_names)})

        await stop.wait()

        logger.info("stopping", extra={"grace_period_s": grace_period_s})
        status.stopping = True
        await status.set_serving(False)
        await server.stop(grace_period_s)
    finally:
        await service.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if exporter is not None:
            await asyncio.to_thread(exporter.stop)
    logger.info("stopped")


async def _start_unless_stopped(service: Service, status: Health, stop: asyncio.Event) -> bool:
    """Start `service`; False, with its start cancelled, when `stop` comes first.

    A start may wait (an engine on a shared port waits for the newest policy
    epoch); SIGTERM meanwhile ends the process then, not after the wait.
    """
    starting = asyncio.ensure_future(service.start(status))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not starting.done():
            starting.cancel()
    if not starting.done() or starting.cancelled():
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        return False
    starting.result()  # its exception, if it failed
    return True


def _settle_garbage_collection() -> None:
    # What start-up built (modules, keys, policies, pools) lives as long as the
    # process: freeze it so that no collection ever scans it again, which is
    # what makes a full collection a pause of milliseconds under load.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
