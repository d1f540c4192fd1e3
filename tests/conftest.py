"""Shared fixtures: real Postgres, development trust setups, service processes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from govmesh.cli.devsetup import DevSetup, write_dev_setup
from tests.support.database import DatabaseFactory
from tests.support.processes import ServiceProcess, start_service


@pytest.fixture(autouse=True)
def _private_state_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test (and every process it starts) keeps its default state files in its own folder."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state-home"))


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Postgres server: GOVMESH_TEST_DATABASE_URL when set, else an embedded pgserver."""
    url = os.environ.get("GOVMESH_TEST_DATABASE_URL")
    if url:
        yield url
        return
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def databases(pg_server_url: str) -> Iterator[DatabaseFactory]:
    """Factory of fresh, migrated databases, dropped at the end of the session."""
    factory = DatabaseFactory(pg_server_url)
    try:
        yield factory
    finally:
        factory.drop_all()


@pytest.fixture
def database_url(databases: DatabaseFactory) -> str:
    """A fresh database migrated to head."""
    return databases.create()


@pytest.fixture
def dev_setup(tmp_path: Path) -> DevSetup:
    """A complete development trust setup (keys, JWKS, trust TOML, sample policy)."""
    return write_dev_setup(tmp_path / "trust")


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Starts service processes; every one still running is stopped afterwards."""
    started: list[ServiceProcess] = []

    def start(name: str, env: dict[str, str], **kwargs: object) -> ServiceProcess:
        service = start_service(name, env, tmp_path / "procs", **kwargs)  # type: ignore[arg-type]
        started.append(service)
        return service

    yield start
    for service in started:
        with contextlib.suppress(ProcessLookupError):
            service.resume()
        service.kill()
