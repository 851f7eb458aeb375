"""Simple uploads for clients that do not speak tus (the original service's habit).

* ``PUT /api/files/named/{name}`` (or ``PUT /api/files/{name}``) with the raw body;
* ``POST /api/files`` with ``multipart/form-data`` holding one or more files.

Both stream: the body goes from ASGI ``receive`` through a push parser
(:class:`multipart.PushMultipartParser`, no temporary files, no buffering of a part)
into the upload service's staging file, which then becomes a ``File`` like any finished
tus upload. Memory stays bounded whatever the size. An optional digest header is checked
before the file exists; on a mismatch the answer is 422 and nothing stays behind.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import anyio
from litestar import Request, Response, post, put
from litestar.datastructures import Headers
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.status_codes import HTTP_201_CREATED
from multipart import (
    MultipartSegment,
    ParserError,
    PushMultipartParser,
    parse_options_header,
)

from app.core.checksums import ChecksumSpec
from app.core.filenames import safe_display_name, validate_name
from app.core.metadata import encode_metadata_value
from app.db.models import File
from app.errors import (
    BadRequest,
    ChecksumMismatch,
    DigestMismatch,
    FerryError,
    InvalidParameter,
    UnsupportedMediaType,
)
from app.http.openapi import FORM_BODY, RAW_BODY, api_errors, documented
from app.http.request_body import stream_request_body
from app.http.schemas import FileOut, UploadedFiles, file_out
from app.http.tus import request_creator
from app.ops import metrics
from app.settings import Settings
from app.uploads.service import NewUpload, UploadService

API_FILES_PATH = "/api/files"
AnyRequest = Request[Any, Any, Any]

#: Most files one multipart form may carry.
MAX_FORM_FILES = 1000
#: Largest non-file form field read (and ignored).
MAX_FIELD_SIZE = 64 * 1024

#: RFC 3230 / RFC 9530 algorithm names → the checksum algorithms the service verifies.
_DIGEST_ALGORITHMS = {"sha-256": "sha256", "sha256": "sha256", "md5": "md5", "sha": "sha1"}
#: Digest headers by their lower-case name (how a form part's headers are keyed).
_DIGEST_HEADERS = {
    "content-digest": "Content-Digest",
    "repr-digest": "Repr-Digest",
    "digest": "Digest",
}
_HEX_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def _decode_b64(value: str, header: str) -> bytes:
    try:
        return base64.b64decode(value.strip().strip(":"), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidParameter(header, f"{header}: the digest is not base64") from None


def parse_digest_headers(headers: Headers | dict[str, str]) -> ChecksumSpec | None:
    """The strongest digest a client declared for its body, or ``None``.

    Accepts ``Content-Digest``/``Repr-Digest`` (RFC 9530, ``sha-256=:b64:``), ``Digest``
    (RFC 3230, ``sha-256=b64``), ``X-Checksum-Sha256`` (hex or base64) and ``Content-MD5``
    (RFC 1864). For a simple upload the representation is the body, so all of them mean
    the same bytes. Unknown algorithms are ignored, as RFC 9530 §2 allows.
    """
    found: dict[str, ChecksumSpec] = {}
    for header, header_name in _DIGEST_HEADERS.items():
        value = headers.get(header)
        if not value:
            continue
        for member in value.split(","):
            name, _, encoded = member.strip().partition("=")
            algorithm = _DIGEST_ALGORITHMS.get(name.strip().lower())
            if algorithm is not None and encoded:
                expected = _decode_b64(encoded, header_name)
                found.setdefault(algorithm, ChecksumSpec(algorithm, expected))
    sha256 = headers.get("x-checksum-sha256")
    if sha256:
        text = sha256.strip()
        expected = (
            bytes.fromhex(text)
            if _HEX_SHA256.match(text)
            else _decode_b64(text, "X-Checksum-Sha256")
        )
        found.setdefault("sha256", ChecksumSpec("sha256", expected))
    md5 = headers.get("content-md5")
    if md5:
        found.setdefault("md5", ChecksumSpec("md5", _decode_b64(md5, "Content-MD5")))
    for algorithm in ("sha256", "sha1", "md5"):
        if algorithm in found:
            return found[algorithm]
    return None


async def store_simple_upload(
    uploads: UploadService,
    *,
    name: str,
    body: AsyncIterator[bytes],
    length: int | None,
    owner: str | None,
    checksum: ChecksumSpec | None,
) -> File:
    """Stream one body into a new file; the size rule is checked before any byte is read."""
    if length is not None:
        uploads.policy.check_size(length)
    if length == 0 and checksum is not None:
        digest = checksum.new_digest()
        if digest.digest() != checksum.expected:
            raise DigestMismatch(
                f"the body does not match its declared {checksum.algorithm} digest"
            )
    try:
        stored = await uploads.create_and_fill(
            NewUpload(
                length=length, metadata={"filename": encode_metadata_value(name)}, owner=owner
            ),
            body,
            checksum,
        )
    except ChecksumMismatch:
        raise DigestMismatch(
            f"the body does not match its declared {checksum.algorithm if checksum else ''} digest"
        ) from None
    metrics.UPLOADS_CREATED.inc()
    return stored


class _FormParts:
    """Turns a streamed multipart body into (segment, payload stream) pairs, one at a time.

    The push parser yields events for each chunk it is given; they are queued and handed
    out in order, so a part's payload flows straight into its upload while later parts
    have not even arrived.
    """

    _END = object()

    def __init__(self, body: AsyncIterator[bytes], boundary: str) -> None:
        self._body = body
        self._parser = PushMultipartParser(
            boundary,
            max_header_size=8192,
            max_header_count=16,
            max_segment_count=MAX_FORM_FILES * 2,
        )
        self._events: deque[object] = deque()
        self._finished = False

    async def _next_event(self) -> object:
        while not self._events:
            if self._finished:
                return self._END
            chunk = await anext(self._body, b"")
            try:
                self._events.extend(self._parser.parse(chunk))
            except ParserError as exc:
                raise BadRequest(f"malformed multipart body: {exc}") from None
            if not chunk:
                self._finished = True
                if not self._parser.closed:
                    raise BadRequest("the multipart body ended before its closing boundary")
        return self._events.popleft()

    async def payload(self) -> AsyncIterator[bytes]:
        """The current part's body, ending at its boundary."""
        while True:
            event = await self._next_event()
            if event is None or event is self._END:
                return
            assert isinstance(event, bytes | bytearray)
            yield bytes(event)

    async def segments(self) -> AsyncIterator[MultipartSegment]:
        """Each part's headers; the caller reads (or skips) its payload before the next."""
        while True:
            event = await self._next_event()
            if event is self._END:
                return
            if isinstance(event, MultipartSegment):
                yield event

    async def skip(self, limit: int) -> None:
        """Read and drop a non-file field, refusing one larger than ``limit``."""
        size = 0
        async for block in self.payload():
            size += len(block)
            if size > limit:
                raise BadRequest(f"a form field is larger than {limit} bytes")


