"""Tracing settings: the exporter named by OTEL_TRACES_EXPORTER, or a clear start-up error."""

from __future__ import annotations

import subprocess
import sys

import pytest
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from govmesh.runtime.errors import ConfigurationError
from govmesh.runtime.tracing import _exporter


def test_no_exporter_by_default_and_console_on_request() -> None:
    assert _exporter("none") is None
    assert _exporter("") is None
    assert isinstance(_exporter("console"), ConsoleSpanExporter)


def test_an_unknown_exporter_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="none, console or otlp"):
        _exporter("zipkin")


def test_a_service_with_an_unknown_exporter_stops_with_a_message_not_a_traceback() -> None:
    ran = subprocess.run(
        [sys.executable, "-m", "govmesh.verification"],
        env={
            "OTEL_TRACES_EXPORTER": "zipkin",
            "GOVMESH_TRUST_FILE": "/nonexistent/trust.toml",
            "GOVMESH_DATABASE_URL": "postgresql://govmesh@127.0.0.1:1/govmesh",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 2
    assert "OTEL_TRACES_EXPORTER must be none, console or otlp" in ran.stderr
    assert "Traceback" not in ran.stderr
