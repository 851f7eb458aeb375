"""The application factory: routes, dependencies, lifespan, CORS and error handlers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from litestar import Litestar, Response, get
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide

from app import __version__
from app.composition import open_ferry
from app.core.threads import use_io_threads
from app.db.engine import database_problem
from app.errors import BadRequest
from app.http.authentication import AuthenticationMiddleware
from app.http.downloads import DownloadService
from app.http.error_responses import EXCEPTION_HANDLERS
from app.http.file_api import file_api_router
from app.http.health import HEALTH_FAILURE, OPERATIONS_ROUTES
from app.http.openapi import openapi_config
from app.http.pages import web_route_handlers
from app.http.request_context import RequestContextMiddleware
from app.http.tus import FILES_PATH, TusController
from app.http.tus_protocol import (
    EXPOSED_HEADERS,
    TUS_VERSION,
    parse_method_override,
    server_description_headers,
)
from app.ops.loop_lag import watch_loop_lag
from app.ops.metrics import watch_staging_dir
from app.settings import Settings, load_settings
from app.uploads.reaper import reap_forever
from app.uploads.service import UploadService

logger = logging.getLogger(__name__)

_TUS_RESUMABLE = (b"tus-resumable", TUS_VERSION.encode())


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


@get("/health", responses=HEALTH_FAILURE, tags=["operations"])
async def health(state: State) -> Response[dict[str, bool | str]]:
    """200 when the database and storage are usable, 503 otherwise (``reason``: the
    database's failure)."""
    database = await database_problem(state.engine)
    checks: dict[str, bool | str] = {
        "database": database is None,
        "storage": await state.backend.is_usable(),
    }
    if database is not None:
        checks["reason"] = database
    return Response(checks, status_code=200 if all(checks.values()) else 503)


def settle_the_heap() -> None:
    """Keep the garbage collector off what start-up built (once, when ``ferry serve``
    begins; not in tests, whose many short-lived apps would never be collected).

    Start-up imports leave a few hundred thousand long-lived objects (Litestar, SQLAlchemy,
    the app's graph); every full collection walked them all again and held the event loop
    for up to ~100 ms under small-upload load (``ferry_event_loop_lag_max_seconds``).
    ``gc.freeze`` moves them out of the collector's sight; the youngest generation is also
    collected less often, since a request makes many short-lived objects that reference
    counting frees anyway.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, older, oldest)


YOUNG_GC_THRESHOLD = 10_000
"""Allocations between collections of the youngest generation (CPython's default: 700)."""


def _lifespan(
    settings: Settings, *, reconcile: bool, on_started: Callable[[], None] | None
) -> Callable[[Litestar], contextlib.AbstractAsyncContextManager[None]]:
    """Open the object graph for the app's lifetime, reconcile, run the background tasks."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        io_threads = use_io_threads(asyncio.get_running_loop())
        async with open_ferry(settings) as ferry:
            watch_staging_dir(settings.staging_dir)
            app.state.update(
                ferry=ferry,
                engine=ferry.engine,
                sessions=ferry.sessions,
                backend=ferry.backend,
                uploads=ferry.uploads,
                downloads=ferry.downloads,
                link_signer=ferry.link_signer,
                authenticator=ferry.authenticator,
                webhooks=ferry.outbox,
            )
            if reconcile:
                report = await ferry.uploads.reconcile()
                logger.info("start-up reconciliation: %s", report)
            tasks = [
                asyncio.create_task(reap_forever(ferry.uploads, settings.reaper_interval_seconds)),
                asyncio.create_task(watch_loop_lag()),
            ]
            if ferry.outbox.enabled:
                tasks.append(asyncio.create_task(ferry.outbox.deliver_forever()))
            if on_started is not None:
                on_started()
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        io_threads.shutdown(wait=False)

    return lifespan


def _dependencies(settings: Settings) -> dict[str, Provide]:
    """What handlers receive by name: the settings and the lifetime services."""

    def provide_settings() -> Settings:
        return settings

    def provide_uploads(state: State) -> UploadService:
        return state.uploads  # type: ignore[no-any-return]

    def provide_downloads(state: State) -> DownloadService:
        return state.downloads  # type: ignore[no-any-return]

    return {
        "settings": Provide(provide_settings, sync_to_thread=False),
        "uploads": Provide(provide_uploads, sync_to_thread=False),
        "downloads": Provide(provide_downloads, sync_to_thread=False),
    }


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

    app = FerryApp(
        route_handlers=[
            TusController,
            file_api_router(),
            health,
            *web_route_handlers(),
            *OPERATIONS_ROUTES,
        ],
        middleware=[AuthenticationMiddleware(settings)],
        dependencies=_dependencies(settings),
        lifespan=[_lifespan(settings, reconcile=reconcile, on_started=on_started)],
        cors_config=CORSConfig(
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=list(EXPOSED_HEADERS),
            max_age=3600,
        ),
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=openapi_config("Ferry", __version__),
        debug=False,
    )
    app.tus_max_size = settings.max_size
    # The request context wraps the whole ASGI handler (404s and CORS answers included).
    app.asgi_handler = RequestContextMiddleware(app.asgi_handler)
    return app
