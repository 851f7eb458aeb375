"""UploadPart bodies sent from the staging file by the kernel (``sendfile``).

Through aiohttp a part body is read into memory block by block in worker threads, handed
to the event loop and written as the socket drains: ~1.3 CPU-s per GiB on loopback, on a
machine where the S3 server wants most of the CPU. Here one worker thread per part writes
the request on a blocking socket and ``os.sendfile`` moves the bytes from the page cache
to the socket without passing through Python: ~0.4 CPU-s per GiB, and no part-sized
buffers in the heap (shared/perf-notes.md).

botocore still signs every request — a presigned URL (SigV4 in the query,
``UNSIGNED-PAYLOAD``) whose signed headers are ``Content-Length`` and the part's
``x-amz-checksum-crc32c`` — so credentials, regions, addressing and endpoints stay its
business; only the transfer is done here. TLS endpoints get 1 MiB blocks read and written
in the same thread (the kernel cannot encrypt). Connections are kept alive and reused.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from botocore.exceptions import ClientError

#: Read size for TLS connections, where the bytes must pass through user space.
TLS_BLOCK_SIZE = 1024 * 1024
#: Idle keep-alive connections kept per host (the number of parts in flight is bounded).
MAX_IDLE_PER_HOST = 16
#: Most of an error body read to find S3's error code.
MAX_ERROR_BODY = 64 * 1024

_ERROR_FIELD = re.compile(rb"<(Code|Message)>([^<]{0,512})</\1>")


class PartUploader:
    """Sends part bodies with PUT to presigned UploadPart URLs; blocking work in threads."""

    def __init__(
        self, *, timeout: float, connect_timeout: float, ssl_context: ssl.SSLContext | None
    ) -> None:
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._ssl_context = ssl_context
        self._idle: dict[tuple[str, str], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()

    async def put(
        self, url: str, headers: Mapping[str, str], path: Path, start: int, size: int
    ) -> str:
        """PUT ``[start, start + size)`` of ``path`` to ``url``; returns the part's ETag.

        S3's refusals raise :class:`~botocore.exceptions.ClientError` (with its error code,
        as botocore would), network trouble raises :class:`OSError`. Cancelling closes the
        connection, so the worker thread stops at once instead of finishing the part.
        """
        transfer = _Transfer(self, url, headers, path, start, size)
        try:
            return await anyio.to_thread.run_sync(transfer.run, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            transfer.abort()
            raise

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    # ------------------------------------------------------------------ connection pool

    def take_idle(self, origin: tuple[str, str]) -> http.client.HTTPConnection | None:
        """A kept-alive connection to ``(scheme, netloc)``, if one is idle."""
        with self._lock:
            connections = self._idle.get(origin)
            return connections.pop() if connections else None

    def give_back(self, origin: tuple[str, str], connection: http.client.HTTPConnection) -> None:
        """Keep a connection whose last exchange ended cleanly (or close it: pool full)."""
        with self._lock:
            connections = self._idle.setdefault(origin, [])
            if len(connections) < MAX_IDLE_PER_HOST:
                connections.append(connection)
                return
        connection.close()

    def connect(self, origin: tuple[str, str]) -> http.client.HTTPConnection:
        """A new connection (blocking): connect timeout first, then the transfer timeout."""
        scheme, netloc = origin
        connection: http.client.HTTPConnection
        if scheme == "https":
            connection = http.client.HTTPSConnection(
                netloc, timeout=self.connect_timeout, context=self._ssl_context
            )
        else:
            connection = http.client.HTTPConnection(netloc, timeout=self.connect_timeout)
        connection.connect()
        assert connection.sock is not None
        connection.sock.settimeout(self.timeout)
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection


class _Transfer:
    """One part's PUT, run in a worker thread; :meth:`abort` may come from the event loop."""

    def __init__(
        self,
        uploader: PartUploader,
        url: str,
        headers: Mapping[str, str],
        path: Path,
        start: int,
        size: int,
    ) -> None:
        self._uploader = uploader
        parts = urllib.parse.urlsplit(url)
        self._origin = (parts.scheme, parts.netloc)
        self._target = f"{parts.path}?{parts.query}" if parts.query else parts.path
        self._host = _host_header(parts)
        self._headers = headers
        self._path = path
        self._start = start
        self._size = size
        self._connection: http.client.HTTPConnection | None = None
        self._aborted = False

    def abort(self) -> None:
        """Stop the transfer from another thread: shut its socket down."""
        self._aborted = True
        connection = self._connection
        if connection is not None and connection.sock is not None:
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> str:
        # Opened first: a staging file that is gone is FileNotFoundError, not a network error.
        with open(self._path, "rb", buffering=0) as body:
            reused = self._uploader.take_idle(self._origin)
            if reused is not None:
                try:
                    return self._exchange(reused, body)
                except ConnectionError:
                    # The server closed the idle connection: one more try on a fresh one.
                    if self._aborted:
                        raise
            return self._exchange(self._uploader.connect(self._origin), body)

    def _exchange(self, connection: http.client.HTTPConnection, body: object) -> str:
        self._connection = connection
        keep = False
        try:
            if self._aborted:
                raise ConnectionAbortedError("the part upload was cancelled")
            connection.putrequest("PUT", self._target, skip_host=True, skip_accept_encoding=True)
            connection.putheader("Host", self._host)
            connection.putheader("Content-Length", str(self._size))
            for name, value in self._headers.items():
                connection.putheader(name, value)
            connection.endheaders()
            self._send_body(connection, body)
            try:
                response = connection.getresponse()
                payload = response.read(MAX_ERROR_BODY)
            except http.client.RemoteDisconnected:
                raise  # a ConnectionError already
            except http.client.HTTPException as exc:
                raise ConnectionError(f"broken answer to UploadPart: {exc!r}") from exc
            keep = not response.will_close and response.isclosed()
            return _etag_or_error(response, payload)
        finally:
            self._connection = None
            if keep and not self._aborted:
                self._uploader.give_back(self._origin, connection)
            else:
                connection.close()

    def _send_body(self, connection: http.client.HTTPConnection, body: object) -> None:
        sock = connection.sock
        assert sock is not None
        if isinstance(sock, ssl.SSLSocket):
            sent = _send_through_user_space(sock, body, self._start, self._size)
        else:
            sent = sock.sendfile(body, self._start, self._size)  # type: ignore[arg-type]
        if sent != self._size:
            raise OSError(f"the staging file ended {self._size - sent} bytes before the part")


