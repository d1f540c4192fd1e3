"""Real service processes for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

START_TIMEOUT_S = 30.0


@dataclass
class ServiceProcess:
    """One `python -m govmesh.<name>` process and where it listens."""

    name: str
    process: subprocess.Popen[bytes]
    address: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    #: host:port of its Prometheus metrics, when started with metrics on.
    metrics_address: str | None = None

    def log(self) -> str:
        """Everything the process wrote to stderr and stdout so far."""
        return self.log_path.read_text(errors="replace")

    def health(self, service: str = "", timeout: float = 2.0) -> int:
        """The health status the process reports (a HealthCheckResponse status)."""
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
            return int(answer.status)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: the process is gone at once, as in a crash."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the process keeps its socket but never answers (a hang)."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after pause()."""
        self.process.send_signal(signal.SIGCONT)


def start_service(
    name: str,
    env: dict[str, str],
    workdir: Path,
    *,
    command: list[str] | None = None,
    wait_serving: bool = True,
    metrics: bool = False,
) -> ServiceProcess:
    """Start a service process listening on a free port and wait until it serves.

    With `metrics`, it also serves Prometheus metrics on a free port.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    tag = f"{name}-{uuid.uuid4().hex[:8]}"
    port_file = workdir / f"{tag}.addr"
    log_path = workdir / f"{tag}.log"
    full_env = {
        **os.environ,
        "GOVMESH_LISTEN": "127.0.0.1:0",
        "GOVMESH_LOG_FORMAT": "text",
        "GOVMESH_GRACE_PERIOD_S": "2",
        **env,
        "GOVMESH_PORT_FILE": str(port_file),
    }
    metrics_file = workdir / f"{tag}.metrics"
    if metrics:
        full_env["GOVMESH_METRICS_LISTEN"] = "127.0.0.1:0"
        full_env["GOVMESH_METRICS_PORT_FILE"] = str(metrics_file)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command or [sys.executable, "-m", f"govmesh.{name}"],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not port_file.is_file():
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{log_path.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{name} did not start:\n{log_path.read_text()}")
        time.sleep(0.02)
    service = ServiceProcess(name, process, port_file.read_text().strip(), log_path, full_env)
    if metrics:
        # Written before the port file, once the metrics server listens.
        service.metrics_address = metrics_file.read_text().strip()
    if wait_serving:
        while True:
            try:
                if service.health() == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                service.kill()
                raise RuntimeError(f"{name} never reported SERVING:\n{service.log()}")
            time.sleep(0.05)
    return service
