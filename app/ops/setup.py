"""Wiring of authentication and operations into the app (from :func:`app.main.create_app`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.keys import ApiKeyStore
from app.http.authentication import AuthenticationMiddleware, Authenticator
from app.http.health import OPERATIONS_ROUTES
from app.http.request_context import RequestContextMiddleware
from app.ops.admission import UploadAdmission
from app.ops.hooks import PreCreateHook
from app.ops.limits import CreationRateLimiter, OwnerQuotas
from app.ops.metrics import InstrumentedBackend, watch_staging_dir
from app.ops.webhooks import WebhookOutbox, record_outbox_events
from app.settings import Settings

__all__ = [
    "OPERATIONS_ROUTES",
    "install_request_context",
    "operations_middleware",
    "run_operations",
]


def operations_middleware(settings: Settings) -> list[Any]:
    """Route middleware: authentication."""
    return [AuthenticationMiddleware(settings)]


def install_request_context(app: Litestar) -> None:
    """Wrap the whole ASGI handler (404s and CORS answers included) in the request context."""
    app.asgi_handler = RequestContextMiddleware(app.asgi_handler)


@contextlib.asynccontextmanager
async def run_operations(
    app: Litestar,
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    uploads: Any,
) -> AsyncIterator[None]:
    """For the app's lifetime: authenticator, limits and hooks on creation, webhook worker."""
    watch_staging_dir(settings.staging_dir)
    client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
    outbox = WebhookOutbox(sessions, settings, client)
    record_outbox_events(sessions, enabled=outbox.enabled, wake=outbox.wake)
    app.state.update(
        authenticator=Authenticator(settings, ApiKeyStore(sessions)),
        webhooks=outbox,
    )
    admission = UploadAdmission(
        CreationRateLimiter(settings.create_rate_per_minute, settings.create_burst),
        OwnerQuotas(sessions, settings),
        PreCreateHook(settings, client),
    )
    uploads.backend = InstrumentedBackend(uploads.backend)
    uploads.admission = admission.admit
    uploads.on_terminated = outbox.record_termination
    worker = asyncio.create_task(outbox.deliver_forever()) if outbox.enabled else None
    try:
        yield
    finally:
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        await client.aclose()
