"""OpenTelemetry for govmesh processes: W3C trace context in, one span per RPC.

Every service answers each RPC (health and reflection aside) inside a server span
that continues the caller's W3C `traceparent` when it sends one and starts a
new trace when it does not. The engine writes the trace and span ids of its
Authorize span into the decision's lineage entry, so `govmesh lineage query
--trace-id` finds every decision of one trace, and the caller's own trace
names the decision.

Spans are exported as the standard variable OTEL_TRACES_EXPORTER says:
`none` (the default: spans only carry ids), `console` (one JSON span per line
on stdout), or `otlp` (OTLP over gRPC to OTEL_EXPORTER_OTLP_ENDPOINT, with the
opentelemetry-exporter-otlp-proto-grpc package installed).

What a span costs matters: the engine answers thousands of calls a second,
each with a span, and its peers as many batches. Without an exporter no span
is recorded unless its caller's trace is sampled (a parent-based sampler that
is off at the root): an unrecorded span still has real trace and span ids,
which is all the lineage entry needs. With an exporter the standard
OTEL_TRACES_SAMPLER variables choose (parent-based, always on by default).
The server span is opened by a wrapper put around each method handler once,
when the service registers it, which reads only the `traceparent` and
`tracestate` headers.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

from govmesh.runtime.errors import ConfigurationError

EXPORTER_VARIABLE = "OTEL_TRACES_EXPORTER"

#: Health checks get no span: probes would drown the traces.
_UNTRACED_PREFIX = "/grpc.health.v1.Health/"
_TRACE_HEADERS = ("traceparent", "tracestate")


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
    resource = Resource.create({"service.name": f"govmesh-{service}"})
    if exporter is None:
        # Nothing would read a recorded span: record only what a sampled
        # caller asked for; ids are generated either way.
        provider = TracerProvider(resource=resource, sampler=ParentBased(ALWAYS_OFF))
    else:
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def _parent(context: grpc.aio.ServicerContext[Any, Any]) -> otel_context.Context | None:
    # Only the two trace-context headers are read; most calls carry neither.
    carrier = {
        key: value
        for key, value in context.invocation_metadata() or ()
        if key in _TRACE_HEADERS and isinstance(value, str)
    }
    return propagate.extract(carrier) if carrier else None


Behavior = Callable[..., Any]
if TYPE_CHECKING:
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]


def _traced(method: str, behavior: Behavior, tracer: trace.Tracer) -> Behavior:
    """`behavior` answering inside a server span named after `method`."""
    service, _, name = method.lstrip("/").rpartition("/")
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
    span_name = method.lstrip("/")

    def span(context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return tracer.start_as_current_span(
            span_name,
            context=_parent(context),
            kind=trace.SpanKind.SERVER,
            attributes=attributes,
        )

    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            with span(context):
                async for item in behavior(request, context):
                    yield item

        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        with span(context):
            answer: Awaitable[Any] | AsyncIterator[Any] = behavior(request, context)
            return await answer  # type: ignore[misc]

    return call


def _wrap(method: str, handler: Handler, tracer: trace.Tracer) -> Handler:
    common = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _traced(method, handler.unary_unary, tracer), **common
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _traced(method, handler.unary_stream, tracer), **common
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _traced(method, handler.stream_unary, tracer), **common
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _traced(method, handler.stream_stream, tracer), **common
        )
    return handler


class _TracedGenericHandler(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, tracer: trace.Tracer) -> None:
        self._inner = inner
        self._tracer = tracer
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        handler = self._inner.service(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(_UNTRACED_PREFIX):
            return handler
        known = self._wrapped.get(method)
        if known is None or known[0] is not handler:
            known = self._wrapped[method] = (handler, _wrap(method, handler, self._tracer))
        return known[1]


class TracedRegistrar:
    """Where services register their handlers: the server, with a server span around each RPC.

    Handlers are wrapped once, when they are registered, rather than by a
    server interceptor, which grpc.aio runs as an extra coroutine (and a
    reference cycle for the garbage collector) on every call. Health checks
    get no span: probes would drown the traces.
    """

    def __init__(
        self, server: grpc.aio.Server, *, tracer_provider: trace.TracerProvider | None = None
    ) -> None:
        self._server = server
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        """As grpc.aio.Server.add_generic_rpc_handlers, each handler traced."""
        self._server.add_generic_rpc_handlers(
            tuple(_TracedGenericHandler(h, self._tracer) for h in handlers)
        )

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Handler]) -> None:
        """As grpc.aio.Server.add_registered_method_handlers, each handler traced."""
        traced = {
            name: handler
            if f"/{service}/".startswith(_UNTRACED_PREFIX)
            else _wrap(f"/{service}/{name}", handler, self._tracer)
            for name, handler in handlers.items()
        }
        self._server.add_registered_method_handlers(service, traced)

    def server(self) -> grpc.aio.Server:
        """This registrar where a grpc.aio.Server is asked for (generated add_*_to_server)."""
        return cast(grpc.aio.Server, self)


def shutdown_tracing() -> None:
    """Export what is left before the process exits."""
    provider: Any = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()
