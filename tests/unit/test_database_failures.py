"""A database that cannot be reached is a database error (503), whatever the driver raises,
and a lease whose release it refused is released as soon as it answers again."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi
from sqlalchemy.exc import OperationalError

import app.db.unreleased as unreleased_module
from app.db.engine import (
    DATABASE_ERRORS,
    _connect_failures_are_database_errors,
    create_engine,
    database_problem,
    describe_database_failure,
)
from app.db.unreleased import UnreleasedLeases
from tests.support.services import free_port


class _RefusingDialect:
    """A dialect whose driver fails to connect the way asyncpg does while PostgreSQL is in
    crash recovery."""

    loaded_dbapi = AsyncAdapt_asyncpg_dbapi(asyncpg)

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        raise asyncpg.exceptions.CannotConnectNowError("the database system is starting up")


def test_a_connection_refused_by_a_recovering_database_is_an_operational_error() -> None:
    dialect: Any = _RefusingDialect()
    with pytest.raises(dialect.loaded_dbapi.OperationalError) as refused:
        _connect_failures_are_database_errors(dialect, None, [], {})
    assert describe_database_failure(refused.value) == (
        "database unavailable (CannotConnectNowError: the database system is starting up)"
    )


async def test_a_database_nobody_listens_for_is_a_database_error_and_a_health_reason() -> None:
    engine = create_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/ferry")
    try:
        with pytest.raises(DATABASE_ERRORS) as refused:
            async with engine.connect():
                pass
        assert isinstance(refused.value, OperationalError)
        reason = await database_problem(engine)
    finally:
        await engine.dispose()
    # Named, but without the address: health checks are public.
    assert reason == "database unavailable (ConnectionRefusedError: Connection refused)"


class _FlakyDatabase:
    """Refuses ``failures`` releases, then records the ones it performs."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.released: list[tuple[uuid.UUID, str]] = []

    async def release_row(self, upload_id: uuid.UUID, token: str) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise OperationalError("UPDATE uploads", {}, ConnectionRefusedError(111, "refused"))
        self.released.append((upload_id, token))


async def test_a_failed_release_is_retried_in_the_background_until_the_database_answers() -> None:
    database = _FlakyDatabase(failures=3)
    leases = UnreleasedLeases(database.release_row, lease_seconds=30)
    upload_id = uuid.uuid4()
    leases.remember(upload_id, "token-1")
    for _ in range(100):
        if database.released:
            break
        await asyncio.sleep(0.05)
    assert database.released == [(upload_id, "token-1")]
    assert upload_id not in leases
    await leases.close()


async def test_a_claimant_of_this_process_releases_the_remembered_lease_first() -> None:
    database = _FlakyDatabase(failures=0)
    leases = UnreleasedLeases(database.release_row, lease_seconds=30)
    upload_id = uuid.uuid4()
    leases.remember(upload_id, "token-1")
    await leases.retry(upload_id)
    assert database.released == [(upload_id, "token-1")]
    await leases.retry(upload_id)  # nothing left: no second statement
    assert len(database.released) == 1
    await leases.close()


async def test_a_release_is_forgotten_once_the_lease_would_have_lapsed() -> None:
    database = _FlakyDatabase(failures=1_000_000)
    leases = UnreleasedLeases(database.release_row, lease_seconds=0.3)
    leases.remember(uuid.uuid4(), "token-1")
    for _ in range(100):
        if not leases:
            break
        await asyncio.sleep(0.05)
    assert len(leases) == 0
    await leases.close()


async def test_remembered_releases_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unreleased_module, "MOST_REMEMBERED", 3)
    database = _FlakyDatabase(failures=1_000_000)
    leases = UnreleasedLeases(database.release_row, lease_seconds=30)
    ids = [uuid.uuid4() for _ in range(5)]
    for upload_id in ids:
        leases.remember(upload_id, "token")
    assert len(leases) == 3
    assert [upload_id in leases for upload_id in ids] == [False, False, True, True, True]
    await leases.close()
