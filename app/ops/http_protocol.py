"""The HTTP/1.1 connection: uvicorn's httptools protocol with the limits a server needs when
nothing stands in front of it.

uvicorn bounds none of these itself: llhttp has no cap on header size (httptools gathers
a header of any length in Python), a request head may trickle in for ever, a connection
that never sends a byte is never closed, nothing caps open connections, and a response to
a client that stops reading waits for it for ever. :class:`FerryHttpProtocol` adds:

* **head size**: the request head (request line and header fields), and the trailer
  section of a chunked body, are at most ``FERRY_MAX_HEADER_BYTES``; more is answered 431
  (RFC 6585 §5) and the connection closed;
* **head deadline**: a head must be complete ``FERRY_HEADER_TIMEOUT_SECONDS`` after its
  first byte, or after the connection opened: else 408 (RFC 9110 §15.5.9) and close (a
  connection that sent nothing is just closed). The body is not under this deadline; a
  stalled body is :mod:`app.request_body`'s (``FERRY_READ_TIMEOUT_SECONDS``);
* **open connections**: one beyond ``FERRY_MAX_CONNECTIONS`` (per process) is answered
  503 with ``Retry-After`` as soon as it sends a byte, and closed;
* **stalled readers**: a response whose client reads nothing for
  ``FERRY_WRITE_TIMEOUT_SECONDS`` is cut off, which frees what it held;
* idle keep-alive connections close after ``FERRY_KEEP_ALIVE_SECONDS`` (uvicorn's timer).

Bytes are counted only while a head or a trailer section is being read, so a body costs
nothing more than before. A refusal is written, the sending side shut, and what the client
still sends is read and dropped for a moment before the close, so the client reads the
answer instead of a connection reset. httptools stays the parser: the checksum-trailer
extension relies on it passing trailer fields on (see :func:`app.tus.protocol.trailer_value`).
"""

from __future__ import annotations

import asyncio
import http
import logging
from typing import Any, ClassVar

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.settings import Settings

logger = logging.getLogger(__name__)

#: How long a refused connection keeps reading (and dropping) before it is closed.
LINGER_SECONDS = 2.0
#: ``Retry-After`` of a 503 for too many connections.
RETRY_AFTER_SECONDS = 5


class FerryHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with caps on head size, head time, connections and
    stalled readers. The limits are class attributes: see :func:`http_protocol_for`."""

    max_head_bytes: ClassVar[int] = 64 * 1024
    head_timeout: ClassVar[float] = 10.0
    max_connections: ClassVar[int] = 1000
    write_timeout: ClassVar[float] = 60.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_head = True
        self._in_trailer = False
        self._head_bytes = 0
        self._over_capacity = False
        self._refused = False
        self._head_deadline: asyncio.TimerHandle | None = None
        self._write_deadline: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None

    # Connection events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Count the connection and start the deadline of its first request head."""
        super().connection_made(transport)
        self._over_capacity = len(self.connections) > self.max_connections
        self._head_deadline = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop every timer of this connection."""
        for timer in (self._head_deadline, self._write_deadline, self._linger):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser, counting bytes while a head or a trailer section is read."""
        if self._refused:
            return  # dropped: the answer is out, the connection closes soon
        if not (self._reading_head or self._in_trailer):
            super().data_received(data)
            return
        if self._over_capacity:
            self._refuse(
                503,
                "the server has too many open connections; retry later",
                retry_after=RETRY_AFTER_SECONDS,
            )
            return
        if self._reading_head and self._head_deadline is None:
            self._head_deadline = self.loop.call_later(self.head_timeout, self._head_too_slow)
        while data and (self._reading_head or self._in_trailer):
            room = self.max_head_bytes - self._head_bytes
            if room <= 0:
                self._refuse(431, f"the request head is larger than {self.max_head_bytes} bytes")
                return
            # A full slice is the same object: only a read that ends the head is copied.
            piece, data = data[:room], data[room:]
            self._head_bytes += len(piece)
            super().data_received(piece)
            if self._refused or self.transport.is_closing():
                return
        if data:
            super().data_received(data)

    def pause_writing(self) -> None:
        """The client is not keeping up: it has ``write_timeout`` to read some more."""
        super().pause_writing()
        if self._write_deadline is None:
            self._write_deadline = self.loop.call_later(self.write_timeout, self._reader_stalled)

    def resume_writing(self) -> None:
        """The client read enough: no deadline until it falls behind again."""
        super().resume_writing()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None

    # Parser callbacks

    def on_headers_complete(self) -> None:
        """The head is in: its deadline and byte count end here."""
        self._reading_head = False
        self._head_bytes = 0
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None
        super().on_headers_complete()

    def on_chunk_header(self) -> None:
        """A chunk size line: what follows is body bytes, or (after the last chunk) trailers."""
        self._in_trailer = True
        self._head_bytes = 0

    def on_body(self, body: bytes) -> None:
        """Body bytes: not a trailer section.

        A piece that finds the request's buffer empty becomes the buffer as it is: uvicorn
        appends every piece to a ``bytearray`` and copies that into the ASGI message, two
        copies of each body byte on the event loop (~0.3 CPU-s per GiB here), where
        ``bytes()`` of a ``bytes`` object is the object itself. Pieces that arrive while
        the application has not taken the last one are gathered as uvicorn does.
        """
        self._in_trailer = False
        cycle = self.cycle
        if cycle is None or not body or cycle.response_complete or self.parser.should_upgrade():
            super().on_body(body)
            return
        if not cycle.body:
            # uvicorn's receive() sends ``bytes(cycle.body)`` and starts a new bytearray.
            cycle.body = body  # type: ignore[assignment]
            if len(body) > HIGH_WATER_LIMIT:
                self.flow.pause_reading()
            cycle.message_event.set()
            return
        if isinstance(cycle.body, bytes):
            cycle.body = bytearray(cycle.body)  # appending to bytes would copy it each time
        super().on_body(body)

    def on_message_complete(self) -> None:
        """The request ended: the next bytes are the next request's head."""
        self._in_trailer = False
        self._reading_head = True
        self._head_bytes = 0
        super().on_message_complete()
        cycle = self.cycle
        if (
            cycle is not None
            and cycle.response_complete
            and self.timeout_keep_alive_task is None
            and not self.transport.is_closing()
        ):
            # Answered before its body ended (an early 409/423): the body's bytes cancelled
            # the keep-alive timer that the answer armed, and uvicorn arms it only when a
            # response completes. The connection is idle again now: arm it here, or the
            # connection stays open for as long as the client likes.
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    # Refusals

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if not self._reading_head or self._refused or self.transport.is_closing():
            return
        if self._head_bytes == 0:
            self.transport.close()  # nothing was asked: nothing to answer
            return
        self._refuse(408, f"the request head did not arrive within {self.head_timeout:g} s")

    def _reader_stalled(self) -> None:
        self._write_deadline = None
        if not self.transport.is_closing():
            logger.info(
                "closing a connection whose client read nothing for %g s", self.write_timeout
            )
            # abort(), not close(): close() would wait to flush what the client never reads.
            self.transport.abort()

    def _refuse(self, status: int, message: str, *, retry_after: int | None = None) -> None:
        """Answer ``status`` with a plain message and close the connection."""
        self._refused = True
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None
        logger.info("refused a request with %d: %s", status, message)
        if self.cycle is not None and not self.cycle.response_complete:
            if self._in_trailer:
                # The request itself is not over (its trailers overflow): it ends as a lost
                # connection, which is how the handler learns that its body is incomplete.
                self.transport.abort()
            else:
                # A response is still going out (a pipelined head went wrong): let it
                # finish, then close instead of reading another request.
                self.cycle.keep_alive = False
            return
        body = (message + "\n").encode()
        head = [
            f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
            "content-type: text/plain; charset=utf-8",
            f"content-length: {len(body)}",
            "connection: close",
        ]
        if retry_after is not None:
            head.append(f"retry-after: {retry_after}")
        self.transport.write("\r\n".join(head).encode() + b"\r\n\r\n" + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._linger = self.loop.call_later(LINGER_SECONDS, self.transport.close)


def http_protocol_for(settings: Settings) -> type[FerryHttpProtocol]:
    """The protocol class ``ferry serve`` gives uvicorn, with these settings' limits."""

    class ConfiguredHttpProtocol(FerryHttpProtocol):
        max_head_bytes = settings.max_header_bytes
        head_timeout = float(settings.header_timeout_seconds)
        max_connections = settings.max_connections
        write_timeout = float(settings.write_timeout_seconds)

    return ConfiguredHttpProtocol
