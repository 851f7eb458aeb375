"""Group commit: the short write transactions of concurrent requests committed as one.

A small upload costs one or a few tiny transactions (insert the upload and its file row,
move an offset, give a lease back). Begun and committed one by one, their fixed cost (a
pooled connection, ``BEGIN``, the ORM's flush machinery, ``COMMIT``, a thread hop per
statement) is most of a small upload's database time, and on SQLite they queue for its one
connection anyway. :class:`GroupCommit` runs every transaction that arrives while the
previous group commits in one transaction of its own, like a database's group commit:

* nobody waits for a timer: a transaction arriving at an idle committer starts at once,
  alone; the group grows only while the database is busy, which is exactly when it pays;
* each piece of work is an ``async`` function of the session, run in turn; its result (a
  rowcount, a loaded row) is handed back once the whole group has **committed**, so no
  caller ever acts on a write that might still roll back (invariant 1: an answer follows
  the commit of its row);
* one failing piece must not fail the others: when a group fails, every piece is run
  again in a transaction of its own, and only the failing one sees its error. Pieces
  are therefore pure database work, safe to run twice after a rollback (they change
  Python objects only as the insert they stage, never acting on a result before commit);
* a caller cancelled while its piece is in a group waits for the group to end (a few
  milliseconds) before the cancellation goes on, so whether its write committed is never
  unknown to it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.threads import settled

logger = logging.getLogger(__name__)

Result = TypeVar("Result")

Work = Callable[[AsyncSession], Awaitable[Result]]
"""One transaction's statements, run on the group's session."""

MAX_GROUP = 64
"""Pieces in one transaction at most: bounds how long a group holds its locks."""


@dataclass(slots=True)
class _Piece(Generic[Result]):
    work: Work[Result]
    done: asyncio.Future[Result] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class GroupCommit:
    """Runs write transactions, grouping the ones that arrive while a group commits."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._waiting: list[_Piece[Any]] = []
        self._committer: asyncio.Task[None] | None = None
        self.groups = 0
        """Transactions committed (for tests and benchmarks: pieces per group)."""
        self.pieces = 0

    async def run(self, work: Work[Result]) -> Result:
        """Run ``work`` in a committed transaction (alone or in a group); its result."""
        piece: _Piece[Result] = _Piece(work)
        self._waiting.append(piece)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_while_waiting())
        return await settled(piece.done)

    async def _commit_while_waiting(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
            try:
                await self._commit_group(group)
            except BaseException as failure:  # the committer itself was cancelled
                for piece in group + self._waiting:
                    if not piece.done.done():
                        piece.done.set_exception(failure)
                self._waiting = []
                raise

    async def _commit_group(self, group: list[_Piece[Any]]) -> None:
        if len(group) == 1:
            await self._commit_alone(group[0])
            return
        try:
            async with self._sessions() as session, session.begin():
                results = [await piece.work(session) for piece in group]
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
            async with self._sessions() as session, session.begin():
                result = await piece.work(session)
        except Exception as failure:
            piece.done.set_exception(failure)
            return
        self.groups += 1
        self.pieces += 1
        piece.done.set_result(result)
