"""Rows read by primary key for the hottest read-only requests: a tus HEAD, a download.

Through SQLAlchemy's asyncio bridge, one ``AsyncSession.get`` on SQLite is several trips
between the event loop and aiosqlite's thread (check a connection out, run, fetch, roll
back, check it in), each a future and a wake-up of the loop, and the engine's one pooled
connection makes concurrent readers queue for each other. That cost more CPU than the
rest of a HEAD. :class:`ThreadedSqliteReads` does the whole read in one hand-off to a
small pool of threads with connections of their own (WAL lets them read beside the
writer): a HEAD went from ~1.5 to ~0.9 ms of server CPU. PostgreSQL keeps the pooled
async sessions (:class:`AsyncSessionReads`): asyncpg has no thread to hand off to.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from app.core.threads import settled
from app.db.group_commit import Work

Result = TypeVar("Result")

READ_THREADS = 4
"""Threads (and SQLite connections) for row reads: enough that a slow disk read does not
hold the others up; each read is short, so more would only add idle connections."""


class ThreadedSqliteReads:
    """Row reads on SQLite, each in one trip to a reader thread (its own connection)."""

    def __init__(self, engine: Engine, threads: int = READ_THREADS) -> None:
        self._engine = engine
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="ferry-sqlite-reader")

    async def run(self, work: Work[Result]) -> Result:
        """``work`` on a session of its own (read-only: nothing is committed); the rows it
        returns are detached, with their loaded attributes."""
        loop = asyncio.get_running_loop()
        return await settled(loop.run_in_executor(self._threads, self._read, work))

    def _read(self, work: Work[Result]) -> Result:
        with Session(self._engine, expire_on_commit=False) as session:
            return work(session)

    def close(self) -> None:
        """Let the threads go and close their connections (at shutdown)."""
        self._threads.shutdown(wait=True)
        self._engine.dispose()


class AsyncSessionReads:
    """Row reads on any async engine (PostgreSQL): one pooled ``AsyncSession`` each."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def run(self, work: Work[Result]) -> Result:
        """``work`` in one session's ``run_sync``; its rows come back detached."""
        async with self._sessions() as session:
            return await session.run_sync(work)

    def close(self) -> None:
        """Nothing of its own to close (the engine belongs to the caller)."""


RowReads = ThreadedSqliteReads | AsyncSessionReads
"""Where the hottest reads by primary key run."""
