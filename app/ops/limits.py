"""Per-owner limits: stored bytes, unfinished uploads, and a creation rate.

Both are kept in the database, so they hold for the whole cluster, whichever process or
node a request reaches:

* the rate limit is a token bucket per owner in ``creation_rates``, spent by one atomic
  upsert (the bucket refills from the time elapsed since it was last touched), run in the
  group commit like upload writes (:mod:`app.db.group_commit`): through an AsyncSession of
  its own on SQLite it cost 2.6 ms of CPU per POST and cut creations from ~900 to ~250/s;
* quotas are checked inside the transaction that inserts the upload (and, for bytes, the
  one that fixes a deferred length or commits bytes of unknown length), under a per-owner
  lock (a PostgreSQL transaction advisory lock; SQLite runs one transaction at a time), so
  concurrent requests by one owner never overshoot.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable

from advanced_alchemy.base import orm_registry
from sqlalchemy import Column, Float, String, Table, case, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from app.db.group_commit import GroupCommit
from app.db.models import File, Upload, UploadState
from app.db.uploads import Reservation, live_condition
from app.errors import QuotaExceeded, TooManyRequests, UnfinishedUploadsQuotaExceeded
from app.settings import Settings

creation_rates = Table(
    "creation_rates",
    orm_registry.metadata,
    Column("owner", String(200), primary_key=True),
    Column("tokens", Float, nullable=False),
    # Seconds since the epoch: plain arithmetic on both databases.
    Column("updated", Float, nullable=False),
)


class CreationRateLimiter:
    """A token bucket per owner: ``burst`` at once, refilled at ``per_minute``."""

    def __init__(
        self,
        writes: GroupCommit,
        per_minute: int,
        burst: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._writes = writes
        postgres = writes.engine.dialect.name == "postgresql"
        self._insert = postgresql.insert if postgres else sqlite.insert
        self._clock = clock  # this node's wall clock: other nodes' may differ
        self._rate = per_minute / 60.0
        self._burst = float(burst)

    async def take(self, owner: str) -> None:
        """Spend one token or raise 429 with the seconds until the next one."""
        if self._rate <= 0:
            return
        now = self._clock()
        table = creation_rates
        # A request that read the clock before another one committed (or a node whose clock
        # is behind) must not move the bucket's time back: that would take tokens away.
        elapsed = case((table.c.updated < now, now - table.c.updated), else_=0.0)
        latest = case((table.c.updated < now, now), else_=table.c.updated)
        refilled = table.c.tokens + elapsed * self._rate
        available = case((refilled > self._burst, self._burst), else_=refilled)
        spend = (
            self._insert(table)
            .values(owner=owner, tokens=self._burst - 1, updated=now)
            .on_conflict_do_update(
                index_elements=[table.c.owner],
                set_={"tokens": available - 1, "updated": latest},
                where=available >= 1,
            )
            .returning(table.c.tokens)
        )

        def spend_one(session: Session) -> float | None:
            """``None`` once a token is spent, else the tokens the bucket holds."""
            if session.execute(spend).first() is not None:
                return None
            return float(session.scalar(select(available).where(table.c.owner == owner)) or 0)

        # A spent token need not survive a power loss: no fsync of its own.
        tokens = await self._writes.run(spend_one, durable=False)
        if tokens is None:
            return
        wait = max(1, math.ceil((1 - tokens) / self._rate))
        raise TooManyRequests(
            f"{owner} creates uploads too fast; retry in {wait} s",
            headers={"Retry-After": str(wait)},
        )


class OwnerQuotas:
    """Stored bytes and unfinished uploads per owner, counted in the database.

    What an owner holds: its files, each unfinished upload (its declared length, else the
    bytes received so far), each completed partial upload (kept for final uploads until it
    expires or is terminated) and each final upload (its bytes are new). Every check takes
    the owner's lock inside the transaction that records what it admits, so concurrent
    requests by one owner, on any node, never overshoot. The upload service asks it after
    creation through :class:`app.uploads.quota.ByteQuota`.
    """

    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._max_bytes = settings.quota_bytes
        self._max_active = settings.quota_active_uploads
        self._sessions = sessions

    @property
    def enabled(self) -> bool:
        """Whether any quota is set."""
        return bool(self._max_bytes or self._max_active)

    def check_in(self, session: Session, owner: str, new_length: int | None) -> None:
        """Raise 413 (bytes) or 429 (unfinished uploads) if one more upload would not fit.

        Runs inside the transaction that inserts the upload, after taking the owner's lock,
        so the count it sees cannot change before the insert commits (synchronously: it
        runs in a group commit, :mod:`app.db.group_commit`).
        """
        if not self.enabled:
            return
        _lock_owner(session, owner)
        if self._max_active:
            active = (Upload.owner == owner) & (Upload.state == UploadState.ACTIVE)
            count = session.scalar(select(func.count()).where(active))
            if (count or 0) >= self._max_active:
                raise UnfinishedUploadsQuotaExceeded(
                    f"{owner} already has {count} unfinished uploads (the limit is "
                    f"{self._max_active}); finish or terminate one first",
                    headers={"Retry-After": "60"},
                )
        if self._max_bytes:
            self._check_bytes(session, owner, new_length or 0)

    async def room(self, owner: str | None) -> int | None:
        """Bytes ``owner`` may still add (``None``: no byte quota applies)."""
        if owner is None or not self._max_bytes:
            return None
        async with self._sessions() as session, session.begin():
            used = await session.run_sync(self._locked_use, owner)
        return max(0, self._max_bytes - used)

    @classmethod
    def _locked_use(cls, session: Session, owner: str) -> int:
        _lock_owner(session, owner)
        return cls._used(session, owner)

    def growth(self, owner: str | None, more: int) -> Reservation | None:
        """The check that ``owner`` may hold ``more`` bytes than now, for the transaction
        that records them (``None``: no byte quota applies, or nothing grows)."""
        if owner is None or not self._max_bytes or more <= 0:
            return None

        def reserve(session: Session) -> None:
            _lock_owner(session, owner)
            self._check_bytes(session, owner, more)

        return reserve

    def _check_bytes(self, session: Session, owner: str, more: int) -> None:
        used = self._used(session, owner)
        if used + more > self._max_bytes:
            raise QuotaExceeded(
                f"{owner} would store {used + more} bytes; the quota is "
                f"{self._max_bytes} (FERRY_QUOTA_BYTES)"
            )

    @staticmethod
    def _used(session: Session, owner: str) -> int:
        """Bytes ``owner`` holds: files, and every live upload's reservation."""
        stored = select(func.coalesce(func.sum(File.size), 0)).where(File.owner == owner)
        # An unfinished upload reserves its declared length (its offset while deferred); a
        # completed partial holds its length until it expires, whether or not a final
        # upload used it (a final's bytes are its own: they are stored again).
        held = func.coalesce(func.sum(func.coalesce(Upload.length, Upload.offset)), 0)
        reserved = select(held).where(Upload.owner == owner, live_condition())
        # One statement, one snapshot: an upload that becomes a file meanwhile (its filing
        # takes no quota lock) is counted once, never in neither sum.
        used = session.scalar(select(stored.scalar_subquery() + reserved.scalar_subquery()))
        return int(used or 0)


def _lock_owner(session: Session, owner: str) -> None:
    """The owner's quota lock, held until ``session``'s transaction ends (PostgreSQL; SQLite
    runs one write transaction at a time)."""
    if session.get_bind().dialect.name == "postgresql":
        key = zlib.crc32(owner.encode()) - 2**31  # a signed 32-bit advisory lock key
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtext('ferry.quota'), :key)"),
            {"key": key},
        )
