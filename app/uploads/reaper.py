"""The in-process reaper: expires abandoned uploads on a timer (expiration extension)."""

from __future__ import annotations

import asyncio
import logging

from app.uploads.service import UploadService

logger = logging.getLogger(__name__)


async def reap_forever(uploads: UploadService, interval_seconds: float) -> None:
    """Run :meth:`UploadService.expire_due` every ``interval_seconds`` until cancelled."""
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            expired = await uploads.expire_due()
        except Exception:
            logger.exception("reaper pass failed; retrying next interval")
            continue
        if expired:
            logger.info("reaper expired %d uploads", expired)
