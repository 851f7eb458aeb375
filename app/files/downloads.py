"""Serving stored files over plain HTTP: full bodies, byte ranges and conditionals.

A download reads the file row and the backend; it never takes an upload's lock, so a
player's range requests never wait behind a writer.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response
from litestar.response import Stream

from app.db.models import File
from app.errors import NotFound, RangeNotSatisfiable
from app.filenames import content_disposition
from app.files.ranges import (
    ByteRange,
    Unsatisfiable,
    if_range_allows,
    none_match,
    not_modified_since,
    parse_range,
)
from app.storage.backend import StorageBackend
from app.tus.protocol import format_http_date, parse_upload_id
from app.uploads.service import UploadService

#: Types a browser may show inline; everything else downloads as an attachment.
INLINE_TYPES = ("video/", "audio/", "image/", "text/plain")
INLINE_EXCLUDED = frozenset({"image/svg+xml"})
DEFAULT_MAX_RANGES = 100


def disposition_for(content_type: str) -> str:
    """``inline`` only for media that cannot run script in our origin."""
    if content_type in INLINE_EXCLUDED:
        return "attachment"
    return "inline" if content_type.startswith(INLINE_TYPES) else "attachment"


class DownloadService:
    """Builds file responses from file rows and backend range readers."""

    def __init__(
        self, uploads: UploadService, backend: StorageBackend, max_ranges: int = DEFAULT_MAX_RANGES
    ) -> None:
        self.uploads = uploads
        self.backend = backend
        self.max_ranges = max_ranges

    async def respond(
        self,
        request: Request[Any, Any, Any],
        uid_text: str,
        owner: str | None,
        *,
        head_only: bool,
    ) -> Response[None]:
        """Answer ``GET``/``HEAD`` for a file UID with RFC 9110 range semantics."""
        try:
            stored = await self.uploads.get_file(parse_upload_id(uid_text), owner)
        except NotFound:
            raise NotFound("no such file (or its upload is not complete)") from None
        return self.file_response(request, stored, head_only=head_only)

    def file_response(
        self, request: Request[Any, Any, Any], stored: File, *, head_only: bool
    ) -> Response[None]:
        """The response for one file row."""
        etag = f'"{stored.sha256}"'
        headers = {
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "Last-Modified": format_http_date(stored.created_at),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Content-Disposition": content_disposition(
                disposition_for(stored.content_type), stored.name
            ),
        }
        request_headers = request.headers
        if_none_match = request_headers.get("if-none-match")
        if if_none_match is not None:
            if none_match(if_none_match, etag):
                return Response(None, status_code=304, headers=headers)
        elif (since := request_headers.get("if-modified-since")) is not None and (
            not_modified_since(since, stored.created_at)
        ):
            return Response(None, status_code=304, headers=headers)

        ranges: list[ByteRange] | None = None
        range_values = request_headers.getall("range", [])
        if len(range_values) == 1 and if_range_allows(
            request_headers.get("if-range"), etag, stored.created_at
        ):
            try:
                ranges = parse_range(range_values[0], stored.size, self.max_ranges)
            except Unsatisfiable:
                raise RangeNotSatisfiable(
                    "no requested range overlaps the file",
                    headers={"Content-Range": f"bytes */{stored.size}", **headers},
                ) from None

        if ranges is None:
            headers["Content-Length"] = str(stored.size)
            return self._body(
                stored.content_type,
                200,
                headers,
                head_only,
                lambda: self.backend.open_range(stored.storage_key, 0, stored.size),
            )
        if len(ranges) == 1:
            only = ranges[0]
            headers["Content-Range"] = only.content_range(stored.size)
            headers["Content-Length"] = str(only.length)
            return self._body(
                stored.content_type,
                206,
                headers,
                head_only,
                lambda: self.backend.open_range(stored.storage_key, only.start, only.length),
            )
        boundary = secrets.token_hex(16)
        frames = [
            (
                f"--{boundary}\r\nContent-Type: {stored.content_type}\r\n"
                f"Content-Range: {r.content_range(stored.size)}\r\n\r\n"
            ).encode()
            for r in ranges
        ]
        closing = f"--{boundary}--\r\n".encode()
        total = sum(len(f) + r.length + 2 for f, r in zip(frames, ranges, strict=True))
        headers["Content-Length"] = str(total + len(closing))

        async def multipart() -> AsyncIterator[bytes]:
            for frame, byte_range in zip(frames, ranges, strict=True):
                yield frame
                async for block in self.backend.open_range(
                    stored.storage_key, byte_range.start, byte_range.length
                ):
                    yield block
                yield b"\r\n"
            yield closing

        return self._body(
            f"multipart/byteranges; boundary={boundary}", 206, headers, head_only, multipart
        )

    @staticmethod
    def _body(
        media_type: str,
        status: int,
        headers: dict[str, str],
        head_only: bool,
        open_stream: Any,
    ) -> Response[None]:
        if head_only:
            return Response(None, status_code=status, headers=headers, media_type=media_type)
        # A Stream is a Response whose body is an iterator; typed as bodiless for HEAD's sake.
        return Stream(  # type: ignore[return-value]
            open_stream(), status_code=status, headers=headers, media_type=media_type
        )
