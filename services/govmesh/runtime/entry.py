"""The process entry shared by every service: flags, settings, logging, run."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from govmesh.runtime.errors import ConfigurationError, Unavailable
from govmesh.runtime.logs import configure_logging
from govmesh.runtime.settings import ServerSettings, load_settings
from govmesh.runtime.tracing import configure_tracing, shutdown_tracing

logger = logging.getLogger(__name__)

S = TypeVar("S", bound=ServerSettings)


def service_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every `govmesh serve <service>` takes; each overrides its GOVMESH_* variable."""
    parser.add_argument("--listen", help="host:port to serve on (GOVMESH_LISTEN)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (GOVMESH_LOG_LEVEL)")
    parser.add_argument("--log-format", choices=["json", "text"], help="(GOVMESH_LOG_FORMAT)")
    parser.add_argument("--port-file", help="write the bound address here once serving")
    parser.add_argument(
        "--metrics-listen",
        help="host:port to serve Prometheus metrics on; unset: none (GOVMESH_METRICS_LISTEN)",
    )


def run_service(
    name: str,
    settings_cls: type[S],
    run: Callable[[S], Coroutine[Any, Any, None]],
    argv: list[str] | None = None,
    *,
    overrides: dict[str, object] | None = None,
) -> int:
    """Parse flags, load settings, configure logging and run the service.

    Returns the process exit code: 0 after a graceful stop, 2 for unusable
    settings or files, 1 when something the service needs to start is not
    there (an Unavailable error: a supervisor may start it again); both with
    a one-paragraph message on stderr and no traceback.
    """
    parser = argparse.ArgumentParser(prog=f"govmesh serve {name}")
    service_arguments(parser)
    args = parser.parse_args(argv)
    given = {
        "listen": args.listen,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "port_file": args.port_file,
        "metrics_listen": args.metrics_listen,
        **(overrides or {}),
    }
    try:
        settings = load_settings(settings_cls, **given)
        configure_logging(service=name, level=settings.log_level, fmt=settings.log_format)
        configure_tracing(name)
        try:
            asyncio.run(run(settings))
        finally:
            shutdown_tracing()
    except ConfigurationError as exc:
        print(f"govmesh {name}: {exc}", file=sys.stderr)
        return 2
    except Unavailable as exc:
        print(f"govmesh {name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
