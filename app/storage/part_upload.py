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

A part can also be sent *while its bytes are still arriving* (:meth:`PartUploader.put_following`):
the PUT starts with the request body that will complete it and reads the staging file
right behind the writer (:class:`WrittenSoFar`). Its CRC32C is not known when the request
starts, so the body goes ``aws-chunked`` with the checksum in a trailer
(``STREAMING-UNSIGNED-PAYLOAD-TRAILER``, what the AWS SDKs send over TLS); S3 checks it
against the bytes it got and refuses the part on a mismatch.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import google_crc32c
from botocore.exceptions import ClientError

from app.storage.staged_parts import crc32c_base64

#: Read size for TLS connections, where the bytes must pass through user space.
TLS_BLOCK_SIZE = 1024 * 1024
#: Idle keep-alive connections kept per host (the number of parts in flight is bounded).
MAX_IDLE_PER_HOST = 16
#: Most of an error body read to find S3's error code.
MAX_ERROR_BODY = 64 * 1024

_ERROR_FIELD = re.compile(rb"<(Code|Message)>([^<]{0,512})</\1>")
#: Payload bytes per ``aws-chunked`` chunk of a part sent while it arrives: a lone
#: writer's block. Each chunk costs the sending thread a few trips for the GIL, which the
#: event loop (busy receiving the body) hands over only now and then.
FOLLOWING_CHUNK_SIZE = 1024 * 1024
#: The trailer that carries a followed part's checksum.
CHECKSUM_TRAILER = "x-amz-checksum-crc32c"
#: How often a transfer waiting for bytes looks whether it was aborted.
_WAIT_SLICE = 0.5


class BodyEnded(Exception):
    """The body stopped before the bytes a followed part needs were written."""


class WrittenSoFar:
    """How far one staging file is written, for transfers that follow its writer.

    The writer reports each written block from its thread (:meth:`advanced`) and its end
    (:meth:`finished`); a following transfer blocks in :meth:`wait_until`.
    """

    def __init__(self, end: int) -> None:
        self._end = end
        self._finished = False
        self._changed = threading.Condition()

    @property
    def end(self) -> int:
        """The written end known so far."""
        return self._end

    def advanced(self, end: int) -> None:
        with self._changed:
            self._end = max(self._end, end)
            self._changed.notify_all()

    def finished(self) -> None:
        with self._changed:
            self._finished = True
            self._changed.notify_all()

    def wait_until(self, target: int, timeout: float) -> bool:
        """Block until ``[.., target)`` is written: ``True``; ``False`` after ``timeout``.

        Raises :class:`BodyEnded` when the writer finished short of ``target``.
        """
        with self._changed:
            reached = self._changed.wait_for(lambda: self._end >= target or self._finished, timeout)
            if self._end >= target:
                return True
            if reached:
                raise BodyEnded(f"the body ended at {self._end}, before {target}")
            return False


def aws_chunked_length(size: int) -> int:
    """Bytes on the wire of ``size`` payload bytes framed as :func:`_send_following` does."""
    whole, rest = divmod(size, FOLLOWING_CHUNK_SIZE)
    length = whole * (len(f"{FOLLOWING_CHUNK_SIZE:x}") + 4 + FOLLOWING_CHUNK_SIZE)
    if rest:
        length += len(f"{rest:x}") + 4 + rest
    # "0\r\n", the trailer line (a CRC32C is 8 base64 characters), the closing "\r\n"
    return length + 3 + len(CHECKSUM_TRAILER) + 1 + 8 + 2 + 2


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

    async def put_following(
        self,
        url: str,
        headers: Mapping[str, str],
        path: Path,
        start: int,
        size: int,
        written: WrittenSoFar,
    ) -> tuple[str, str]:
        """PUT ``[start, start + size)`` of ``path`` while it is being written; returns the
        part's ETag and base64 CRC32C.

        ``url`` and ``headers`` must be signed for an ``aws-chunked`` body of
        :func:`aws_chunked_length` bytes with the CRC32C trailer. Raises
        :class:`BodyEnded` when the body stops short of the part (nothing is recorded of
        it: S3 drops an incomplete part).
        """
        transfer = _FollowingTransfer(self, url, headers, path, start, size, written)
        try:
            etag = await anyio.to_thread.run_sync(transfer.run, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            transfer.abort()
            raise
        return etag, transfer.crc32c

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
            connection.putheader("Content-Length", str(self._content_length()))
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

    def _content_length(self) -> int:
        return self._size

    def _send_body(self, connection: http.client.HTTPConnection, body: object) -> None:
        sock = connection.sock
        assert sock is not None
        if isinstance(sock, ssl.SSLSocket):
            sent = _send_through_user_space(sock, body, self._start, self._size)
        else:
            sent = sock.sendfile(body, self._start, self._size)  # type: ignore[arg-type]
        if sent != self._size:
            raise OSError(f"the staging file ended {self._size - sent} bytes before the part")


class _FollowingTransfer(_Transfer):
    """A part's PUT that reads the staging file right behind its writer, ``aws-chunked``
    with the CRC32C in the trailer."""

    def __init__(
        self,
        uploader: PartUploader,
        url: str,
        headers: Mapping[str, str],
        path: Path,
        start: int,
        size: int,
        written: WrittenSoFar,
    ) -> None:
        super().__init__(uploader, url, headers, path, start, size)
        self._written = written
        self.crc32c = ""

    def _content_length(self) -> int:
        return aws_chunked_length(self._size)

    def _send_body(self, connection: http.client.HTTPConnection, body: object) -> None:
        sock = connection.sock
        assert sock is not None
        fd = body.fileno()  # type: ignore[attr-defined]
        value = 0
        position, end = self._start, self._start + self._size
        while position < end:
            size = min(FOLLOWING_CHUNK_SIZE, end - position)
            self._wait_for(position + size)
            block = os.pread(fd, size, position)
            if len(block) != size:
                raise OSError(f"the staging file ended inside a followed part at {position}")
            value = google_crc32c.extend(value, block)
            _send_pieces(sock, [f"{size:x}\r\n".encode("ascii"), block, b"\r\n"])
            position += size
        self.crc32c = crc32c_base64(value)
        sock.sendall(f"0\r\n{CHECKSUM_TRAILER}:{self.crc32c}\r\n\r\n".encode("ascii"))

    def _wait_for(self, target: int) -> None:
        """Wait until the writer reached ``target`` (aborts and time-outs end the wait)."""
        deadline = time.monotonic() + self._uploader.timeout
        while not self._written.wait_until(target, _WAIT_SLICE):
            if self._aborted:
                raise ConnectionAbortedError("the part upload was cancelled")
            if time.monotonic() > deadline:
                limit = self._uploader.timeout
                raise TimeoutError(f"no body bytes for a followed part in {limit} s")


def _send_pieces(sock: socket.socket, pieces: list[bytes]) -> None:
    """Send ``pieces`` in as few calls as the socket takes (one ``sendmsg`` usually)."""
    if isinstance(sock, ssl.SSLSocket):
        sock.sendall(b"".join(pieces))
        return
    views = [memoryview(piece) for piece in pieces]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]


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
