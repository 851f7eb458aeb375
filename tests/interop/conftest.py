"""One ``ferry serve`` shared by the client interop tests: starting a server costs seconds,
and every test works on its own uploads, so they need not each have their own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.services import FerryProcess, running_ferry


@pytest.fixture(scope="session")
def live_ferry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FerryProcess]:
    """A running server on the embedded default (SQLite + local disk)."""
    with running_ferry(tmp_path_factory.mktemp("interop-ferry")) as server:
        yield server
