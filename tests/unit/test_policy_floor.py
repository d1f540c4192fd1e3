"""The newest policy epoch a replica verified, on its local disk."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from govmesh.policy.floor import EpochFloor, FloorError
from govmesh.runtime.errors import ConfigurationError

VERSION = "ab" * 32


def test_a_new_floor_is_zero_and_its_folder_is_made(tmp_path: Path) -> None:
    floor = EpochFloor(tmp_path / "state" / "policy" / "epoch.json")

    assert floor.read() == 0
    assert floor.state_file.parent.is_dir()  # and writable: the lock file is there
    assert not floor.state_file.exists()


def test_the_floor_only_rises_and_outlives_the_process(tmp_path: Path) -> None:
    path = tmp_path / "epoch.json"
    floor = EpochFloor(path)

    assert floor.raise_to(3, VERSION) == 3
    assert floor.raise_to(2, VERSION) == 3  # never back
    assert floor.raise_to(5, VERSION) == 5

    assert EpochFloor(path).read() == 5  # what a restarted replica reads
    assert json.loads(path.read_text()) == {"epoch": 5, "active": VERSION}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch.json", "epoch.json.lock"]


def test_replicas_sharing_a_file_keep_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "epoch.json"
    floors = [EpochFloor(path) for _ in range(4)]
    start = threading.Barrier(len(floors))

    def climb(floor: EpochFloor, offset: int) -> None:
        start.wait()
        for epoch in range(1 + offset, 200, len(floors)):
            floor.raise_to(epoch, VERSION)

    threads = [threading.Thread(target=climb, args=(f, n)) for n, f in enumerate(floors)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert EpochFloor(path).read() == 199


@pytest.mark.parametrize(
    "content",
    ["", "{", "[]", '{"epoch": "5"}', '{"epoch": -1}', '{"epoch": true}', '{"active": "x"}'],
)
def test_an_unreadable_floor_stops_the_start_with_its_path(tmp_path: Path, content: str) -> None:
    path = tmp_path / "epoch.json"
    path.write_text(content)

    with pytest.raises(FloorError, match=r"epoch\.json") as refused:
        EpochFloor(path).read()

    assert isinstance(refused.value, ConfigurationError)  # a start-up error, no traceback


def test_a_floor_that_cannot_be_written_is_a_start_up_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")

    with pytest.raises(FloorError, match="cannot use"):
        EpochFloor(blocker / "epoch.json").read()
