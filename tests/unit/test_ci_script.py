""".ci/run starts the machine's Postgres when it is down, whatever versions are installed.

The script runs for real, with the commands it drives (pg_isready, pg_ctlcluster,
psql, createdb, make) replaced by recorders on PATH and a cluster configuration
root of our own through postgresql-common's PG_CLUSTER_CONF_ROOT.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

RECORDERS = {
    # Down until a cluster was started.
    "pg_isready": '[ -f "$CALLS/started" ]',
    "pg_ctlcluster": 'echo "pg_ctlcluster $*" >> "$CALLS/log"; touch "$CALLS/started"',
    "psql": "echo 1",
    "createdb": 'echo "createdb $*" >> "$CALLS/log"',
    # The GOVMESH_* variables each make runs with, after its arguments.
    "make": 'echo "make $* $(env | grep ^GOVMESH_ | sort | tr "\\n" " ")" >> "$CALLS/log"',
}

#: A developer's own settings: the runs against the machine's Postgres keep them
#: (with .ci/run's test database), the newcomer's run must not see them.
DEVELOPER = {"GOVMESH_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/govmesh"}
WITH_DATABASE = (
    f"GOVMESH_DATABASE_URL={DEVELOPER['GOVMESH_DATABASE_URL']} "
    "GOVMESH_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/govmesh_test"
)
#: What .ci/run runs: install, lint, the tests against the machine's Postgres, and
#: the README's `make test` again with no GOVMESH_* variable at all (embedded Postgres).
MAKES = [
    f"make .venv/.installed-dev {WITH_DATABASE}",
    f"make lint {WITH_DATABASE}",
    f"make test {WITH_DATABASE}",
    "make test",
]


def _run_ci(tmp_path: Path, versions: dict[str, bool], *, up: bool = False) -> list[str]:
    """Run .ci/run; `versions` maps a version folder to whether it has a main cluster."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in RECORDERS.items():
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)
    conf_root = tmp_path / "etc-postgresql"
    for version, has_main in versions.items():
        (conf_root / version / ("main" if has_main else "other")).mkdir(parents=True)
    calls = tmp_path / "calls"
    calls.mkdir()
    if up:
        (calls / "started").touch()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GOVMESH_")},
        **DEVELOPER,
        "GOVMESH_TEST_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/elsewhere",
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "PG_CLUSTER_CONF_ROOT": str(conf_root),
        "CALLS": str(calls),
    }
    result = subprocess.run(
        [str(ROOT / ".ci" / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    log = calls / "log"
    return [line.rstrip() for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.parametrize(
    ("versions", "started"),
    [
        pytest.param({"15": True}, "15", id="one-version"),
        pytest.param({"12": True, "13": True}, "12", id="two-versions"),
        pytest.param({"9.6": True, "15": True}, "9.6", id="version-order-not-text-order"),
        pytest.param({"14": False, "16": True}, "16", id="a-version-without-main"),
    ],
)
def test_a_down_postgres_is_started_from_the_first_version_with_a_main_cluster(
    tmp_path: Path, versions: dict[str, bool], started: str
) -> None:
    calls = _run_ci(tmp_path, versions)

    assert calls[0] == f"pg_ctlcluster --skip-systemctl-redirect {started} main start"
    assert [c for c in calls if c.startswith("pg_ctlcluster")] == [calls[0]]
    assert calls[1:] == MAKES


def test_a_running_postgres_is_left_alone(tmp_path: Path) -> None:
    calls = _run_ci(tmp_path, {"15": True, "16": True}, up=True)

    assert calls == MAKES
