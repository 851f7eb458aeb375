"""Per-owner limits on creation: stored bytes, unfinished uploads, and a creation rate.

Both are kept in the database, so they hold for the whole cluster, whichever process or
node a request reaches:

* the rate limit is a token bucket per owner in ``creation_rates``, spent by one atomic
  upsert (the bucket refills from the time elapsed since it was last touched);
* quotas are checked inside the transaction that inserts the upload, under a per-owner
  lock (a PostgreSQL transaction advisory lock; SQLite runs one transaction at a time), so
  concurrent creations by one owner never overshoot.
"""

from __future__ import annotations

import math
import time
import zlib

from advanced_alchemy.base import orm_registry
from sqlalchemy import Column, Float, String, Table, case, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import File, Upload, UploadState
from app.errors import PayloadTooLarge, TooManyRequests
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
        self, sessions: async_sessionmaker[AsyncSession], per_minute: int, burst: int
    ) -> None:
        self._sessions = sessions
        self._rate = per_minute / 60.0
        self._burst = float(burst)

    async def take(self, owner: str) -> None:
        """Spend one token or raise 429 with the seconds until the next one."""
        if self._rate <= 0:
            return
        now = time.time()
        table = creation_rates
        refilled = table.c.tokens + (now - table.c.updated) * self._rate
        available = case((refilled > self._burst, self._burst), else_=refilled)
        async with self._sessions() as session, session.begin():
            dialect = postgresql if session.bind.dialect.name == "postgresql" else sqlite
            spend = (
                dialect.insert(table)
                .values(owner=owner, tokens=self._burst - 1, updated=now)
                .on_conflict_do_update(
                    index_elements=[table.c.owner],
                    set_={"tokens": available - 1, "updated": now},
                    where=available >= 1,
                )
                .returning(table.c.tokens)
            )
            if (await session.execute(spend)).first() is not None:
                return
            tokens = await session.scalar(select(available).where(table.c.owner == owner))
        wait = max(1, math.ceil((1 - float(tokens or 0)) / self._rate))
        raise TooManyRequests(
            f"{owner} creates uploads too fast; retry in {wait} s",
            headers={"Retry-After": str(wait)},
        )


class OwnerQuotas:
    """Stored bytes and unfinished uploads per owner, counted in the database."""

    def __init__(self, settings: Settings) -> None:
        self._max_bytes = settings.quota_bytes
        self._max_active = settings.quota_active_uploads

    @property
    def enabled(self) -> bool:
        """Whether any quota is set."""
        return bool(self._max_bytes or self._max_active)

    async def check_in(self, session: AsyncSession, owner: str, new_length: int | None) -> None:
        """Raise 413 (bytes) or 429 (unfinished uploads) if one more upload would not fit.

        Runs inside the transaction that inserts the upload, after taking the owner's lock,
        so the count it sees cannot change before the insert commits.
        """
        if not self.enabled:
            return
        if session.bind.dialect.name == "postgresql":
            key = zlib.crc32(owner.encode()) - 2**31  # a signed 32-bit advisory lock key
            await session.execute(
                text("SELECT pg_advisory_xact_lock(hashtext('ferry.quota'), :key)"),
                {"key": key},
            )
        active = (Upload.owner == owner) & (Upload.state == UploadState.ACTIVE)
        if self._max_active:
            count = await session.scalar(select(func.count()).where(active))
            if (count or 0) >= self._max_active:
                raise TooManyRequests(
                    f"{owner} already has {count} unfinished uploads (the limit is "
                    f"{self._max_active}); finish or terminate one first",
                    headers={"Retry-After": "60"},
                )
        if self._max_bytes:
            stored = await session.scalar(
                select(func.coalesce(func.sum(File.size), 0)).where(File.owner == owner)
            )
            # An unfinished upload reserves its declared length (its offset if deferred).
            # A final upload being assembled counts its partials twice for a moment.
            reserved = await session.scalar(
                select(
                    func.coalesce(func.sum(func.coalesce(Upload.length, Upload.offset)), 0)
                ).where(active)
            )
            used = int(stored or 0) + int(reserved or 0)
            if used + (new_length or 0) > self._max_bytes:
                raise PayloadTooLarge(
                    f"{owner} would store {used + (new_length or 0)} bytes; the quota is "
                    f"{self._max_bytes} (FERRY_QUOTA_BYTES)"
                )
