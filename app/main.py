"""The application factory: routes, dependencies, lifespan, CORS and error handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from litestar import Litestar, Request, Response, get
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine

from app import __version__
from app.db.engine import create_engine, create_session_factory, database_is_usable
from app.errors import BadRequest, FerryError
from app.files.api import file_api_router
from app.files.downloads import DownloadService
from app.files.links import LinkSigner
from app.files.pages import web_route_handlers
from app.ops.setup import (
    OPERATIONS_ROUTES,
    install_request_context,
    operations_middleware,
    run_operations,
)
from app.settings import Settings, load_settings
from app.storage.backend import StorageBackend
from app.storage.local import LocalBackend
from app.storage.staging import StagingArea, limit_malloc_retention
from app.tus.controller import FILES_PATH, TusController
from app.tus.protocol import (
    EXPOSED_HEADERS,
    TUS_VERSION,
    parse_method_override,
    server_description_headers,
)
from app.uploads.reaper import reap_forever
from app.uploads.service import UploadService

logger = logging.getLogger(__name__)

_TUS_RESUMABLE = (b"tus-resumable", TUS_VERSION.encode())


def build_backend(settings: Settings) -> StorageBackend:
    """The storage backend chosen by ``FERRY_STORAGE``."""
    if settings.storage == "s3":
        from app.storage.s3 import S3Backend  # type: ignore[import-not-found,unused-ignore]

        backend: StorageBackend = S3Backend(settings)
        return backend
    return LocalBackend(settings.files_dir)


class FerryApp(Litestar):
    """Litestar plus the tus wire rules that must apply before routing.

    ``X-HTTP-Method-Override`` (tus core) on a POST changes the method routing sees to
    PATCH or DELETE (any other value is 400, answered here); a tus ``OPTIONS`` (one that
    is not a CORS preflight) describes the server; and every response under ``/files`` —
    errors and 404s included — carries ``Tus-Resumable``.
    """

    tus_max_size: int = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(FILES_PATH):
            await super().__call__(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if scope["method"] == "POST" and b"x-http-method-override" in headers:
            # tus core: clients that cannot send PATCH or DELETE tunnel them through POST.
            # Only POST is rewritten, so a GET or HEAD never turns into a write.
            try:
                override = parse_method_override(
                    value for name, value in scope["headers"] if name == b"x-http-method-override"
                )
            except BadRequest as error:
                await _answer_plain(send, error.status_code, error.message)
                return
            scope = {**scope, "method": override}
        if scope["method"] == "OPTIONS" and b"access-control-request-method" not in headers:
            await self._describe_tus_server(scope, send)
            return

        async def send_with_tus_header(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] != b"tus-resumable"]
                message = {**message, "headers": [*headers, _TUS_RESUMABLE]}
            await send(message)

        await super().__call__(scope, receive, send_with_tus_header)

    async def _describe_tus_server(self, scope: Any, send: Any) -> None:
        response_headers = server_description_headers(self.tus_max_size)
        origin = dict(scope["headers"]).get(b"origin")
        if (
            origin is not None
            and self.cors_config
            and self.cors_config.is_origin_allowed(origin.decode("latin-1"))
        ):
            response_headers += [
                (b"access-control-allow-origin", origin),
                (b"access-control-expose-headers", ", ".join(EXPOSED_HEADERS).encode()),
                (b"vary", b"Origin"),
            ]
        await send({"type": "http.response.start", "status": 204, "headers": response_headers})
        await send({"type": "http.response.body", "body": b""})


async def _answer_plain(send: Any, status: int, message: str) -> None:
    """A plain-text error sent before routing (so before the exception handlers exist)."""
    body = (message + "\n").encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        _TUS_RESUMABLE,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _plain(status: int, message: str, headers: dict[str, str] | None = None) -> Response[str]:
    return Response(message + "\n", status_code=status, media_type="text/plain", headers=headers)


def _ferry_error(_: Request[Any, Any, Any], exc: FerryError) -> Response[str]:
    return _plain(exc.status_code, exc.message, exc.headers)


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[str]:
    return _plain(exc.status_code, str(exc.detail), exc.headers)


def _database_error(_: Request[Any, Any, Any], exc: Exception) -> Response[str]:
    logger.error("database unavailable: %s", exc.__class__.__name__)
    return _plain(
        503,
        "the database is unavailable; nothing was acknowledged; retry later",
        {"Retry-After": "5"},
    )


def _unexpected_error(_: Request[Any, Any, Any], exc: Exception) -> Response[str]:
    logger.exception("unhandled error", exc_info=exc)
    return _plain(500, "internal error")


@get("/health")
async def health(state: State) -> Response[dict[str, bool]]:
    """200 when the database and storage are usable, 503 otherwise."""
    checks = {
        "database": await database_is_usable(state.engine),
        "storage": await state.backend.is_usable(),
    }
    return Response(checks, status_code=200 if all(checks.values()) else 503)


def create_app(
    settings: Settings | None = None,
    *,
    reconcile: bool = True,
    on_started: Callable[[], None] | None = None,
) -> FerryApp:
    """Build the ASGI application; nothing touches disk or network until start-up.

    ``reconcile=False`` skips start-up reconciliation: with several workers only the first
    one reconciles, before the others start (it truncates staging files another worker
    could be appending to). ``on_started`` runs once start-up is complete.
    """
    settings = settings or load_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        engine: AsyncEngine = create_engine(settings.resolved_database_url)
        sessions = create_session_factory(engine)
        backend = build_backend(settings)
        # S3 sends parts from staged pages; the local backend never reads them back.
        staging = StagingArea(
            settings.staging_dir,
            drops_written_pages=not getattr(backend, "reclaims_staging", False),
        )
        staging.prepare()
        limit_malloc_retention()
        await backend.start()
        uploads = UploadService(
            sessions=sessions, staging=staging, backend=backend, settings=settings
        )
        app.state.update(
            engine=engine,
            sessions=sessions,
            backend=backend,
            uploads=uploads,
            downloads=DownloadService(uploads, backend, settings=settings),
            link_signer=LinkSigner.from_settings(settings),
        )
        # Auth, limits, hooks and the webhook outbox; before reconciliation, whose
        # finished uploads must get their post-finish events too.
        operations = run_operations(app, settings, sessions, uploads)
        await operations.__aenter__()
        if reconcile:
            report = await uploads.reconcile()
            logger.info("start-up reconciliation: %s", report)
        reaper = asyncio.create_task(reap_forever(uploads, settings.reaper_interval_seconds))
        if on_started is not None:
            on_started()
        try:
            yield
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
            await operations.__aexit__(None, None, None)
            await backend.close()
            await engine.dispose()

    def provide_settings() -> Settings:
        return settings

    def provide_uploads(state: State) -> UploadService:
        return state.uploads  # type: ignore[no-any-return]

    def provide_downloads(state: State) -> DownloadService:
        return state.downloads  # type: ignore[no-any-return]

    app = FerryApp(
        route_handlers=[
            TusController,
            file_api_router(),
            health,
            *web_route_handlers(),
            *OPERATIONS_ROUTES,
        ],
        middleware=operations_middleware(settings),
        dependencies={
            "settings": Provide(provide_settings, sync_to_thread=False),
            "uploads": Provide(provide_uploads, sync_to_thread=False),
            "downloads": Provide(provide_downloads, sync_to_thread=False),
        },
        lifespan=[lifespan],
        cors_config=CORSConfig(
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=list(EXPOSED_HEADERS),
            max_age=3600,
        ),
        exception_handlers={
            FerryError: _ferry_error,
            HTTPException: _http_error,
            OperationalError: _database_error,
            DBAPIError: _database_error,
            PoolTimeoutError: _database_error,
            Exception: _unexpected_error,
        },
        openapi_config=OpenAPIConfig(
            title="Ferry",
            version=__version__,
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
        ),
        debug=False,
    )
    app.tus_max_size = settings.max_size
    install_request_context(app)
    return app
