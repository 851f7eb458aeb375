"""The outermost layer of every routed request: request id, access log and HTTP metrics."""

from __future__ import annotations

import enum
import logging
import re
import time
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.core.tokens import unique_token
from app.ops import metrics
from app.ops.logs import REQUEST_ID

access_log = logging.getLogger("ferry.access")
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
_TUS_CREATION = re.compile(r"^/files/?$")
#: One upload (tus) or one file (downloads): ``/files/{id}``, nothing below it.
_ONE_FILE = re.compile(r"^/files/[^/]+/?$")
_SIMPLE_UPLOAD_PUT = re.compile(r"^/api/files/(?:named/)?[^/]+$")
_SIMPLE_UPLOAD_POST = re.compile(r"^/api/files/?$")


class RouteKind(enum.Enum):
    """What a request is, as the metrics count it."""

    TUS_CREATION = "tus creation"
    TUS_PATCH = "tus PATCH"
    SIMPLE_UPLOAD = "simple upload"
    DOWNLOAD = "download"
    OTHER = "other"

    @property
    def is_upload(self) -> bool:
        """A request whose body is an upload's bytes."""
        return self in {RouteKind.TUS_CREATION, RouteKind.TUS_PATCH, RouteKind.SIMPLE_UPLOAD}


def route_kind(method: str, path: str, headers: dict[bytes, bytes], query: bytes) -> RouteKind:
    """Classify a request by its method and path, before it is routed.

    Signing a link (``POST /files/{uid}/link``) and editing a file record (``PATCH
    /api/files/{uid}``) are no uploads; a ``HEAD`` with ``Tus-Resumable`` (and no signed
    link) is the tus upload status, not a download.
    """
    if method == "POST" and _TUS_CREATION.match(path):
        return RouteKind.TUS_CREATION
    if method == "PATCH" and _ONE_FILE.match(path):
        return RouteKind.TUS_PATCH
    if (method == "PUT" and _SIMPLE_UPLOAD_PUT.match(path)) or (
        method == "POST" and _SIMPLE_UPLOAD_POST.match(path)
    ):
        return RouteKind.SIMPLE_UPLOAD
    if method in {"GET", "HEAD"} and _ONE_FILE.match(path):
        tus_status = method == "HEAD" and b"tus-resumable" in headers and b"sig=" not in query
        return RouteKind.OTHER if tus_status else RouteKind.DOWNLOAD
    return RouteKind.OTHER


def _count(kind: RouteKind, method: str, status: int, elapsed: float, asked_range: bool) -> None:
    """The series a finished request moves (bytes are counted as they flow)."""
    label = metrics.method_label(method)
    if kind.is_upload:
        metrics.UPLOAD_REQUESTS_IN_FLIGHT.dec()
        if status >= 400:
            metrics.UPLOADS_FAILED.labels(label, str(status)).inc()
        elif kind is RouteKind.TUS_CREATION and status == 201:
            metrics.UPLOADS_CREATED.inc()
    if kind is RouteKind.TUS_PATCH:
        metrics.PATCH_SECONDS.observe(elapsed)
    if kind is RouteKind.DOWNLOAD:
        metrics.DOWNLOADS.labels(label, str(status)).inc()
        if asked_range:
            metrics.RANGE_REQUESTS.labels(str(status)).inc()
    metrics.RESPONSES.labels(label, str(status)).inc()


class RequestContextMiddleware:
    """Gives each request an id (``X-Request-Id``), logs one access line and counts it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request inside its logging context."""
        if scope["type"] != "http":  # type: ignore[comparison-overlap]
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        offered = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = offered if _CLIENT_REQUEST_ID.match(offered) else unique_token()
        reset = REQUEST_ID.set(request_id)
        method: str = scope["method"]  # type: ignore[typeddict-item]
        kind = route_kind(method, scope["path"], headers, scope.get("query_string", b""))
        status = 500
        received = 0
        started = time.perf_counter()

        async def counting_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                received += len(body)
                metrics.BYTES_RECEIVED.inc(len(body))
            return message

        def sends_file_bytes() -> bool:
            return kind is RouteKind.DOWNLOAD and status in {200, 206}

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            elif message["type"] == "http.response.body" and sends_file_bytes():
                metrics.DOWNLOAD_BYTES.inc(len(message.get("body", b"")))
            await send(message)

        if kind.is_upload:
            metrics.UPLOAD_REQUESTS_IN_FLIGHT.inc()
        try:
            await self.app(scope, counting_receive if kind.is_upload else receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            _count(kind, method, status, elapsed, b"range" in headers)
            principal = scope.get("ferry_principal")
            access_log.log(
                logging.ERROR if status >= 500 else logging.INFO,
                "%s %s %d",
                method,
                scope["path"],
                status,
                extra={
                    "method": method,
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "bytes_in": received,
                    "owner": getattr(principal, "name", None),
                },
            )
            REQUEST_ID.reset(reset)
