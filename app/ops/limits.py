"""Per-owner limits on creation: stored bytes, unfinished uploads, and a creation rate.

The rate limit is an in-process token bucket, so with several nodes each node allows the
configured rate (document: the effective rate is rate times nodes). Quotas are counted in the
database and are shared by every node; two creations racing on different nodes may both
pass the last free slot, which is the price of not locking the owner's rows.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import File, Upload, UploadState
from app.errors import PayloadTooLarge, TooManyRequests
from app.settings import Settings


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class CreationRateLimiter:
    """A token bucket per owner: ``burst`` at once, refilled at ``per_minute``."""

    def __init__(self, per_minute: int, burst: int, prune_above: int = 10_000) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._buckets: dict[str, _Bucket] = {}
        self._prune_above = prune_above

    @property
    def tracked_owners(self) -> int:
        """Owners with a bucket in memory (full buckets are forgotten now and then)."""
        return len(self._buckets)

    def take(self, owner: str) -> None:
        """Spend one token or raise 429 with the seconds until the next one."""
        if self._rate <= 0:
            return
        now = time.monotonic()
        if owner not in self._buckets and len(self._buckets) >= self._prune_above:
            self._forget_full_buckets(now)
        bucket = self._buckets.setdefault(owner, _Bucket(self._burst, now))
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return
        wait = math.ceil((1 - bucket.tokens) / self._rate)
        raise TooManyRequests(
            f"{owner} creates uploads too fast; retry in {wait} s",
            headers={"Retry-After": str(wait)},
        )

    def _forget_full_buckets(self, now: float) -> None:
        """A bucket that has refilled is the same as none: drop those, so memory is bounded
        by the owners active within one refill period, not by every owner ever seen."""
        self._buckets = {
            owner: bucket
            for owner, bucket in self._buckets.items()
            if bucket.tokens + (now - bucket.updated) * self._rate < self._burst
        }
        # Still crowded (many owners all throttled right now): pruning again at once would
        # cost a full scan per new owner, so the threshold grows with the live set.
        self._prune_above = max(self._prune_above, 2 * len(self._buckets))


class OwnerQuotas:
    """Stored bytes and unfinished uploads per owner, counted in the database."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], settings: Settings) -> None:
        self._sessions = sessions
        self._max_bytes = settings.quota_bytes
        self._max_active = settings.quota_active_uploads

    async def check(self, owner: str, new_length: int | None) -> None:
        """Raise 413 (bytes) or 429 (unfinished uploads) if one more upload would not fit."""
        if not self._max_bytes and not self._max_active:
            return
        active = (Upload.owner == owner) & (Upload.state == UploadState.ACTIVE)
        async with self._sessions() as session:
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
                        f"{self._max_bytes}"
                    )
