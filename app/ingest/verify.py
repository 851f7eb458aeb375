"""Verification of finished files: the server's SHA-256 of many files in one request."""

from __future__ import annotations

import asyncio
from typing import Any

from app.ingest.tus_client import TransferError, TusClient


class BatchVerifier:
    """Fetches the server's records of finished files in batches (one GET for many).

    A batch leaves when ``batch_size`` files wait (typically every worker) or after
    ``linger`` seconds, so verification costs a fraction of a request per file.
    """

    def __init__(self, client: TusClient, batch_size: int, linger: float = 0.02) -> None:
        self.client = client
        self.batch_size = max(1, batch_size)
        self.linger = linger
        self._pending: dict[str, asyncio.Future[dict[str, Any] | None]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def record_of(self, uid: str) -> dict[str, Any] | None:
        """The server's record of ``uid`` (``None``: no such file)."""
        loop = asyncio.get_running_loop()
        future = self._pending.get(uid)
        if future is None:
            future = self._pending[uid] = loop.create_future()
        if len(self._pending) >= self.batch_size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.linger, self._flush)
        return await asyncio.shield(future)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, {}
        if batch:
            task = asyncio.get_running_loop().create_task(self._fetch(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _fetch(self, batch: dict[str, asyncio.Future[dict[str, Any] | None]]) -> None:
        try:
            records = await self.client.files_by_uid(list(batch))
        except TransferError as exc:
            for future in batch.values():
                if not future.done():
                    future.set_exception(exc)
            return
        for uid, future in batch.items():
            if not future.done():
                future.set_result(records.get(uid))
