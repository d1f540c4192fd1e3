"""The one durable file write: whole or not at all, and on disk when it returns.

Used for every small file govmesh must not lose or find half-written: the
engine's deny spool and its quarantine, the policy replica's epoch floor and
the witness's last cosigned checkpoint. (The lineage state file is not
replaced but rewritten in place, in one of two checksummed slots, so that a
torn write loses at most the newer slot; it shares only `fsync_directory`.)
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """Make the entries of `directory` (a file created or renamed in it) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically and durably; OSError if it cannot be done.

    1. Write a temporary file beside it (same folder, so same file system),
       private to this process, readable by its owner only.
    2. fsync the temporary file: its bytes are on disk before its name is.
    3. Rename it over `path`: a reader sees the old file or the new one.
    4. fsync the folder: the rename itself survives a crash.
    """
    # 1. Beside `path`; the pid keeps processes that share the folder apart.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        # 2. The bytes first.
        os.fsync(fd)
    except OSError:
        # A full disk: the half-written file would only take more of it.
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    # 3. Then the name.
    tmp.replace(path)
    # 4. And the folder entry.
    fsync_directory(path.parent)
