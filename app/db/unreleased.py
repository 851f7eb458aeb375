"""Leases whose release failed, given back as soon as the database answers again.

A request that ends while the database is unreachable (or full) cannot release its upload's
lease. Left alone, the upload would refuse every writer (423) until the lease ran out, long
after the database came back. :class:`UnreleasedLeases` remembers those releases and
retries them in the background; the repository also retries an upload's own before it
claims that upload, so the client that resumes first never waits for the background.

A retry is the release itself: a conditional ``UPDATE`` on the lease's token. It can never
free a lease that another request, process or node took since (their token differs), so
remembering is correct across nodes; each process retries only the releases it failed.
Memory is bounded: an entry is forgotten once the lease would have run out by itself, and
at most :data:`MOST_REMEMBERED` are kept (the one that lapses first makes room).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from app.db.engine import DATABASE_ERRORS

logger = logging.getLogger(__name__)

MOST_REMEMBERED = 10_000
"""Failed releases kept at once (an entry is a token and a time: ~200 bytes)."""
FIRST_RETRY_SECONDS = 0.25
LONGEST_RETRY_SECONDS = 1.0
"""The background retries back off to this: an upload is free again at most this long
after the database answers."""
LAST_TRY_SECONDS = 2.0
"""How long :meth:`UnreleasedLeases.close` tries once more before the process stops."""

ReleaseRow = Callable[[uuid.UUID, str], Awaitable[None]]
"""Releases one upload's lease if it still carries the given token."""


@dataclass(frozen=True, slots=True)
class _Unreleased:
    token: str
    lapses_at: float
    """``time.monotonic()`` when the lease runs out by itself (nothing left to release)."""


class UnreleasedLeases:
    """The releases this process failed, retried until the database answers."""

    def __init__(self, release_row: ReleaseRow, lease_seconds: float) -> None:
        self._release_row = release_row
        self._lease_seconds = lease_seconds
        self._pending: dict[uuid.UUID, _Unreleased] = {}
        self._retrying: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, upload_id: object) -> bool:
        return upload_id in self._pending

    def remember(self, upload_id: uuid.UUID, token: str) -> None:
        """A release failed: retry it in the background until the lease would lapse.

        The lease was renewed at most now, so it lapses by now + the lease duration.
        """
        if upload_id not in self._pending and len(self._pending) >= MOST_REMEMBERED:
            first = min(self._pending, key=lambda key: self._pending[key].lapses_at)
            del self._pending[first]
        self._pending[upload_id] = _Unreleased(token, time.monotonic() + self._lease_seconds)
        if self._retrying is None or self._retrying.done():
            self._retrying = asyncio.get_running_loop().create_task(self._retry_until_released())

    async def retry(self, upload_id: uuid.UUID) -> None:
        """Release ``upload_id``'s remembered lease now; raises while the database fails."""
        entry = self._pending.get(upload_id)
        if entry is None:
            return
        await self._release_row(upload_id, entry.token)
        self._forget(upload_id, entry)

    async def close(self) -> None:
        """Stop retrying, after one last, short try (a stopping process frees what it can;
        the rest lapses, or is released when this node starts again)."""
        if self._retrying is not None:
            self._retrying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retrying
            self._retrying = None
        if self._pending:
            with contextlib.suppress(TimeoutError, *DATABASE_ERRORS):
                async with asyncio.timeout(LAST_TRY_SECONDS):
                    await self._retry_due()

    async def _retry_until_released(self) -> None:
        wait = FIRST_RETRY_SECONDS
        while self._pending:
            await asyncio.sleep(wait)
            try:
                await self._retry_due()
                wait = FIRST_RETRY_SECONDS
            except DATABASE_ERRORS:
                wait = min(2 * wait, LONGEST_RETRY_SECONDS)
            except Exception:
                logger.exception("retrying failed lease releases failed; retrying")
                wait = LONGEST_RETRY_SECONDS

    async def _retry_due(self) -> None:
        """Retry every remembered release in turn; the first database failure ends the pass."""
        now = time.monotonic()
        for upload_id, entry in list(self._pending.items()):
            if entry.lapses_at <= now:
                self._forget(upload_id, entry)
                continue
            await self._release_row(upload_id, entry.token)
            self._forget(upload_id, entry)
            logger.info("upload %s: its lease was released after the database came back", upload_id)

    def _forget(self, upload_id: uuid.UUID, entry: _Unreleased) -> None:
        # A newer failure for the same upload may have replaced the entry meanwhile.
        if self._pending.get(upload_id) is entry:
            del self._pending[upload_id]
