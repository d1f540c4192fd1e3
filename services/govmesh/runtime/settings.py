"""Settings shared by every govmesh service, read from GOVMESH_* variables."""

from __future__ import annotations

from typing import Literal, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from govmesh.runtime.errors import ConfigurationError
from govmesh.runtime.metrics import MetricsEndpoint, new_registry


class SettingsError(ConfigurationError):
    """Settings that cannot be used; the message names every offending variable."""


class CommonSettings(BaseSettings):
    """What every govmesh process reads."""

    model_config = SettingsConfigDict(env_prefix="GOVMESH_", extra="ignore", frozen=True)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class ServerSettings(CommonSettings):
    """What every govmesh gRPC server reads."""

    listen: str = Field(default="127.0.0.1:0", description="host:port to serve gRPC on")
    grace_period_s: float = Field(default=5.0, ge=0.0, le=300.0)
    port_file: str | None = Field(
        default=None, description="write the bound host:port here once serving (for supervisors)"
    )
    metrics_listen: str | None = Field(
        default=None,
        description="host:port to serve Prometheus metrics on (/metrics); unset: no metrics",
    )
    metrics_port_file: str | None = Field(
        default=None, description="write the bound metrics host:port here once serving"
    )

    @field_validator("listen", "metrics_listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"expected host:port, got {value!r}")
        return value

    def metrics_endpoint(self) -> MetricsEndpoint | None:
        """Where to serve metrics, with a fresh registry; None when metrics are off."""
        if self.metrics_listen is None:
            return None
        return MetricsEndpoint(self.metrics_listen, new_registry(), self.metrics_port_file)


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], **overrides: object) -> S:
    """Build settings from the environment plus explicit overrides.

    Raises SettingsError with one line per invalid setting, naming the
    environment variable, so that start-up fails with a message, not a traceback.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return cls(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        lines = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            lines.append(f"  {prefix}{field.upper()}: {error['msg']}")
        raise SettingsError("invalid settings:\n" + "\n".join(lines)) from None
