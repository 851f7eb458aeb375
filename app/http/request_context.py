"""The outermost layer of every routed request: request id, access log and HTTP metrics."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.ops import metrics
from app.ops.logs import REQUEST_ID

access_log = logging.getLogger("ferry.access")
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
_UPLOAD_PREFIX = "/files"


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
        request_id = offered if _CLIENT_REQUEST_ID.match(offered) else uuid.uuid4().hex
        reset = REQUEST_ID.set(request_id)
        method: str = scope["method"]  # type: ignore[typeddict-item]
        is_upload_write = scope["path"].startswith(_UPLOAD_PREFIX) and method in {"POST", "PATCH"}
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

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        if is_upload_write:
            metrics.ACTIVE_LOCKS.inc()
        try:
            await self.app(scope, counting_receive if is_upload_write else receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            label = metrics.method_label(method)
            if is_upload_write:
                metrics.ACTIVE_LOCKS.dec()
                if status >= 400:
                    metrics.UPLOADS_FAILED.labels(label, str(status)).inc()
                elif method == "POST" and status == 201:
                    metrics.UPLOADS_CREATED.inc()
            if method == "PATCH":
                metrics.PATCH_SECONDS.observe(elapsed)
            metrics.RESPONSES.labels(label, str(status)).inc()
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
