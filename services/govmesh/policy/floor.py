"""A replica's epoch floor: the newest policy epoch it has verified, in its state file.

The epoch history in Postgres is append-only, but whoever owns the database
(or restores a backup of it) can still take the newest epochs away, and a
replica that then (re)starts would find an older, validly signed state and
enforce it: an emergency freeze silently undone. So every replica keeps an
epoch floor outside the database: the newest epoch whose signed activation
statement it verified, recorded before it serves that epoch. It refuses to
serve any epoch below the floor, across restarts too (the authority reports
NOT_SERVING and says why).

The state file (GOVMESH_POLICY_STATE_FILE) records the floor as a small JSON object,
{"epoch": N, "active": <bundle version>}. It is replaced atomically and
durably (`govmesh.runtime.durable.durable_write`: a temporary file written
and fsynced, renamed over it, the folder fsynced); a sibling `.lock` file
serializes replicas that share it, and the floor in it only ever rises.

Why not chain the activation statements (each signing the hash of the one
before)? A chain proves that a history is one the admins wrote, but a prefix
of a valid chain is valid too: deleting the newest epochs leaves a chain that
checks. Only a record kept outside the database detects the truncation, and
each statement already names its epoch, so no old statement can be replayed
as a new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from govmesh.runtime.durable import durable_write
from govmesh.runtime.errors import ConfigurationError


class FloorError(ConfigurationError):
    """The state file cannot be read or written; the message names it."""


class EpochFloor:
    """The epoch floor in `state_file`: read at start, raised before each new epoch is served."""

    def __init__(self, state_file: Path) -> None:
        self.state_file = state_file
        self._lock_path = state_file.with_name(state_file.name + ".lock")

    def read(self) -> int:
        """The floor (0 when none is recorded), after checking that the state file is writable."""
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            with self._locked():
                return self._read()
        except OSError as exc:
            raise FloorError(
                f"cannot use the policy state file {self.state_file}: {exc.strerror or exc}"
            ) from None

    def raise_to(self, epoch: int, active: str) -> int:
        """Raise the floor to `epoch` unless it is higher already; the floor afterwards.

        Durable when it returns: the new file and its folder entry are fsynced.
        """
        with self._locked():
            recorded = self._read()
            if epoch <= recorded:
                return recorded
            document = json.dumps({"epoch": epoch, "active": active}, sort_keys=True)
            durable_write(self.state_file, document.encode())
            return epoch

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read(self) -> int:
        try:
            text = self.state_file.read_text()
        except FileNotFoundError:
            return 0
        try:
            document = json.loads(text)
        except ValueError:
            document = None
        epoch = document.get("epoch") if isinstance(document, dict) else None
        if type(epoch) is not int or epoch < 0:
            raise FloorError(
                f"the policy state file {self.state_file} is unreadable; it should record the "
                'newest policy epoch this replica verified, as {"epoch": N, ...}'
            )
        return epoch
