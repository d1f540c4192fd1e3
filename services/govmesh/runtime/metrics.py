"""Prometheus metrics: one registry per process, served over HTTP only when asked.

Metrics are off unless a service is given `GOVMESH_METRICS_LISTEN` (host:port):
then the process keeps a registry of its own (its service's metrics, and the
process, GC and platform collectors) and serves it at
`http://HOST:PORT/metrics` from a small HTTP server on its own thread, so a
scrape never waits for the event loop. With metrics off no metric object
exists and the hot paths skip recording altogether.

Every metric is named `govmesh_<service>_...`, in base units (seconds,
entries), counters end in `_total`; labels take only values from small fixed
sets (a decision, a reason, a check, a peer), never ids, subjects or
versions beyond the one in force.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from govmesh.runtime.errors import ConfigurationError
from govmesh.v1 import common_pb2

logger = logging.getLogger(__name__)

#: Latency buckets, in seconds: from half a millisecond to a few seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Batch and group sizes: powers of two up to the largest batch a peer takes.
SIZE_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0)
#: The `reason` label where there is no deny reason (an ALLOW).
NO_REASON = "none"


def reason_label(reason: int) -> str:
    """A DenyReason as a label value: its enum name, `none` for none, `UNKNOWN` otherwise."""
    if reason == common_pb2.DENY_REASON_UNSPECIFIED:
        return NO_REASON
    try:
        return common_pb2.DenyReason.Name(reason)  # type: ignore[arg-type]
    except ValueError:
        return "UNKNOWN"


class LoopCounter:
    """A counter written only by the event loop's thread: a plain float, no lock.

    prometheus-client guards every increment with a mutex, a cost paid on
    every decision for a contention that cannot happen here: one thread
    writes, and the exporter's thread only reads (a float read is atomic).
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Add `amount` (from the event loop's thread only)."""
        self.value += amount


class LoopHistogram:
    """A histogram written only by the event loop's thread: bucket counts in a list."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = tuple(bounds)
        self.counts = [0] * (len(self._bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        """Count `amount` in the first bucket whose bound it does not exceed."""
        self.counts[bisect_left(self._bounds, amount)] += 1
        self.sum += amount


class _LoopFamily(Collector):
    """Children by label values, created on first use and exported at scrape time."""

    kind = ""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], object] = {}
        registry.register(self)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # names are known only at collect(): no duplicate check needed

    def _items(self) -> list[tuple[tuple[str, ...], object]]:
        # A copy taken under the GIL: the loop may add a child meanwhile.
        return list(self._children.items())


class LoopCounterFamily(_LoopFamily):
    """A labelled counter of LoopCounter children; `name` without `_total`."""

    kind = "counter"

    def labels(self, *values: str) -> LoopCounter:
        """The child for these label values (keep it: the look-up is the cost to avoid)."""
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}")
            child = self._children[values] = LoopCounter()
        assert isinstance(child, LoopCounter)
        return child

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self._items():
            assert isinstance(child, LoopCounter)
            family.add_metric(list(values), child.value)
        yield family


class LoopHistogramFamily(_LoopFamily):
    """A labelled histogram of LoopHistogram children."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        *,
        buckets: Sequence[float],
    ) -> None:
        self._bounds = tuple(buckets)
        super().__init__(name, documentation, labelnames, registry)

    def labels(self, *values: str) -> LoopHistogram:
        """The child for these label values (keep it)."""
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}")
            child = self._children[values] = LoopHistogram(self._bounds)
        assert isinstance(child, LoopHistogram)
        return child

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self._items():
            assert isinstance(child, LoopHistogram)
            counts, total = list(child.counts), child.sum
            buckets, running = [], 0
            for bound, count in zip((*self._bounds, float("inf")), counts, strict=True):
                running += count
                buckets.append((floatToGoString(bound), running))  # type: ignore[no-untyped-call]
            family.add_metric(list(values), buckets, total)
        yield family


def new_registry() -> CollectorRegistry:
    """A registry with the process, GC and platform collectors, and nothing else yet."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


@dataclass(frozen=True)
class MetricsEndpoint:
    """Where a process serves its registry, and the registry."""

    listen: str
    registry: CollectorRegistry
    port_file: str | None = None


class MetricsServer:
    """The HTTP server answering GET /metrics on its own daemon thread."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self.address = f"{host}:{server.server_port}"

    @property
    def url(self) -> str:
        """http://HOST:PORT/metrics."""
        return f"http://{self.address}/metrics"

    def stop(self) -> None:
        """Stop answering and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(listen: str, registry: CollectorRegistry) -> MetricsServer:
    """Serve `registry` on `listen` (host:port, port 0 for any free one).

    Raises ConfigurationError, naming the address, when the port is taken or
    the host cannot be bound: a metrics port that silently moved would be
    scraped nowhere.
    """
    host, _, port = listen.rpartition(":")
    bind = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        server, thread = start_http_server(int(port), addr=bind, registry=registry)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigurationError(
            f"cannot serve metrics on {listen} (GOVMESH_METRICS_LISTEN): {reason}"
        ) from None
    return MetricsServer(server, thread, host)
