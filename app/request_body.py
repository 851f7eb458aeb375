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


async def stream_request_body(
    request: Request[Any, Any, Any], idle_timeout: float
) -> AsyncIterator[bytes]:
    """Yield the body's pieces as they arrive; raise ``ClientDisconnected`` on loss or stall."""
    receive = request.receive
    while True:
        with anyio.move_on_after(idle_timeout) as scope:
            message = await receive()
        if scope.cancelled_caught:
            raise ClientDisconnected(f"no body bytes for {idle_timeout:g} s")
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("client disconnected")
        body = cast("bytes", message.get("body", b""))
        if body:
            yield body
        if not message.get("more_body", False):
            return
