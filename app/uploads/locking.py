"""One writer per upload (invariant 3): a compare-and-set lease on the upload row.

The lock is a token written into the row by a conditional UPDATE, so it works the same on
SQLite and PostgreSQL and across processes or nodes. A lease bounds how long a crashed
writer can hold it; a live writer renews the lease while its body streams, and a restarted
node releases the leases it held before it died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import CursorResult, or_, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.clock import utcnow
from app.db.models import Upload

logger = logging.getLogger(__name__)


class UploadLocks:
    """Acquire, renew and release upload leases."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], node_id: str, lease_seconds: float
    ) -> None:
        self._sessions = sessions
        self.node_id = node_id
        self.lease = timedelta(seconds=lease_seconds)

    def _claim(self, upload_id: uuid.UUID, token: str, conditions: dict[str, Any]) -> Any:
        """The compare-and-set UPDATE: free (or expired) lease and every condition holds."""
        now = utcnow()
        return (
            update(Upload)
            .where(
                Upload.id == upload_id,
                or_(Upload.lock_token.is_(None), Upload.lock_expires_at < now),
                *(getattr(Upload, column) == value for column, value in conditions.items()),
            )
            .values(lock_token=token, lock_holder=self.node_id, lock_expires_at=now + self.lease)
            .execution_options(synchronize_session=False)
        )

    async def acquire(self, upload_id: uuid.UUID, **conditions: Any) -> str | None:
        """Take the lease if it is free (or expired) and every ``column == value`` holds.

        Returns the lock token, or ``None`` when the lease is held or a condition failed.
        """
        token = secrets.token_hex(16)
        claimed = await self._execute(self._claim(upload_id, token, conditions))
        return token if claimed == 1 else None

    async def acquire_and_load(
        self, upload_id: uuid.UUID, **conditions: Any
    ) -> tuple[str, Upload] | None:
        """Like :meth:`acquire`, returning the locked row too: one round trip, not two."""
        token = secrets.token_hex(16)
        statement = self._claim(upload_id, token, conditions).returning(Upload)
        async with self._sessions() as session, session.begin():
            row = (await session.scalars(statement)).one_or_none()
        return None if row is None else (token, row)

    async def renew(self, upload_id: uuid.UUID, token: str) -> bool:
        """Extend a held lease; ``False`` means it was lost."""
        statement = (
            update(Upload)
            .where(Upload.id == upload_id, Upload.lock_token == token)
            .values(lock_expires_at=utcnow() + self.lease)
            .execution_options(synchronize_session=False)
        )
        return await self._execute(statement) == 1

    async def release(self, upload_id: uuid.UUID, token: str) -> None:
        """Give a lease back (a no-op if it was already released or lost)."""
        statement = (
            update(Upload)
            .where(Upload.id == upload_id, Upload.lock_token == token)
            .values(lock_token=None, lock_holder=None, lock_expires_at=None)
            .execution_options(synchronize_session=False)
        )
        await self._execute(statement)

    async def release_stale_of_this_node(self) -> int:
        """At start-up: leases this node held before it stopped belong to dead requests."""
        statement = (
            update(Upload)
            .where(Upload.lock_holder == self.node_id)
            .values(lock_token=None, lock_holder=None, lock_expires_at=None)
            .execution_options(synchronize_session=False)
        )
        return await self._execute(statement)

    async def _execute(self, statement: Any) -> int:
        async with self._sessions() as session, session.begin():
            result: CursorResult[Any] = await session.execute(statement)  # type: ignore[assignment]
            return int(result.rowcount)

    @contextlib.asynccontextmanager
    async def kept_alive(self, upload_id: uuid.UUID, token: str) -> Any:
        """Renew the lease in the background while the body streams.

        Yields a :class:`LeaseState` whose ``lost`` flag turns true if renewal fails, so the
        writer can stop before it could interleave with a new lock holder.
        """
        state = LeaseState()

        async def renew_forever() -> None:
            interval = self.lease.total_seconds() / 3
            while True:
                await asyncio.sleep(interval)
                try:
                    renewed = await self.renew(upload_id, token)
                except Exception:
                    logger.warning("renewing the lease of upload %s failed; retrying", upload_id)
                    continue
                if not renewed:
                    state.lost = True
                    return

        task = asyncio.create_task(renew_forever())
        try:
            yield state
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class LeaseState:
    """Whether a kept-alive lease was lost."""

    __slots__ = ("lost",)

    def __init__(self) -> None:
        self.lost = False
