"""CPU time per decision and peak memory, per mesh process and for Postgres.

    meter = CpuMeter(up_pid=up.pid, database_url=url)
    meter.reset_peaks()
    before = await meter.sample()
    ...  # the measured window
    print(meter.report(before, await meter.sample(), decisions))
    print(meter.peak_rss_mib())

A sample reads psutil's cpu_times (user + system) of every process `govmesh up`
started (grouped by service: engine, verification, policy, lineage) and, when
the database URL is known, of the Postgres backends serving that database
(from pg_stat_activity) and of the Postgres server's own background processes.
The background processes serve every database on the server, so on a shared
server they are reported apart and left out of the mesh's total.

CPU time per decision is steadier than decisions/s on a machine shared with
other work: it does not depend on how much of the CPU the mesh was given.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil
from sqlalchemy.engine import make_url

from govmesh.runtime.db import libpq_database_url

#: Background processes of the Postgres server, shared by every database on it.
SHARED = "postgres server"
BACKENDS = "postgres"

_SERVICE = re.compile(r"govmesh\.(engine|verification|policy|lineage)\b")


@dataclass(frozen=True)
class Sample:
    """CPU seconds used so far, by process id, and the group each process belongs to."""

    seconds: dict[int, float]
    groups: dict[int, str]


def _cpu(process: psutil.Process) -> float | None:
    try:
        times = process.cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    return float(times.user + times.system)


def _peak_rss_kib(pid: int) -> int | None:
    """VmHWM: the largest resident set the process reached since its peak was last reset."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) if found else None


class CpuMeter:
    """Samples the CPU time and memory of one `govmesh up` and its database."""

    def __init__(self, *, up_pid: int, database_url: str | None = None) -> None:
        self._up = psutil.Process(up_pid)
        self._database_url = libpq_database_url(database_url) if database_url else None

    def _mesh(self) -> dict[int, str]:
        groups = {}
        for child in self._up.children(recursive=True):
            try:
                found = _SERVICE.search(" ".join(child.cmdline()))
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if found:
                groups[child.pid] = found.group(1)
        return groups

    async def _postgres(self) -> dict[int, str]:
        if self._database_url is None:
            return {}
        name = make_url(self._database_url).database
        conn = await asyncpg.connect(self._database_url)
        try:
            rows = await conn.fetch(
                "SELECT pid, datname, backend_type FROM pg_stat_activity WHERE pid <> $1",
                conn.get_server_pid(),
            )
        finally:
            await conn.close()
        groups = {}
        for row in rows:
            if row["datname"] == name and row["backend_type"] == "client backend":
                groups[row["pid"]] = BACKENDS
            elif row["datname"] is None:
                groups[row["pid"]] = SHARED
        return groups

    async def sample(self) -> Sample:
        """CPU seconds of every process that counts, now."""
        groups = {**self._mesh(), **await self._postgres()}
        seconds = {}
        for pid in groups:
            used = _cpu(psutil.Process(pid)) if psutil.pid_exists(pid) else None
            if used is not None:
                seconds[pid] = used
        return Sample(seconds, groups)

    def mesh_pids(self) -> dict[int, str]:
        """The mesh's processes, by pid, and the service each one runs."""
        return self._mesh()

    def reset_peaks(self) -> None:
        """Start a new peak-memory window for every mesh process (Linux clear_refs)."""
        for pid in self._mesh():
            # Not ours to reset: the peak then covers the process's whole life.
            with contextlib.suppress(OSError):
                Path(f"/proc/{pid}/clear_refs").write_text("5")

    def peak_rss_mib(self) -> dict[str, float]:
        """Peak resident memory by service, MiB (the largest process of a service)."""
        peaks: dict[str, float] = {}
        for pid, group in self._mesh().items():
            kib = _peak_rss_kib(pid)
            if kib is not None:
                peaks[group] = max(peaks.get(group, 0.0), kib / 1024)
        return peaks

    @staticmethod
    def per_decision(before: Sample, after: Sample, decisions: int) -> dict[str, float]:
        """Milliseconds of CPU per decision, by group, between two samples."""
        spent: dict[str, float] = {}
        for pid, used in after.seconds.items():
            # A process born in the window counts whole; one that died in it is lost.
            delta = used - before.seconds.get(pid, 0.0)
            group = after.groups[pid]
            spent[group] = spent.get(group, 0.0) + delta
        return {group: s * 1000 / max(decisions, 1) for group, s in spent.items()}

    @classmethod
    def report(cls, before: Sample, after: Sample, decisions: int) -> str:
        """One line: CPU ms per decision by process group, the mesh's total, the shared rest."""
        figures = cls.per_decision(before, after, decisions)
        order = ["engine", "verification", "policy", "lineage", BACKENDS]
        mesh = {g: figures[g] for g in order if g in figures}
        parts = [f"{g} {v:.2f}" for g, v in mesh.items()]
        line = "cpu ms/decision: " + ", ".join(parts) + f"; total {sum(mesh.values()):.2f}"
        if SHARED in figures:
            line += f" (+ {SHARED}, shared by every database: {figures[SHARED]:.2f})"
        return line
