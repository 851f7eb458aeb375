"""Group commit: the short write transactions of concurrent requests committed as one.

A small upload costs one or a few tiny transactions (insert the upload and its file row,
move an offset, give a lease back). Begun and committed one by one, their fixed cost (a
pooled connection, ``BEGIN``, the ORM's flush machinery, ``COMMIT``) is most of a small
upload's database time, and on SQLite they queue for its one writer anyway.
:class:`GroupCommit` runs every transaction that arrives while the previous group commits
in one transaction of its own, like a database's group commit:

* nobody waits for a timer: a transaction arriving at an idle committer starts at once,
  alone; the group grows only while the database is busy, which is exactly when it pays;
* each piece of work is a plain (synchronous) function of an ORM session, so a whole group
  runs without returning to the event loop between statements: on SQLite in one trip to
  the writer's own thread (:class:`ThreadedSqliteWriter`), on PostgreSQL in one greenlet
  of SQLAlchemy's asyncio bridge (only asyncpg's round trips go through the loop);
* a piece's result (a rowcount, a loaded row) is handed back once the whole group has
  **committed**: no caller acts on a write that might still roll back;
* one failing piece must not fail the others: when a group fails, every piece is run
  again in a transaction of its own, and only the failing one sees its error. Pieces are
  therefore pure database work, safe to run twice after a rollback;
* a caller cancelled while its piece is in a group waits for the group to end (a few
  milliseconds) before the cancellation goes on, so whether its write committed is never
  unknown to it;
* a piece that need not survive a power loss (``durable=False``: taking or renewing a
  lease, which start-up gives back anyway) does not wait for a log flush of its own: on
  SQLite a group of such pieces commits with ``synchronous=NORMAL`` (WAL: no fsync), and
  the next durable group's fsync covers it too, since the log is written in order. A group
  with any durable piece commits durably.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from app.core.threads import settled

logger = logging.getLogger(__name__)

Result = TypeVar("Result")

Work = Callable[[Session], Result]
"""One transaction's statements, run on the group's session (synchronously)."""

MAX_GROUP = 64
"""Pieces in one transaction at most: bounds how long a group holds its locks."""


@dataclass(slots=True)
class _Piece(Generic[Result]):
    work: Work[Result]
    durable: bool = True
    done: asyncio.Future[Result] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class ThreadedSqliteWriter:
    """SQLite's writer: its own connection, used from its own thread.

    A group runs there from ``BEGIN`` to ``COMMIT`` in one hand-off, instead of one trip
    through the event loop per statement; and a durable group commits with
    ``synchronous=FULL`` (an fsync of the write-ahead log per group, taken by this thread),
    so a committed upload survives a power loss too, not only a crash of the process. A
    group that need not be durable commits with ``synchronous=NORMAL``: no fsync, still
    safe across a crash of the process; the next durable commit's fsync covers it.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="ferry-sqlite-writer")
        self._connection: Connection | None = None
        """Held from the first group to :meth:`close`, used by the writer's thread alone:
        taking it from the pool and giving it back cost more than a small group's
        statements."""
        self._syncs_commits = True
        """The connection's ``synchronous`` level: FULL (the engine's) or NORMAL."""

    async def run(self, work: Work[Result], *, durable: bool = True) -> Result:
        """``work`` in one committed transaction on the writer's thread; ``durable``: the
        commit is fsync'ed before the result comes back."""
        loop = asyncio.get_running_loop()
        return await settled(loop.run_in_executor(self._thread, self._transaction, work, durable))

    def _transaction(self, work: Work[Result], durable: bool) -> Result:
        connection = self._connection
        if connection is None or connection.closed or connection.invalidated:
            if connection is not None:
                connection.close()
            self._connection = connection = self._engine.connect()
            self._syncs_commits = True  # a new connection starts as the engine sets it
        if durable != self._syncs_commits:
            # Between transactions (SQLite refuses to change it inside one), on the driver's
            # connection: SQLAlchemy's would begin one first.
            cursor = connection.connection.cursor()
            cursor.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            cursor.close()
            self._syncs_commits = durable
        # The session joins the connection's transaction ("rollback_only": its commit
        # flushes, the connection's commits).
        with connection.begin():
            session = Session(
                bind=connection, join_transaction_mode="rollback_only", expire_on_commit=False
            )
            with session:
                result = work(session)
                session.commit()
            return result

    @property
    def engine(self) -> Engine:
        """The engine the groups commit on."""
        return self._engine

    def close(self) -> None:
        """Let the thread go and close the connection (at shutdown)."""
        self._thread.submit(self._close_connection).result()
        self._thread.shutdown(wait=True)
        self._engine.dispose()

    def _close_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class AsyncSessionWriter:
    """Any async engine (PostgreSQL): a group runs in one ``AsyncSession.run_sync``."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def run(self, work: Work[Result], *, durable: bool = True) -> Result:
        """``work`` in one committed transaction of a pooled connection (always durable:
        PostgreSQL's ``synchronous_commit`` is the server's to choose)."""
        async with self._sessions() as session, session.begin():
            return await session.run_sync(work)

    @property
    def engine(self) -> Engine:
        """The engine the groups commit on (the async engine's synchronous side)."""
        bind = self._sessions.kw["bind"]
        assert isinstance(bind, AsyncEngine)
        return bind.sync_engine

    def close(self) -> None:
        """Nothing of its own to close (the engine belongs to the caller)."""


class GroupCommit:
    """Runs write transactions, grouping the ones that arrive while a group commits.

    ``parallel``: groups in flight at once (1 for SQLite's single writer; a few for
    PostgreSQL, whose connections commit side by side).
    """

    def __init__(self, writer: ThreadedSqliteWriter | AsyncSessionWriter, parallel: int = 1):
        self._writer = writer
        self._parallel = parallel
        self._waiting: list[_Piece[Any]] = []
        self._committers: set[asyncio.Task[None]] = set()
        """Committers that will look at ``_waiting`` again. One leaves this set in the same
        step in which it finds ``_waiting`` empty (not in a done callback, a loop turn
        later): a piece added in between would otherwise wait for the next write."""
        self.groups = 0
        """Transactions committed (for tests and benchmarks: pieces per group)."""
        self.pieces = 0

    async def run(self, work: Work[Result], *, durable: bool = True) -> Result:
        """Run ``work`` in a committed transaction (alone or in a group); its result.

        ``durable=False``: the commit may be lost to a power loss (never to a crash of the
        process) until a later durable commit; for writes that start-up undoes anyway.
        """
        piece: _Piece[Result] = _Piece(work, durable)
        self._waiting.append(piece)
        if len(self._committers) < self._parallel:
            self._committers.add(asyncio.create_task(self._commit_while_waiting()))
        return await settled(piece.done)

    @property
    def engine(self) -> Engine:
        """The engine the groups commit on (its ``commit`` events count the groups)."""
        return self._writer.engine

    def close(self) -> None:
        """Release the writer (its thread and connection, on SQLite)."""
        self._writer.close()

    async def _commit_while_waiting(self) -> None:
        this = asyncio.current_task()
        try:
            while self._waiting:
                group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
                try:
                    await self._commit_group(group)
                except BaseException as failure:  # the committer itself was cancelled
                    self._committers.discard(this)
                    orphans = group if self._committers else group + self._waiting
                    if not self._committers:
                        self._waiting = []  # no committer is left to take them
                    for piece in orphans:
                        if not piece.done.done():
                            piece.done.set_exception(failure)
                    raise
        finally:
            self._committers.discard(this)

    async def _commit_group(self, group: list[_Piece[Any]]) -> None:
        if len(group) == 1:
            await self._commit_alone(group[0])
            return
        try:
            results = await self._writer.run(
                lambda session: [piece.work(session) for piece in group],
                durable=any(piece.durable for piece in group),
            )
        except Exception:
            # Which piece failed is not known to the database; each runs again on its own.
            logger.debug("a group of %d transactions failed; retrying each alone", len(group))
            for piece in group:
                await self._commit_alone(piece)
            return
        self.groups += 1
        self.pieces += len(group)
        for piece, result in zip(group, results, strict=True):
            piece.done.set_result(result)

    async def _commit_alone(self, piece: _Piece[Any]) -> None:
        try:
            result = await self._writer.run(piece.work, durable=piece.durable)
        except Exception as failure:
            piece.done.set_exception(failure)
            return
        self.groups += 1
        self.pieces += 1
        piece.done.set_result(result)
