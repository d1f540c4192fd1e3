"""The floor: the newest tree a lineage process signed or verified, kept in its state file.

The log never signs two checkpoints that are inconsistent with each other.
Within a process the sequencer guarantees it: every checkpoint it signs
extends the tree it trusts. Across restarts the database alone cannot: a
database restored from a backup, or rolled back by whoever owns it, holds an
older tree whose checkpoints are all validly signed, and a sequencer that
trusted it would sign new checkpoints at sizes it already signed, over other
entries: a fork that every earlier receipt, proof bundle and witness would
contradict. So the sequencer records the newest tree it signed (or verified),
the floor, in the state file on its own disk, after each commit and before
any receipt leaves, and at start refuses a log that is smaller than the floor
or not consistent with it.

The state file (GOVMESH_LINEAGE_STATE_FILE) holds two fixed 512-byte slots, each
one JSON record {"origin", "size", "root"} with its SHA-256. A record is
written over the older slot and made durable with fdatasync (about 0.2 ms
here, once per committed batch), so a write torn by a crash loses at most the
record being written and the other slot still holds the one before. Reading
takes the valid record with the largest size: the floor. The process holds an
exclusive lock on the file for its lifetime: one state file belongs to one
lineage process.

The window this leaves: a crash after a commit and before its record is
durable, followed by a database rolled back to exactly the tree before that
commit. The checkpoint of that one batch was visible for well under a
millisecond and no receipt carried it.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from govmesh.runtime.durable import fsync_directory
from govmesh.runtime.errors import ConfigurationError

SLOT = 512
_MAGIC = b"govmesh-lineage-floor-v1\n"


class StateFileError(ConfigurationError):
    """The state file cannot be used; the message names it."""


@dataclass(frozen=True)
class SignedTree:
    """A tree the log signed: its origin, size and root hash."""

    origin: str
    size: int
    root: bytes


def _encode(tree: SignedTree) -> bytes:
    body = json.dumps(
        {"origin": tree.origin, "size": tree.size, "root": base64.b64encode(tree.root).decode()},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    record = _MAGIC + body + b"\n" + hashlib.sha256(body).hexdigest().encode() + b"\n"
    if len(record) > SLOT:
        raise StateFileError(f"the origin {tree.origin!r} is too long for the lineage state file")
    return record.ljust(SLOT, b"\0")


def _decode(slot: bytes) -> SignedTree | None:
    """The record in `slot`, or None when it is empty or torn."""
    if not slot.startswith(_MAGIC):
        return None
    parts = slot[len(_MAGIC) :].split(b"\n")
    if len(parts) < 3 or hashlib.sha256(parts[0]).hexdigest().encode() != parts[1]:
        return None
    try:
        document = json.loads(parts[0])
        tree = SignedTree(
            document["origin"], document["size"], base64.b64decode(document["root"], validate=True)
        )
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None
    if type(tree.size) is not int or tree.size < 0 or not isinstance(tree.origin, str):
        return None
    return tree


class StateFile:
    """The file that records the floor.

    Open with `open()`, read `floor`, `record()` each new tree, `close()` at the end.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._next_slot = 0
        #: The newest tree recorded: the floor (None when nothing is recorded yet).
        self.floor: SignedTree | None = None

    def open(self) -> SignedTree | None:
        """Lock the file and read the floor (None when nothing is recorded yet)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            if created:  # the new file's folder entry is durable before anything relies on it
                fsync_directory(self.path.parent)
        except OSError as exc:
            raise StateFileError(
                f"cannot use the lineage state file {self.path}: {exc.strerror or exc}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StateFileError(
                f"the lineage state file {self.path} is in use by another lineage process; "
                "give each one its own GOVMESH_LINEAGE_STATE_FILE"
            ) from None
        self._fd = fd
        content = os.pread(fd, 2 * SLOT, 0)
        slots = [_decode(content[i * SLOT : (i + 1) * SLOT]) for i in range(2)]
        if content.strip(b"\0") and not any(slots):
            self.close()
            raise StateFileError(
                f"the lineage state file {self.path} is unreadable; it records the newest tree "
                "this lineage process signed"
            )
        newest = max(
            ((i, t) for i, t in enumerate(slots) if t is not None),
            key=lambda pair: pair[1].size,
            default=None,
        )
        if newest is not None:
            self._next_slot = 1 - newest[0]
            self.floor = newest[1]
        return self.floor

    def record(self, tree: SignedTree) -> None:
        """Make `tree` the floor, durably; never lowers the floor."""
        if self._fd is None:
            raise StateFileError(f"the lineage state file {self.path} is not open")
        if self.floor is not None and tree.size <= self.floor.size:
            return
        try:
            os.pwrite(self._fd, _encode(tree), self._next_slot * SLOT)
            os.fdatasync(self._fd)
        except OSError as exc:
            raise StateFileError(
                f"cannot record the signed tree in {self.path}: {exc.strerror or exc}"
            ) from None
        self._next_slot = 1 - self._next_slot
        self.floor = tree

    def close(self) -> None:
        """Release the file and its lock."""
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None
