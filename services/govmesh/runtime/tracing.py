"""OpenTelemetry for govmesh processes: W3C trace context in, one span per RPC.

Every service answers each RPC (health checks aside) inside a server span of
opentelemetry-instrumentation-grpc, which continues the caller's W3C
`traceparent` when it sends one and starts a new trace when it does not. The
engine writes the trace and span ids of its Authorize span into the decision's
lineage entry, so `govmesh lineage query --trace-id` finds every decision of
one trace, and the caller's own trace names the decision.

Spans are exported as the standard variable OTEL_TRACES_EXPORTER says:
`none` (the default: spans only carry ids), `console` (one JSON span per line
on stdout), or `otlp` (OTLP over gRPC to OTEL_EXPORTER_OTLP_ENDPOINT, with the
opentelemetry-exporter-otlp-proto-grpc package installed).
"""

from __future__ import annotations

import os
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from govmesh.runtime.errors import ConfigurationError

EXPORTER_VARIABLE = "OTEL_TRACES_EXPORTER"


def _exporter(name: str) -> SpanExporter | None:
    if name in ("", "none"):
        return None
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ConfigurationError(
                f"{EXPORTER_VARIABLE}=otlp needs the opentelemetry-exporter-otlp-proto-grpc "
                "package installed beside govmesh"
            ) from None
        exporter: SpanExporter = OTLPSpanExporter()
        return exporter
    raise ConfigurationError(f"{EXPORTER_VARIABLE} must be none, console or otlp, not {name!r}")


def configure_tracing(service: str) -> TracerProvider:
    """Install this process's tracer provider (once); raises ConfigurationError for bad settings."""
    current: Any = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    exporter = _exporter(os.environ.get(EXPORTER_VARIABLE, "none").strip().lower())
    provider = TracerProvider(resource=Resource.create({"service.name": f"govmesh-{service}"}))
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """A server span around every RPC but health checks (probes would drown the traces)."""
    interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
        filter_=filters.negate(filters.health_check())
    )
    return [interceptor]


def shutdown_tracing() -> None:
    """Export what is left before the process exits."""
    provider: Any = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()
