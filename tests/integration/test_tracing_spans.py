"""Server spans on a real grpc.aio server: ids for every call, recording only when asked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

from govmesh.runtime.tracing import TracedRegistrar

SERVICE = "test.Echo"
REGISTERED = "test.Registered"


class _Server:
    def __init__(self) -> None:
        self.exported = InMemorySpanExporter()
        provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
        provider.add_span_processor(SimpleSpanProcessor(self.exported))
        self.provider = provider
        self.seen: list[trace.SpanContext] = []

    async def unary(self, request: bytes, context: Any) -> bytes:
        self.seen.append(trace.get_current_span().get_span_context())
        return request

    async def stream(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        self.seen.append(trace.get_current_span().get_span_context())
        yield request
        yield request


@pytest.fixture
async def server() -> AsyncIterator[tuple[_Server, grpc.aio.Channel]]:
    state = _Server()
    server = grpc.aio.server()
    traced = TracedRegistrar(server, tracer_provider=state.provider).server()
    handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
        "Unary": grpc.unary_unary_rpc_method_handler(state.unary),
        "Stream": grpc.unary_stream_rpc_method_handler(state.stream),
    }
    traced.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    # The way generated add_*_to_server code registers its methods.
    traced.add_registered_method_handlers(
        REGISTERED, {"Unary": grpc.unary_unary_rpc_method_handler(state.unary)}
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, traced)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield state, channel
    await server.stop(None)


async def test_an_untraced_call_gets_a_fresh_trace_that_is_not_recorded(
    server: tuple[_Server, grpc.aio.Channel],
) -> None:
    state, channel = server
    unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(f"/{SERVICE}/Unary")
    assert await unary(b"a") == b"a"
    assert await unary(b"b") == b"b"
    first, second = state.seen
    # Real ids, as the lineage entry needs, from the same span machinery...
    assert first.is_valid and second.is_valid
    assert first.trace_id != second.trace_id
    # ...but nothing recorded or exported: the cheap path of every decision.
    assert not first.trace_flags.sampled
    assert state.exported.get_finished_spans() == ()


async def test_a_sampled_caller_continues_its_trace_and_its_span_is_recorded(
    server: tuple[_Server, grpc.aio.Channel],
) -> None:
    state, channel = server
    caller = TracerProvider().get_tracer("caller")
    with caller.start_as_current_span("agent-step") as step:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        parent = step.get_span_context()
    unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(f"/{SERVICE}/Unary")
    stream: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
        f"/{SERVICE}/Stream"
    )
    assert await unary(b"a", metadata=tuple(carrier.items())) == b"a"
    assert [m async for m in stream(b"s", metadata=tuple(carrier.items()))] == [b"s", b"s"]
    registered: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        f"/{REGISTERED}/Unary"
    )
    assert await registered(b"r", metadata=tuple(carrier.items())) == b"r"
    assert [s.trace_id for s in state.seen] == [parent.trace_id] * 3
    spans = state.exported.get_finished_spans()
    assert [s.name for s in spans] == [
        f"{SERVICE}/Unary",
        f"{SERVICE}/Stream",
        f"{REGISTERED}/Unary",
    ]
    assert all(s.parent is not None and s.parent.span_id == parent.span_id for s in spans)
    assert all(s.kind == trace.SpanKind.SERVER for s in spans)


async def test_health_checks_get_no_span(server: tuple[_Server, grpc.aio.Channel]) -> None:
    state, channel = server
    caller = TracerProvider().get_tracer("caller")
    with caller.start_as_current_span("probe"):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
    stub = health_pb2_grpc.HealthStub(channel)
    await stub.Check(health_pb2.HealthCheckRequest(service=""), metadata=tuple(carrier.items()))
    assert state.exported.get_finished_spans() == ()
