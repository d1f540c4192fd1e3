"""Shared fixtures: real Postgres, development trust setups, service processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
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
def pg_server_url() -> Iterator[str]:
    """A Postgres server: GOVMESH_TEST_DATABASE_URL when set, else an embedded pgserver."""
    url = os.environ.get("GOVMESH_TEST_DATABASE_URL")
    if url:
        yield url
        return
    import pgserver

    # Not under pytest's temporary root: every pytest session that starts on
    # the machine makes that folder private to its owner again, and run as
    # root pgserver runs Postgres as another user, which then loses its data
    # directory (PANIC) in the middle of this session.
    data = Path(tempfile.mkdtemp(prefix="govmesh-test-pg-"))
    server = pgserver.get_server(data, cleanup_mode="stop")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()
        shutil.rmtree(data, ignore_errors=True)


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
