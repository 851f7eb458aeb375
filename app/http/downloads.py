"""Serving stored files over plain HTTP: full bodies, byte ranges and conditionals.

A download reads the file row and the backend; it never takes an upload's lock, so a
player's range requests never wait behind a writer. Preconditions are evaluated in the
order of RFC 9110 §13.2.2: ``If-Match``, ``If-Unmodified-Since``, ``If-None-Match``,
``If-Modified-Since``, then ``Range`` guarded by ``If-Range``.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from litestar import Request, Response
from litestar.middleware import ASGIMiddleware
from litestar.response import Stream
from litestar.types import ASGIApp, Receive, Scope, Send

from app.core.filenames import content_disposition
from app.db.models import File
from app.errors import NotFound, PreconditionFailed, RangeNotSatisfiable, ServiceUnavailable
from app.http.links import check_signed_request
from app.http.ranges import (
    ByteRange,
    Unsatisfiable,
    if_range_allows,
    match_strong,
    modified_since,
    none_match,
    not_modified_since,
    parse_range,
)
from app.http.tus_protocol import format_http_date, parse_upload_id
from app.settings import Settings
from app.storage.backend import DownloadPresigning, Storage
from app.uploads.service import UploadService

#: Types a browser may show inline; everything else downloads as an attachment.
INLINE_TYPES = ("video/", "audio/", "image/", "text/plain")
INLINE_EXCLUDED = frozenset({"image/svg+xml"})
DEFAULT_MAX_RANGES = 100
DEFAULT_MAX_DOWNLOADS = 256
#: Bodies up to this size are read before the response starts (one local read block). It
#: stays small: a client that reads nothing pins the whole body in the server's buffers.
EAGER_BODY_LIMIT = 256 * 1024
#: ``Retry-After`` of a download refused because every slot is taken.
RETRY_AFTER_SECONDS = 5
#: Served files never run script or load anything in our origin, even if a browser sniffs.
FILE_CSP = (
    "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; sandbox"
)

OpenStream = Callable[[], AsyncIterator[bytes]]


def disposition_for(content_type: str) -> str:
    """``inline`` only for media that cannot run script in our origin."""
    if content_type in INLINE_EXCLUDED:
        return "attachment"
    return "inline" if content_type.startswith(INLINE_TYPES) else "attachment"


def served_content_type(content_type: str) -> str:
    """``text/plain`` gets an explicit charset; other types are served as sniffed."""
    return "text/plain; charset=utf-8" if content_type == "text/plain" else content_type


class DownloadSlots:
    """At most ``limit`` downloads at once in this process; one more is refused with 503.

    A download costs at most about a megabyte however slowly its client reads, and one that
    stops reading is cut off after ``FERRY_WRITE_TIMEOUT_SECONDS``; the slots bound how many
    there are (and so the memory and descriptors they hold).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Take a slot for the block's duration, or raise 503 with ``Retry-After``."""
        if self.active >= self.limit:
            raise ServiceUnavailable(
                f"{self.limit} downloads are in progress; retry later",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1


class DownloadSlotMiddleware(ASGIMiddleware):
    """Route middleware of a file download: holds a slot until the last body byte is sent
    (or the client went away), not only while the handler runs."""

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        """Serve the download inside one of :attr:`DownloadService.slots`."""
        downloads: DownloadService = scope["litestar_app"].state.downloads
        with downloads.slots.hold():
            await next_app(scope, receive, send)


class DownloadService:
    """Builds file responses from file rows and backend range readers."""

    def __init__(
        self,
        uploads: UploadService,
        storage: Storage,
        max_ranges: int = DEFAULT_MAX_RANGES,
        *,
        settings: Settings | None = None,
    ) -> None:
        self.uploads = uploads
        self.backend = storage.backend
        self.presigning = storage.presigning
        self.max_ranges = settings.max_ranges if settings is not None else max_ranges
        self.redirect = settings is not None and settings.download_mode == "redirect"
        self.redirect_seconds = settings.download_redirect_seconds if settings else 300
        self.slots = DownloadSlots(settings.max_downloads if settings else DEFAULT_MAX_DOWNLOADS)

    async def respond(
        self,
        request: Request[Any, Any, Any],
        uid_text: str,
        owner: str | None,
        *,
        head_only: bool,
    ) -> Response[Any]:
        """Answer ``GET``/``HEAD`` for a file UID with RFC 9110 range semantics.

        A valid signed link (``?expires=&sig=``) stands in for every other credential; an
        invalid or expired one is 403 (see :mod:`app.http.links`).
        """
        if check_signed_request(request, uid_text):
            owner = None
        try:
            stored = await self.uploads.get_file(parse_upload_id(uid_text), owner)
        except NotFound:
            raise NotFound("no such file (or its upload is not complete)") from None
        if self.redirect and self.presigning is not None:
            return await self._redirect(self.presigning, stored)
        return await self.file_response(request, stored, head_only=head_only)

    async def _redirect(self, presigning: DownloadPresigning, stored: File) -> Response[Any]:
        """307 to a short-lived presigned URL; the object store then answers ranges itself."""
        url = await presigning.presigned_get_url(
            stored.storage_key,
            self.redirect_seconds,
            stored.name,
            served_content_type(stored.content_type),
        )
        return Response(
            b"",
            media_type="text/plain",
            status_code=307,
            headers={"Location": str(url), "Cache-Control": "no-store"},
        )

    async def file_response(
        self, request: Request[Any, Any, Any], stored: File, *, head_only: bool
    ) -> Response[Any]:
        """The response for one file row."""
        etag = f'"{stored.sha256}"'
        changed = stored.created_at
        headers = {
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "Last-Modified": format_http_date(changed),
            "Cache-Control": "private, no-cache",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": FILE_CSP,
            "Content-Disposition": content_disposition(
                disposition_for(stored.content_type), stored.name
            ),
        }
        request_headers = request.headers
        if_match = request_headers.get("if-match")
        if if_match is not None:
            if not match_strong(if_match, etag):
                raise PreconditionFailed("If-Match does not match the file's ETag", headers=headers)
        elif (unmodified := request_headers.get("if-unmodified-since")) is not None and (
            modified_since(unmodified, changed)
        ):
            raise PreconditionFailed("the file changed after If-Unmodified-Since", headers=headers)
        if_none_match = request_headers.get("if-none-match")
        if if_none_match is not None:
            if none_match(if_none_match, etag):
                return Response(None, status_code=304, headers=headers)
        elif (since := request_headers.get("if-modified-since")) is not None and (
            not_modified_since(since, changed)
        ):
            return Response(None, status_code=304, headers=headers)

        content_type = served_content_type(stored.content_type)
        ranges: list[ByteRange] | None = None
        # Two Range headers are not a valid list (Range is a singleton field): ignore both.
        range_values = request_headers.getall("range", [])
        if len(range_values) == 1 and if_range_allows(
            request_headers.get("if-range"), etag, changed
        ):
            try:
                ranges = parse_range(range_values[0], stored.size, self.max_ranges)
            except Unsatisfiable:
                raise RangeNotSatisfiable(
                    "no requested range overlaps the file",
                    headers={**headers, "Content-Range": f"bytes */{stored.size}"},
                ) from None

        key = stored.storage_key
        if ranges is None:
            headers["Content-Length"] = str(stored.size)
            return await self._body(
                content_type,
                200,
                headers,
                head_only,
                lambda: self.backend.open_range(key, 0, stored.size),
            )
        if len(ranges) == 1:
            only = ranges[0]
            headers["Content-Range"] = only.content_range(stored.size)
            headers["Content-Length"] = str(only.length)
            return await self._body(
                content_type,
                206,
                headers,
                head_only,
                lambda: self.backend.open_range(key, only.start, only.length),
            )
        return await self._multipart(stored, ranges, content_type, headers, head_only)

    async def _multipart(
        self,
        stored: File,
        ranges: list[ByteRange],
        content_type: str,
        headers: dict[str, str],
        head_only: bool,
    ) -> Response[Any]:
        """RFC 9110 §14.6 ``multipart/byteranges``; its length is known before the first byte."""
        boundary = secrets.token_hex(16)
        frames = [
            (
                f"\r\n--{boundary}\r\nContent-Type: {content_type}\r\n"
                f"Content-Range: {r.content_range(stored.size)}\r\n\r\n"
            ).encode()
            for r in ranges
        ]
        closing = f"\r\n--{boundary}--\r\n".encode()
        total = sum(len(f) + r.length for f, r in zip(frames, ranges, strict=True))
        headers["Content-Length"] = str(total + len(closing))
        key = stored.storage_key

        async def multipart() -> AsyncIterator[bytes]:
            for frame, byte_range in zip(frames, ranges, strict=True):
                yield frame
                async for block in self.backend.open_range(
                    key, byte_range.start, byte_range.length
                ):
                    yield block
            yield closing

        return await self._body(
            f"multipart/byteranges; boundary={boundary}", 206, headers, head_only, multipart
        )

    @staticmethod
    async def _body(
        media_type: str,
        status: int,
        headers: dict[str, str],
        head_only: bool,
        open_stream: OpenStream,
    ) -> Response[Any]:
        # Explicit, so HEAD carries the same Content-Type as GET (Litestar omits it on HEAD).
        headers["Content-Type"] = media_type
        if head_only:
            # b"", not None: Litestar cannot "serialize" None as e.g. application/octet-stream.
            return Response(b"", status_code=status, headers=headers, media_type=media_type)
        length = int(headers["Content-Length"])
        if length <= EAGER_BODY_LIMIT:
            # A player's typical request: one block. Reading it before answering costs the
            # same memory as streaming it, skips the streaming machinery (a task group and a
            # disconnect listener per response), and turns a missing or short file into an
            # error status instead of a connection cut after a 206.
            blocks = [block async for block in open_stream()]
            body = b"".join(blocks)
            if len(body) != length:
                raise ServiceUnavailable("the stored file is shorter than its record")
            return Response(body, status_code=status, headers=headers, media_type=media_type)
        # A Stream is a Response whose body is an iterator.
        return Stream(open_stream(), status_code=status, headers=headers, media_type=media_type)
