"""Group commit on a real SQLite database: concurrent writes share transactions, one bad
write fails alone, and no caller learns of a write before it is committed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.db.engine import create_engine, create_session_factory
from app.db.group_commit import GroupCommit


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'group.db'}")
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE items (name TEXT PRIMARY KEY)"))
    yield engine
    await engine.dispose()


def insert(name: str) -> object:
    async def work(session: AsyncSession) -> str:
        await session.execute(text("INSERT INTO items (name) VALUES (:name)"), {"name": name})
        return name

    return work


async def stored_names(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT name FROM items ORDER BY name"))
        return [row.name for row in rows]


async def test_concurrent_writes_commit_in_fewer_transactions_than_writes(
    engine: AsyncEngine,
) -> None:
    writes = GroupCommit(create_session_factory(engine))
    names = [f"item-{index:03d}" for index in range(200)]
    results = await asyncio.gather(*(writes.run(insert(name)) for name in names))  # type: ignore[arg-type]
    assert results == names
    assert await stored_names(engine) == names
    assert writes.pieces == 200
    assert writes.groups < 20, f"{writes.groups} transactions for 200 concurrent writes"


async def test_a_write_that_fails_fails_alone_and_the_others_commit_once(
    engine: AsyncEngine,
) -> None:
    writes = GroupCommit(create_session_factory(engine))
    await writes.run(insert("taken"))  # type: ignore[arg-type]
    names = ["a", "b", "taken", "c", "d"]
    outcomes = await asyncio.gather(
        *(writes.run(insert(name)) for name in names),  # type: ignore[arg-type]
        return_exceptions=True,
    )
    assert outcomes[:2] == ["a", "b"] and outcomes[3:] == ["c", "d"]
    assert isinstance(outcomes[2], IntegrityError)
    assert await stored_names(engine) == ["a", "b", "c", "d", "taken"]


async def test_a_cancelled_caller_waits_for_its_group_and_its_write_is_committed(
    engine: AsyncEngine,
) -> None:
    writes = GroupCommit(create_session_factory(engine))
    in_group = asyncio.Event()

    async def slow_insert(session: AsyncSession) -> str:
        in_group.set()
        await asyncio.sleep(0.2)
        await session.execute(text("INSERT INTO items (name) VALUES ('slow')"))
        return "slow"

    caller = asyncio.create_task(writes.run(slow_insert))
    await in_group.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    # The cancellation reached the caller only once its transaction had ended.
    assert await stored_names(engine) == ["slow"]


async def test_a_write_arriving_at_an_idle_committer_runs_alone_at_once(
    engine: AsyncEngine,
) -> None:
    writes = GroupCommit(create_session_factory(engine))
    for name in ("one", "two", "three"):
        assert await writes.run(insert(name)) == name  # type: ignore[arg-type]
    assert (writes.groups, writes.pieces) == (3, 3)
