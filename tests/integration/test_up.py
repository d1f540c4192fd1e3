"""`govmesh up` and the first minutes of a new user, as real commands."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from govmesh.cli.devsetup import DevSetup
from tests.support.commands import GOVMESH
from tests.support.database import DatabaseFactory, fetch, run_sync


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _govmesh(
    *args: str, env: dict[str, str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GOVMESH, *args], env=env, capture_output=True, text=True, timeout=60, check=check
    )


def _start_up(env: dict[str, str], port: int, log: Path, *flags: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        # Metrics on any free ports: tests run side by side, the default ports are shared.
        up = subprocess.Popen(
            [GOVMESH, "up", "--engine-port", str(port), "--metrics-port", "0", *flags],
            env=env,
            stdout=out,
            stderr=out,
        )
    deadline = time.monotonic() + 120
    while "govmesh is up" not in log.read_text():
        if up.poll() is not None or time.monotonic() > deadline:
            up.kill()
            pytest.fail(f"govmesh up did not come up:\n{log.read_text()}")
        time.sleep(0.2)
    return up


def test_up_with_embedded_postgres_gives_a_first_allow_and_deny_then_stops_cleanly(
    up_env: dict[str, str], tmp_path: Path
) -> None:
    port = _free_port()
    log = tmp_path / "up.log"
    up = _start_up(up_env, port, log)
    try:
        children = psutil.Process(up.pid).children(recursive=True)
        postmaster = tmp_path / "data" / "pg" / "postmaster.pid"
        postgres = psutil.Process(int(postmaster.read_text().split()[0]))
        mandate = _govmesh("mandate", "issue", env=up_env).stdout.strip()
        target = f"127.0.0.1:{port}"
        base = [
            "authorize",
            "--target",
            target,
            "--action",
            "payments.transfer",
            "--resource",
            "account:acme/treasury",
            "--mandate",
            mandate,
        ]
        allowed = _govmesh(*base, "--context", '{"amount": 250}', env=up_env, check=False)
        denied = _govmesh(*base, "--context", '{"amount": 5000}', env=up_env, check=False)
        urls = dict(re.findall(r"metrics: (\w+) +(http://\S+/metrics)", log.read_text()))
        scraped = {name: _scrape(url) for name, url in urls.items()}
    finally:
        up.send_signal(signal.SIGINT)
        code = up.wait(60)

    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    answer = json.loads(allowed.stdout)
    assert answer["decision"] == "ALLOW"
    assert answer["grant"]
    assert denied.returncode == 1
    assert json.loads(denied.stdout)["reason"] == "POLICY_MISMATCH"

    # Each service's URL is printed, and each answers with its own metrics.
    assert sorted(urls) == ["engine", "lineage", "policy", "verification"], log.read_text()
    assert 'govmesh_engine_decisions_total{decision="ALLOW",reason="none"} 1.0' in scraped["engine"]
    assert "govmesh_verification_checks_total" in scraped["verification"]
    assert "govmesh_policy_epoch 1.0" in scraped["policy"]
    assert "govmesh_lineage_tree_size 2.0" in scraped["lineage"]

    assert code == 0, log.read_text()
    assert len(children) == 4
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    _, still_running = psutil.wait_procs([postgres], timeout=20)
    assert still_running == [], "the embedded Postgres outlived govmesh up"
    assert "Traceback" not in log.read_text()


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        text: str = response.read().decode()
    return text


def test_up_refuses_a_taken_metrics_port_before_starting_anything(
    up_env: dict[str, str], tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        first = int(taken.getsockname()[1])
        result = subprocess.run(
            [GOVMESH, "up", "--engine-port", str(_free_port()), "--metrics-port", str(first)],
            env=up_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"the engine metrics port 127.0.0.1:{first} is taken" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "pg").exists()


def test_first_minutes_keys_init_then_up_with_that_setup_allows_then_denies_with_a_reason(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOVMESH_")}
    # The flag must win over the variable: nothing may land in this one.
    env["GOVMESH_DATA_DIR"] = str(tmp_path / "not-this-one")
    data = tmp_path / "mesh-data"

    # 1. A trust setup of the user's own, which names its trust file and keys folder.
    created = _govmesh("keys", "init", str(tmp_path / "trust"), env=env).stdout
    named = dict(re.findall(r"^\s+(GOVMESH_[A-Z_]+)=(\S+)$", created, re.MULTILINE))
    setup = DevSetup(tmp_path / "trust")

    # 2. The mesh on that setup, its data (embedded Postgres included) where the flag says.
    log = tmp_path / "up.log"
    up = _start_up(
        env,
        _free_port(),
        log,
        "--data-dir",
        str(data),
        "--trust",
        named["GOVMESH_TRUST_FILE"],
        "--keys",
        named["GOVMESH_KEYS_DIR"],
        "--policies",
        str(setup.policies),
    )
    try:
        children = psutil.Process(up.pid).children(recursive=True)
        postgres = psutil.Process(int((data / "pg" / "postmaster.pid").read_text().split()[0]))
        printed = re.search(r"govmesh is up: engine at (\S+)", log.read_text())
        assert printed, log.read_text()
        target = printed.group(1)

        # 3. A mandate from the setup's issuer, and a first decision.
        mandate = tmp_path / "mandate.jwt"
        issued = _govmesh("mandate", "issue", "--dev-dir", str(setup.root), env=env)
        mandate.write_text(issued.stdout)
        ask = [
            "authorize",
            "--dev-dir",
            str(setup.root),
            "--target",
            target,
            "--action",
            "payments.transfer",
            "--resource",
            "account:acme/treasury",
            "--mandate",
            str(mandate),
            "--timeout",
            "10",
        ]
        allowed = _govmesh(*ask, "--context", '{"amount": 250}', env=env, check=False)
        # 4. One thing changed: an amount the sample policy does not permit.
        denied = _govmesh(*ask, "--context", '{"amount": 5000}', env=env, check=False)
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(60)

    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    allow = json.loads(allowed.stdout)
    assert allow["decision"] == "ALLOW"
    assert allow["grant"]
    assert allow["lineage"]
    assert denied.returncode == 1, denied.stdout + denied.stderr
    deny = json.loads(denied.stdout)
    assert deny["decision"] == "DENY"
    assert deny["reason"] == "POLICY_MISMATCH"
    assert deny["failed_checks"] == ["policy"]
    assert deny["message"]
    assert not deny.get("grant")

    # 5. SIGTERM stops everything; the setup given was used, not a generated one.
    assert code == 0, log.read_text()
    assert len(children) == 4
    _, alive = psutil.wait_procs([*children, postgres], timeout=20)
    assert alive == [], f"left behind: {alive}"
    assert "Traceback" not in log.read_text()
    assert not (data / "dev").exists()
    assert not (tmp_path / "not-this-one").exists()


def test_up_with_a_database_url_runs_the_migrations_and_uses_it(
    up_env: dict[str, str], tmp_path: Path, databases: DatabaseFactory
) -> None:
    url = databases.create(migrate=False)
    up_env["GOVMESH_DATABASE_URL"] = url
    up = _start_up(up_env, _free_port(), tmp_path / "up.log")
    try:
        tables = run_sync(fetch(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
    finally:
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
    assert "lineage_entries" in {row["tablename"] for row in tables}
    assert not (tmp_path / "data" / "pg").exists()


def test_a_supervisor_killed_outright_takes_its_children_with_it(
    up_env: dict[str, str], tmp_path: Path, databases: DatabaseFactory
) -> None:
    up_env["GOVMESH_DATABASE_URL"] = databases.create()
    up = _start_up(up_env, _free_port(), tmp_path / "up.log")
    children = psutil.Process(up.pid).children(recursive=True)
    up.kill()
    up.wait(10)

    gone, alive = psutil.wait_procs(children, timeout=20)
    assert alive == []
    assert len(gone) == 4


def test_db_upgrade_creates_the_schema(databases: DatabaseFactory) -> None:
    url = databases.create(migrate=False)
    env = {**os.environ, "GOVMESH_DATABASE_URL": url}
    result = _govmesh("db", "upgrade", env=env)
    assert "at head" in result.stdout
    versions = run_sync(fetch(url, "SELECT version_num FROM alembic_version"))
    assert versions
    again = _govmesh("db", "upgrade", env=env)  # idempotent
    assert again.returncode == 0


def test_db_upgrade_against_nothing_says_so(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOVMESH_")}
    result = _govmesh("db", "upgrade", env=env, check=False)
    assert result.returncode == 2
    assert "GOVMESH_DATABASE_URL" in result.stderr
    unreachable = {**env, "GOVMESH_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"}
    result = _govmesh("db", "upgrade", env=unreachable, check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_keys_init_then_cli_artifacts(tmp_path: Path) -> None:
    env = {**os.environ}
    created = _govmesh("keys", "init", str(tmp_path / "trust"), env=env)
    assert "GOVMESH_TRUST_FILE" in created.stdout
    again = _govmesh("keys", "init", str(tmp_path / "trust"), env=env, check=False)
    assert again.returncode == 2
    assert "not overwriting" in again.stderr
    mandate = _govmesh("mandate", "issue", "--dev-dir", str(tmp_path / "trust"), env=env)
    assert mandate.stdout.count(".") == 2
