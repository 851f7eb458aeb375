"""Row reads on a real SQLite database, in reader threads of their own: they see every
committed write at once, answer while the writer holds its transaction, and never write."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from app.db.engine import create_sqlite_reader_engine, create_sqlite_writer_engine
from app.db.group_commit import GroupCommit, ThreadedSqliteWriter
from app.db.row_reads import ThreadedSqliteReads
from tests.integration.test_group_commit import engine, insert

__all__ = ["engine"]  # the fixture: a SQLite database with one table, ``items``


@pytest.fixture
def reads(engine: AsyncEngine) -> Iterator[ThreadedSqliteReads]:
    reader = ThreadedSqliteReads(create_sqlite_reader_engine(str(engine.url), 2), threads=2)
    yield reader
    reader.close()


@pytest.fixture
def writes(engine: AsyncEngine) -> Iterator[GroupCommit]:
    group = GroupCommit(ThreadedSqliteWriter(create_sqlite_writer_engine(str(engine.url))))
    yield group
    group.close()


def names(session: Session) -> list[str]:
    return list(session.scalars(text("SELECT name FROM items ORDER BY name")))


async def test_a_read_sees_every_write_committed_before_it_began(
    reads: ThreadedSqliteReads, writes: GroupCommit
) -> None:
    for name in ("a", "b", "c"):
        await writes.run(insert(name))
        assert (await reads.run(names))[-1] == name


async def test_a_read_answers_while_the_writer_holds_its_transaction(
    reads: ThreadedSqliteReads, writes: GroupCommit
) -> None:
    await writes.run(insert("before"))
    holding, release = threading.Event(), threading.Event()

    def slow_write(session: Session) -> None:
        insert("during")(session)
        holding.set()
        assert release.wait(10)

    writing = asyncio.ensure_future(writes.run(slow_write))
    assert await asyncio.to_thread(holding.wait, 10)
    try:
        # WAL: the reader sees the last commit, not the writer's open transaction, and does
        # not wait for it to end.
        assert await asyncio.wait_for(reads.run(names), timeout=2) == ["before"]
    finally:
        release.set()
        await writing
    assert await reads.run(names) == ["before", "during"]


async def test_a_reader_connection_refuses_to_write(reads: ThreadedSqliteReads) -> None:
    with pytest.raises(OperationalError, match="readonly"):
        await reads.run(insert("sneaked"))
    assert await reads.run(names) == []
