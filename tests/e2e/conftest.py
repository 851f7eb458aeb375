"""Fixtures for the tus end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.services import FerryProcess, running_ferry

#: Short enough that the stalled-client test is quick, long enough for any live client.
SHARED_READ_TIMEOUT_SECONDS = 2


@pytest.fixture(scope="session")
def shared_ferry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FerryProcess]:
    """One ``ferry serve`` (SQLite + local disk) for the tests that never stop or kill it.

    Starting a server costs seconds; tests that only create their own uploads share this one.
    """
    env = {"FERRY_READ_TIMEOUT_SECONDS": str(SHARED_READ_TIMEOUT_SECONDS)}
    with running_ferry(tmp_path_factory.mktemp("e2e-ferry"), env) as server:
        yield server
