"""A service that cannot start says why in one line: exit 2 for settings, 1 for a missing peer."""

from __future__ import annotations

import pytest

from govmesh.runtime.entry import run_service
from govmesh.runtime.errors import ConfigurationError, Unavailable
from govmesh.runtime.settings import ServerSettings


class _Settings(ServerSettings):
    pass


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (Unavailable("the newest policy epoch is still unknown after 30 s"), 1),
        (ConfigurationError("GOVMESH_TRUST_FILE: no such file"), 2),
    ],
)
def test_a_service_that_cannot_start_exits_with_one_line_and_no_traceback(
    error: Exception, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    async def run(settings: _Settings) -> None:
        raise error

    assert run_service("probe", _Settings, run, []) == code
    err = capsys.readouterr().err
    assert err == f"govmesh probe: {error}\n"
    assert "Traceback" not in err


def test_any_other_error_is_not_swallowed() -> None:
    async def run(settings: _Settings) -> None:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run_service("probe", _Settings, run, [])
