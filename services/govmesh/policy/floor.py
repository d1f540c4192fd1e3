"""The newest policy epoch a replica has verified, kept on its own disk.

The epoch history in Postgres is append-only, but whoever owns the database
(or restores a backup of it) can still take the newest epochs away, and a
replica that then (re)starts would find an older, validly signed state and
enforce it: an emergency freeze silently undone. So every replica records,
outside the database, the newest epoch whose signed activation statement it
verified, before it serves that epoch, and refuses to serve any older one,
across restarts too (the authority reports NOT_SERVING and says why).

The file (GOVMESH_POLICY_STATE_FILE) is a small JSON object,
{"epoch": N, "active": <bundle version>}. It is replaced atomically and
durably (`govmesh.runtime.durable.durable_write`: a temporary file written
and fsynced, renamed over it, the folder fsynced); a sibling `.lock` file
serializes replicas that share it, and the epoch in it only ever rises.

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
    """The newest epoch verified here: read at start, raised before each new epoch is served."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")

    def read(self) -> int:
        """The recorded epoch (0 when none is), after checking that the file can be written."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._locked():
                return self._read()
        except OSError as exc:
            raise FloorError(
                f"cannot use the policy state file {self.path}: {exc.strerror or exc}"
            ) from None

    def raise_to(self, epoch: int, active: str) -> int:
        """Record `epoch` unless a newer one is recorded; the epoch recorded afterwards.

        Durable when it returns: the new file and its folder entry are fsynced.
        """
        with self._locked():
            recorded = self._read()
            if epoch <= recorded:
                return recorded
            document = json.dumps({"epoch": epoch, "active": active}, sort_keys=True)
            durable_write(self.path, document.encode())
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
            text = self.path.read_text()
        except FileNotFoundError:
            return 0
        try:
            document = json.loads(text)
        except ValueError:
            document = None
        epoch = document.get("epoch") if isinstance(document, dict) else None
        if type(epoch) is not int or epoch < 0:
            raise FloorError(
                f"the policy state file {self.path} is unreadable; it should record the "
                'newest policy epoch this replica verified, as {"epoch": N, ...}'
            )
        return epoch
