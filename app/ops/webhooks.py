"""post-finish and post-terminate webhooks, delivered at least once from a database outbox.

:class:`WebhookOutbox` is the upload repository's :class:`~app.db.uploads.UploadEvents`: a
``post-finish`` event row is added in the same transaction that records the file, and a
``post-terminate`` row in the transaction that retires the upload, so either event exists
exactly when its change does, crash or not. Committing an event wakes the worker. A
worker on every node claims due rows with a compare-and-set on ``next_attempt_at`` (so two
nodes never send one event at the same time), POSTs them signed with HMAC-SHA256, and on
failure retries with doubling delays up to a limit. The event id
travels as ``Idempotency-Key``: receivers must expect repeats (at-least-once).

Body: ``{"event", "event_id", "occurred_at", "upload": {...}}`` (``upload`` is the file's
record for post-finish: id, owner, name, size, sha256, content type, category, metadata).
Signature: ``Ferry-Signature: sha256=<hex HMAC of "<Ferry-Timestamp>.<body>">``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
import uuid
from datetime import timedelta
from typing import Any

import anyio
import httpx
import msgspec
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from app.core.clock import utcnow
from app.core.metadata import decode_metadata_value
from app.db.models import File, Upload
from app.ops import metrics
from app.ops.models import WebhookEvent
from app.settings import Settings

logger = logging.getLogger(__name__)

POST_FINISH = "post-finish"
POST_TERMINATE = "post-terminate"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``Ferry-Signature`` value of a delivery."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def _text_metadata(metadata: dict[str, Any]) -> dict[str, str | None]:
    return {key: decode_metadata_value(metadata, key) for key in metadata}


def finish_payload(stored: File) -> dict[str, Any]:
    """What a receiver learns about a finished upload."""
    return {
        "id": str(stored.id),
        "owner": stored.owner,
        "name": stored.name,
        "size": stored.size,
        "sha256": stored.sha256,
        "content_type": stored.content_type,
        "category": stored.category,
        "metadata": _text_metadata(stored.file_metadata or {}),
    }


def terminate_payload(upload: Upload) -> dict[str, Any]:
    """What a receiver learns about a terminated upload."""
    return {
        "id": str(upload.id),
        "owner": upload.owner,
        "offset": upload.offset,
        "length": upload.length,
        "metadata": _text_metadata(upload.upload_metadata or {}),
    }


def new_event(kind: str, upload_id: uuid.UUID, payload: dict[str, Any]) -> WebhookEvent:
    """An outbox row, due now."""
    return WebhookEvent(
        id=uuid.uuid4(),
        event=kind,
        upload_id=upload_id,
        payload=payload,
        attempts=0,
        next_attempt_at=utcnow(),
    )


class WebhookOutbox:
    """Writes post-terminate events and delivers every due event."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        client: httpx.AsyncClient,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._client = client
        self._wake = asyncio.Event()

    @property
    def enabled(self) -> bool:
        """Whether a webhook URL is configured."""
        return bool(self._settings.webhook_url)

    def wake(self) -> None:
        """Start a delivery pass now (an event was committed)."""
        self._wake.set()

    def file_recorded(self, session: Session, stored: File) -> None:
        """Queue the post-finish event in the filing transaction (``session``), so the
        event exists exactly when the file does."""
        if self.enabled:
            session.add(new_event(POST_FINISH, stored.id, finish_payload(stored)))

    def upload_terminated(self, session: Session, upload: Upload) -> None:
        """Queue the post-terminate event in the retiring transaction (``session``), so
        the event exists exactly when the termination does."""
        if self.enabled:
            session.add(new_event(POST_TERMINATE, upload.id, terminate_payload(upload)))

    def committed(self, *, files: int = 0, terminations: int = 0) -> None:
        """A transaction with events committed: count them and deliver them now."""
        metrics.UPLOADS_FINISHED.inc(files)
        metrics.UPLOADS_TERMINATED.inc(terminations)
        if self.enabled:
            self.wake()

    async def deliver_forever(self) -> None:
        """The worker: deliver due events until cancelled."""
        while True:
            # Cleared before the pass: an event committed during it triggers another pass.
            self._wake.clear()
            try:
                while await self.deliver_due():
                    pass
            except Exception:
                logger.exception("webhook outbox pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.webhook_poll_seconds)

    async def deliver_due(self, limit: int = 20) -> int:
        """Claim due events and try each once; return how many were tried."""
        claimed = await self._claim_due(limit)
        for number, row in enumerate(claimed):
            try:
                await self._attempt(row)
            except BaseException:
                # Stopping (or a bug) mid-attempt: make the unsent events due again at once
                # instead of leaving them claimed until the claim runs out.
                with anyio.CancelScope(shield=True):
                    for unsent in claimed[number:]:
                        await self._set(unsent, next_attempt_at=utcnow())
                raise
        return len(claimed)

    async def _claim_due(self, limit: int) -> list[WebhookEvent]:
        """Due events, claimed for one delivery's duration by this node alone.

        PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED``, so nodes polling at once take
        different events and never wait for each other; the claim (``next_attempt_at``
        pushed past one delivery) commits before anything is sent. A node that dies
        mid-delivery leaves its events due again when the claim runs out (at least once).
        """
        now = utcnow()
        claimed_until = now + timedelta(seconds=self._settings.hook_timeout_seconds + 5)
        async with self._sessions() as session, session.begin():
            due = (
                await session.scalars(
                    select(WebhookEvent)
                    .where(
                        WebhookEvent.delivered_at.is_(None),
                        WebhookEvent.gave_up_at.is_(None),
                        WebhookEvent.next_attempt_at <= now,
                    )
                    .order_by(WebhookEvent.next_attempt_at)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for row in due:
                row.next_attempt_at = claimed_until
        return list(due)

    async def _attempt(self, row: WebhookEvent) -> None:
        body = msgspec.json.encode(
            {
                "event": row.event,
                "event_id": str(row.id),
                "occurred_at": row.created_at,
                "upload": row.payload,
            }
        )
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "Ferry-Event": row.event,
            "Idempotency-Key": str(row.id),
            "Ferry-Timestamp": timestamp,
            "Ferry-Signature": sign(self._settings.webhook_secret, timestamp, body),
        }
        error: str | None = None
        try:
            response = await self._client.post(
                self._settings.webhook_url,
                content=body,
                headers=headers,
                timeout=self._settings.hook_timeout_seconds,
            )
            if not 200 <= response.status_code < 300:
                error = f"receiver answered {response.status_code}"
        except httpx.HTTPError as exc:
            error = f"{exc.__class__.__name__}: {exc}"[:500]
        attempts = row.attempts + 1
        values: dict[str, Any]
        if error is None:
            metrics.WEBHOOKS.labels("delivered").inc()
            values = {"delivered_at": utcnow(), "attempts": attempts, "last_error": None}
        elif attempts >= self._settings.webhook_max_attempts:
            metrics.WEBHOOKS.labels("gave_up").inc()
            logger.error(
                "webhook %s for %s given up after %d attempts: %s",
                row.event,
                row.upload_id,
                attempts,
                error,
                extra={"event_id": str(row.id)},
            )
            values = {"gave_up_at": utcnow(), "attempts": attempts, "last_error": error}
        else:
            metrics.WEBHOOKS.labels("retry").inc()
            delay = min(
                self._settings.webhook_retry_seconds * 2 ** (attempts - 1),
                self._settings.webhook_retry_max_seconds,
            )
            logger.warning(
                "webhook %s for %s failed (attempt %d), retrying in %g s: %s",
                row.event,
                row.upload_id,
                attempts,
                delay,
                error,
            )
            values = {
                "next_attempt_at": utcnow() + timedelta(seconds=delay),
                "attempts": attempts,
                "last_error": error,
            }
        await self._set(row, **values)

    async def _set(self, row: WebhookEvent, **values: Any) -> None:
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(WebhookEvent)
                .where(WebhookEvent.id == row.id)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