Uploads = NamedDependency[UploadService]
Config = NamedDependency[Settings]


#: What a simple upload may answer besides 201 (the content, size, digest and quota rules,
#: a stalled body, a full disk, an unavailable database).
UPLOAD_ERRORS = api_errors(400, 401, 403, 408, 413, 415, 422, 429, 503, 507)


async def _put_file(
    request: AnyRequest, name: FromPath[str], uploads: Uploads, settings: Config
) -> Response[FileOut]:
    """Store the raw body as a file named ``name``; optional Digest/Content-MD5 check.

    Refusals: 413 (size), 415 (content type by magic bytes), 422 (digest mismatch).
    """
    name = validate_name(name)
    stored = await store_simple_upload(
        uploads,
        name=name,
        body=stream_request_body(request, settings.read_timeout_seconds),
        length=request.content_length,
        owner=request_creator(request),
        checksum=parse_digest_headers(request.headers),
    )
    out = file_out(stored, str(request.base_url))
    return Response(out, status_code=HTTP_201_CREATED, headers={"Location": out.url})


#: ``PUT /api/files/named/{name}``: a path of its own, so that it never shares a template
#: with ``/api/files/{uid}`` (``curl -T file URL/`` appends the file name).
put_file = put(
    "/named/{name:str}",
    status_code=HTTP_201_CREATED,
    summary="Upload one file (the raw body)",
    request_max_body_size=None,
    **documented(UPLOAD_ERRORS, request_body=RAW_BODY, response_headers={"201": ["Location"]}),
)(_put_file)
#: ``PUT /api/files/{name}``, the first form, still served; not in the schema, whose
#: ``/api/files/{uid}`` it would shadow.
put_file_at_first_path = put(
    "/{name:str}",
    status_code=HTTP_201_CREATED,
    request_max_body_size=None,
    include_in_schema=False,
)(_put_file)


@post(
    "/",
    status_code=HTTP_201_CREATED,
    summary="Upload the files of a multipart form",
    request_max_body_size=None,
    **documented(UPLOAD_ERRORS, request_body=FORM_BODY),
)
async def post_form(request: AnyRequest, uploads: Uploads, settings: Config) -> UploadedFiles:
    """Store every file part of a ``multipart/form-data`` body (any field name).

    All or nothing: if one part is refused, the files stored before it are deleted.
    A part may carry its own ``Content-MD5``/``Digest`` header.
    """
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != "multipart/form-data" or not options.get("boundary"):
        raise UnsupportedMediaType(
            "POST /api/files needs multipart/form-data with a boundary "
            "(or use PUT /api/files/{name} with the raw body)"
        )
    form = _FormParts(
        stream_request_body(request, settings.read_timeout_seconds), options["boundary"]
    )
    owner = request_creator(request)
    stored: list[File] = []
    try:
        async for segment in form.segments():
            if segment.filename is None:
                await form.skip(MAX_FIELD_SIZE)
                continue
            if len(stored) >= MAX_FORM_FILES:
                raise BadRequest(f"a form may carry at most {MAX_FORM_FILES} files")
            part_headers = {key.lower(): value for key, value in segment.headerlist}
            stored.append(
                await store_simple_upload(
                    uploads,
                    name=safe_display_name(segment.filename, "upload"),
                    body=form.payload(),
                    length=None,
                    owner=owner,
                    checksum=parse_digest_headers(part_headers),
                )
            )
    except BaseException:
        with anyio.CancelScope(shield=True):
            for done in stored:
                with contextlib.suppress(FerryError):
                    await uploads.terminate(done.id)
        raise
    if not stored:
        raise BadRequest("the form carries no file part")
    base_url = str(request.base_url)
    return UploadedFiles(files=[file_out(item, base_url) for item in stored])