def _send_through_user_space(sock: ssl.SSLSocket, body: object, start: int, size: int) -> int:
    fd = body.fileno()  # type: ignore[attr-defined]
    sent = 0
    while sent < size:
        block = os.pread(fd, min(TLS_BLOCK_SIZE, size - sent), start + sent)
        if not block:
            break
        sock.sendall(block)
        sent += len(block)
    return sent


def _host_header(parts: urllib.parse.SplitResult) -> str:
    """The Host the signature covers: botocore drops the scheme's default port."""
    default = {"http": 80, "https": 443}.get(parts.scheme)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return host if parts.port in (None, default) else f"{host}:{parts.port}"


def _etag_or_error(response: http.client.HTTPResponse, payload: bytes) -> str:
    """The ETag of an accepted part, or S3's refusal as botocore's ``ClientError``."""
    etag = response.getheader("ETag")
    if response.status == 200 and etag:
        return etag
    fields = {
        name.decode(): value.decode("utf-8", "replace")
        for name, value in _ERROR_FIELD.findall(payload)
    }
    default_code = "MissingETag" if response.status == 200 else str(response.status)
    error: Any = {
        "Error": {
            "Code": fields.get("Code", default_code),
            "Message": fields.get("Message", response.reason or "UploadPart failed"),
        },
        "ResponseMetadata": {"HTTPStatusCode": response.status},
    }
    raise ClientError(error, "UploadPart")
