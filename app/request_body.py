"""Streaming a request body straight from ASGI ``receive``, with an idle timeout.

Litestar's ``Request.stream()`` turns a disconnect into a 500 and enforces a body-size cap
meant for JSON; uploads need neither. Here a disconnect or a stalled client ends the stream
with :class:`~app.errors.ClientDisconnected`, so the caller can keep what reached the disk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import anyio
from litestar import Request

from app.errors import ClientDisconnected
from app.ops.shutdown import shutdown_requested


async def stream_request_body(
    request: Request[Any, Any, Any], idle_timeout: float
) -> AsyncIterator[bytes]:
    """Yield the body's pieces as they arrive; raise ``ClientDisconnected`` on loss or stall."""
    receive = request.receive
    while True:
        message = await _next_message(receive, idle_timeout)
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("client disconnected")
        body = cast("bytes", message.get("body", b""))
        if body:
            yield body
        if not message.get("more_body", False):
            return
        if shutdown_requested():
            # SIGTERM: end here so what arrived is synced and acknowledged before exit.
            raise ClientDisconnected("the server is shutting down; resume from Upload-Offset")


#: How often a wait for body bytes looks at the shutdown flag.
_SHUTDOWN_POLL_SECONDS = 0.25


async def _next_message(receive: Any, idle_timeout: float) -> Any:
    """The next ASGI message; ``ClientDisconnected`` after ``idle_timeout`` or on shutdown."""
    deadline = anyio.current_time() + idle_timeout
    while True:
        remaining = deadline - anyio.current_time()
        if remaining <= 0:
            raise ClientDisconnected(f"no body bytes for {idle_timeout:g} s")
        if shutdown_requested():
            raise ClientDisconnected("the server is shutting down; resume from Upload-Offset")
        # Cancelling a pending receive() loses no message, so waiting in slices is safe.
        with anyio.move_on_after(min(remaining, _SHUTDOWN_POLL_SECONDS)):
            return await receive()
