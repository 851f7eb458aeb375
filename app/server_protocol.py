"""The HTTP/1.1 protocol Ferry serves with: uvicorn's h11 protocol plus request trailers.

tus's checksum-trailer extension sends ``Upload-Checksum`` as a trailer after a chunked
body. ASGI has no event for request trailers and uvicorn's parsers drop them, so this
protocol appends the trailer fields to the request's ``scope["headers"]`` list when the
body ends, each under ``trailer:<name>`` — a colon can never appear in a real field name,
so a trailer cannot be mistaken for (or smuggled in as) a header.
:func:`app.tus.protocol.trailer_value` reads them from there. Everything else is
uvicorn's h11 protocol unchanged.
"""

from __future__ import annotations

from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

TRAILER_PREFIX = b"trailer:"


class TrailerAwareH11Protocol(H11Protocol):
    """uvicorn's h11 protocol that exposes request trailers in ``scope["headers"]``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        parse_next = self.conn.next_event

        def next_event_keeping_trailers() -> Any:
            event = parse_next()
            if isinstance(event, h11.EndOfMessage) and event.headers:
                headers = getattr(self, "headers", None)
                if isinstance(headers, list):
                    headers.extend(
                        (TRAILER_PREFIX + name.lower(), value) for name, value in event.headers
                    )
            return event

        self.conn.next_event = next_event_keeping_trailers  # type: ignore[method-assign]
