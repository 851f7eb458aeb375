"""Group commit on a real SQLite database: concurrent writes share transactions, one bad
write fails alone, and no caller learns of a write before it is committed."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from app.db.engine import create_engine, create_session_factory, create_sqlite_writer_engine
from app.db.group_commit import AsyncSessionWriter, GroupCommit, ThreadedSqliteWriter


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'group.db'}")
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE items (name TEXT PRIMARY KEY)"))
    yield engine
    await engine.dispose()


@pytest.fixture(params=["sqlite-writer-thread", "async-session"])
def writes(request: pytest.FixtureRequest, engine: AsyncEngine) -> Iterator[GroupCommit]:
    """Both ways a group runs: SQLite's writer thread, and an async session (PostgreSQL's)."""
    if request.param == "sqlite-writer-thread":
        group = GroupCommit(ThreadedSqliteWriter(create_sqlite_writer_engine(str(engine.url))))
    else:
        group = GroupCommit(AsyncSessionWriter(create_session_factory(engine)))
    yield group
    group.close()


def insert(name: str) -> Callable[[Session], str]:
    def work(session: Session) -> str:
        session.execute(text("INSERT INTO items (name) VALUES (:name)"), {"name": name})
        return name

    return work


async def stored_names(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT name FROM items ORDER BY name"))
        return [row.name for row in rows]


async def test_concurrent_writes_commit_in_fewer_transactions_than_writes(
    engine: AsyncEngine, writes: GroupCommit
) -> None:
    names = [f"item-{index:03d}" for index in range(200)]
    results = await asyncio.gather(*(writes.run(insert(name)) for name in names))
    assert results == names
    assert await stored_names(engine) == names
    assert writes.pieces == 200
    assert writes.groups < 20, f"{writes.groups} transactions for 200 concurrent writes"


async def test_a_write_that_fails_fails_alone_and_the_others_commit_once(
    engine: AsyncEngine, writes: GroupCommit
) -> None:
    await writes.run(insert("taken"))
    names = ["a", "b", "taken", "c", "d"]
    outcomes = await asyncio.gather(
        *(writes.run(insert(name)) for name in names),
        return_exceptions=True,
    )
    assert outcomes[:2] == ["a", "b"] and outcomes[3:] == ["c", "d"]
    assert isinstance(outcomes[2], IntegrityError)
    assert await stored_names(engine) == ["a", "b", "c", "d", "taken"]


async def test_a_cancelled_caller_waits_for_its_group_and_its_write_is_committed(
    engine: AsyncEngine, writes: GroupCommit
) -> None:
    in_group = threading.Event()

    def slow_insert(session: Session) -> str:
        in_group.set()
        time.sleep(0.2)  # (on the async-session writer this blocks the loop: fine here)
        session.execute(text("INSERT INTO items (name) VALUES ('slow')"))
        return "slow"

    caller = asyncio.create_task(writes.run(slow_insert))
    while not in_group.is_set():
        await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    # The cancellation reached the caller only once its transaction had ended.
    assert await stored_names(engine) == ["slow"]


async def test_a_write_arriving_at_an_idle_committer_runs_alone_at_once(
    writes: GroupCommit,
) -> None:
    for name in ("one", "two", "three"):
        assert await writes.run(insert(name)) == name
    assert (writes.groups, writes.pieces) == (3, 3)


def synchronous_level(session: Session) -> int:
    """SQLite's ``PRAGMA synchronous`` inside the transaction: 1 NORMAL, 2 FULL."""
    return int(session.execute(text("PRAGMA synchronous")).scalar_one())


async def test_sqlite_fsyncs_a_group_only_when_one_of_its_writes_must_be_durable(
    engine: AsyncEngine,
) -> None:
    writes = GroupCommit(ThreadedSqliteWriter(create_sqlite_writer_engine(str(engine.url))))
    try:
        assert await writes.run(synchronous_level, durable=False) == 1
        assert await writes.run(synchronous_level) == 2
        assert await writes.run(synchronous_level, durable=False) == 1
        # Submitted together, they commit as one group: one durable write makes it durable.
        levels = await asyncio.gather(
            writes.run(synchronous_level, durable=False),
            writes.run(synchronous_level, durable=False),
            writes.run(synchronous_level),
            writes.run(synchronous_level, durable=False),
        )
        assert levels == [2, 2, 2, 2]
        assert writes.groups == 4
    finally:
        writes.close()


class _WriterCallingBackOnce:
    """A real writer that, once, calls ``then`` as its group returns: whatever ``then``
    wakes runs right after the committer's last step, before anything queued later."""

    def __init__(self, inner: ThreadedSqliteWriter | AsyncSessionWriter) -> None:
        self.inner = inner
        self.then: Callable[[], None] | None = None

    async def run(self, work: Callable[[Session], str], *, durable: bool = True) -> str:
        result = await self.inner.run(work, durable=durable)
        if self.then is not None:
            self.then()
            self.then = None
        return result

    @property
    def engine(self) -> object:
        return self.inner.engine

    def close(self) -> None:
        self.inner.close()


async def test_a_write_arriving_just_as_the_committer_ends_is_committed_promptly(
    engine: AsyncEngine,
) -> None:
    """A write submitted in the instant between the committer's last group and its exit
    must start a committer of its own, not wait for the next write to come along (it once
    waited 60 s, until the client's retry arrived, and both were stored)."""
    writer = _WriterCallingBackOnce(AsyncSessionWriter(create_session_factory(engine)))
    writes = GroupCommit(writer)  # type: ignore[arg-type]
    go = asyncio.Event()

    async def late_write() -> str:
        await go.wait()  # woken by the committer's last step, scheduled right after it
        return await writes.run(insert("late"))

    late = asyncio.create_task(late_write())
    await asyncio.sleep(0)  # the late writer waits on ``go``
    writer.then = go.set
    assert await writes.run(insert("first")) == "first"
    finished, _ = await asyncio.wait({late}, timeout=5)
    assert finished == {late}, "the late write was left waiting for another write"
    assert late.result() == "late"
