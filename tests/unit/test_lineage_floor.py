"""The lineage state file: durable, torn-write tolerant, one process at a time."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from govmesh.lineage.floor import SLOT, SignedTree, StateFile, StateFileError

ORIGIN = "test.govmesh.local/lineage"


def tree(size: int) -> SignedTree:
    return SignedTree(ORIGIN, size, hashlib.sha256(str(size).encode()).digest())


def reopened(path: Path) -> SignedTree | None:
    state_file = StateFile(path)
    try:
        return state_file.open()
    finally:
        state_file.close()


def test_a_new_file_records_nothing_and_each_record_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "lineage.floor"
    state_file = StateFile(path)
    assert state_file.open() is None
    state_file.record(tree(5))
    state_file.record(tree(9))
    state_file.close()
    assert reopened(path) == tree(9)


def test_the_recorded_tree_never_goes_back(tmp_path: Path) -> None:
    path = tmp_path / "lineage.floor"
    state_file = StateFile(path)
    state_file.open()
    state_file.record(tree(9))
    state_file.record(tree(4))
    state_file.close()
    assert reopened(path) == tree(9)


@pytest.mark.parametrize("damage", ["torn", "zeroed"])
def test_a_torn_write_loses_only_the_record_being_written(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "lineage.floor"
    state_file = StateFile(path)
    state_file.open()
    for size in (3, 7, 12):  # slots: 0, 1, then 0 again
        state_file.record(tree(size))
    state_file.close()
    content = bytearray(path.read_bytes())
    if damage == "torn":
        content[100:140] = b"\xff" * 40
    else:
        content[:SLOT] = b"\0" * SLOT
    path.write_bytes(bytes(content))
    assert reopened(path) == tree(7)


def test_an_unreadable_file_is_refused_not_taken_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "lineage.floor"
    path.write_bytes(b'{"size": 12}')
    with pytest.raises(StateFileError, match="unreadable"):
        StateFile(path).open()


def test_one_file_serves_one_process(tmp_path: Path) -> None:
    path = tmp_path / "lineage.floor"
    holder = StateFile(path)
    holder.open()
    try:
        with pytest.raises(StateFileError, match="in use by another lineage process"):
            StateFile(path).open()
    finally:
        holder.close()
    assert reopened(path) is None


def test_a_state_file_that_cannot_be_created_is_a_start_up_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(StateFileError, match="cannot use the lineage state file"):
        StateFile(blocker / "lineage.floor").open()


def test_recording_without_opening_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StateFileError, match="not open"):
        StateFile(tmp_path / "lineage.floor").record(tree(1))
