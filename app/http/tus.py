"""tus 1.0.0 over HTTP: thin handlers that parse headers, call the upload service and
shape responses. All protocol rules live in :mod:`app.http.tus_protocol`, all state rules in
:mod:`app.uploads.service`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from litestar import Controller, Request, Response, delete, get, head, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from app.core.checksums import ChecksumSpec
from app.db.models import Upload, UploadState
from app.errors import BadRequest, FerryError, UnsupportedMediaType
from app.http.downloads import DownloadService, DownloadSlotMiddleware
from app.http.links import is_signed_request
from app.http.openapi import (
    BEARER_OR_SIGNED_LINK,
    DOWNLOAD_ERRORS,
    DOWNLOAD_PARAMETERS,
    documented,
    download_responses,
)
from app.http.request_body import stream_request_body
from app.http.tus_protocol import (
    OFFSET_CONTENT_TYPE,
    announces_checksum_trailer,
    encode_upload_metadata,
    format_http_date,
    parse_defer_length,
    parse_integer,
    parse_optional_integer,
    parse_upload_checksum,
    parse_upload_concat,
    parse_upload_id,
    parse_upload_metadata,
    require_tus_version,
    trailer_value,
    tus_header,
)
from app.settings import Settings
from app.uploads.service import AppendRequest, NewUpload, UploadService, expiry_header_value

FILES_PATH = "/files"
AnyRequest = Request[Any, Any, Any]
Uploads = NamedDependency[UploadService]
Downloads = NamedDependency[DownloadService]
Config = NamedDependency[Settings]


def request_owner(request: AnyRequest) -> str | None:
    """The authenticated owner, or ``None`` when auth is off or the caller is an admin."""
    owner = request.scope.get("ferry_owner")
    return owner if isinstance(owner, str) else None


def request_creator(request: AnyRequest) -> str | None:
    """Who a new upload belongs to: the caller's name, admins included (``None``: auth off)."""
    principal = request.scope.get("ferry_principal")
    name = getattr(principal, "name", None)
    return name if isinstance(name, str) else request_owner(request)


def upload_url(request: AnyRequest, upload_id: object) -> str:
    """Absolute URL of an upload (tus: Location MAY be absolute; every client accepts it)."""
    return f"{str(request.base_url).rstrip('/')}{FILES_PATH}/{upload_id}"


def _upload_state_headers(upload: Upload) -> dict[str, str]:
    headers: dict[str, str] = {}
    expires = expiry_header_value(upload)
    if expires is not None:
        headers["Upload-Expires"] = format_http_date(expires)
    return headers


def _has_body(request: AnyRequest) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return parse_integer("Content-Length", length) > 0
    return "chunked" in request.headers.get("transfer-encoding", "").lower()


def _require_offset_content_type(request: AnyRequest) -> None:
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != OFFSET_CONTENT_TYPE:
        raise UnsupportedMediaType(f"Content-Type must be {OFFSET_CONTENT_TYPE}")


def _checksum_trailer_reader(request: AnyRequest) -> Callable[[], ChecksumSpec | None] | None:
    """checksum-trailer: how to read ``Upload-Checksum`` once the body has been received."""
    if not announces_checksum_trailer(request.headers.get("trailer")):
        return None
    raw_headers = cast("list[tuple[bytes, bytes]]", request.scope["headers"])
    return lambda: parse_upload_checksum(trailer_value(raw_headers, b"upload-checksum"))


class TusController(Controller):
    """``/files/`` creates uploads; ``/files/{id}`` is one upload and, once complete, its file.

    The upload URL speaks two dialects: requests with ``Tus-Resumable`` are tus, plain
    ``GET``/``HEAD`` (browsers, players, curl) are ordinary HTTP for the file.
    """

    path = FILES_PATH
    # tus is specified by its own protocol, not OpenAPI; the downloads at the same URL are
    # plain HTTP and opt back in (``include_in_schema=True`` on their handlers).
    include_in_schema = False

    @post("/", status_code=HTTP_201_CREATED, request_max_body_size=None)
    async def create(
        self, request: AnyRequest, uploads: Uploads, settings: Config
    ) -> Response[None]:
        """creation (+ creation-with-upload, creation-defer-length, concatenation)."""
        headers = request.headers
        require_tus_version(tus_header(headers, "Tus-Resumable"))
        is_partial, partial_ids = parse_upload_concat(
            tus_header(headers, "Upload-Concat"), FILES_PATH
        )
        length = parse_optional_integer("Upload-Length", tus_header(headers, "Upload-Length"))
        deferred = parse_defer_length(tus_header(headers, "Upload-Defer-Length"))
        if partial_ids:
            if length is not None or deferred:
                raise BadRequest("a final upload must not carry Upload-Length")
        elif (length is None) == (not deferred):
            raise BadRequest("send exactly one of Upload-Length and Upload-Defer-Length: 1")
        metadata = parse_upload_metadata(
            tus_header(headers, "Upload-Metadata"),
            max_bytes=settings.max_metadata_bytes,
            max_keys=settings.max_metadata_keys,
        )
        with_upload = _has_body(request)
        if with_upload:
            _require_offset_content_type(request)
            checksum = parse_upload_checksum(tus_header(headers, "Upload-Checksum"))
            if partial_ids:
                raise BadRequest("a final upload cannot carry data")
        created = await uploads.create(
            NewUpload(
                length=length,
                metadata=metadata,
                is_partial=is_partial,
                partial_ids=partial_ids or None,
                owner=request_creator(request),
            ),
            with_data=with_upload,
        )
        upload = created.upload
        location = upload_url(request, upload.id)
        if with_upload:
            try:
                upload = await uploads.append(
                    AppendRequest(
                        upload_id=upload.id,
                        offset=0,
                        owner=request_owner(request),
                        content_length=request.content_length,
                        checksum=checksum,
                    ),
                    stream_request_body(request, settings.read_timeout_seconds),
                    fresh=created.body_claim,
                )
            except FerryError as error:
                # The upload exists: tell the client where, so it can resume.
                error.headers["Location"] = location
                raise
        response_headers = {"Location": location, **_upload_state_headers(upload)}
        if with_upload:
            response_headers["Upload-Offset"] = str(upload.offset)
        return Response(
            None, status_code=HTTP_201_CREATED, headers=response_headers, media_type="text/plain"
        )

    @head(
        "/{uid:str}",
        status_code=HTTP_200_OK,
        include_in_schema=True,
        summary="Headers of a file download",
        tags=["downloads"],
        description=(
            "What `GET` would answer, without the body. With `Tus-Resumable` (and no signed "
            "link) this is the tus upload status instead, as the tus protocol specifies."
        ),
        security=BEARER_OR_SIGNED_LINK,
        **documented(
            DOWNLOAD_ERRORS,
            parameters=DOWNLOAD_PARAMETERS,
            responses=download_responses(with_body=False),
            uuid_parameters=["uid"],
        ),
    )
    async def status(
        self, request: AnyRequest, uid: FromPath[str], uploads: Uploads, downloads: Downloads
    ) -> Response[None]:
        """tus core §HEAD, or — without ``Tus-Resumable`` — plain HTTP HEAD of the file."""
        if "tus-resumable" not in request.headers or is_signed_request(request.query_params):
            # A signed link grants the file's bytes, never the upload's state or metadata:
            # with one, this is the plain download HEAD whatever else the request says.
            return await downloads.respond(request, uid, request_owner(request), head_only=True)
        require_tus_version(tus_header(request.headers, "Tus-Resumable"))
        upload = await uploads.get_for_status(parse_upload_id(uid), request_owner(request))
        headers = {"Cache-Control": "no-store", **_upload_state_headers(upload)}
        if not upload.is_final or upload.state == UploadState.COMPLETED:
            headers["Upload-Offset"] = str(upload.offset)
        if upload.length is not None:
            headers["Upload-Length"] = str(upload.length)
        elif not upload.is_final:
            headers["Upload-Defer-Length"] = "1"
        if upload.upload_metadata:
            headers["Upload-Metadata"] = encode_upload_metadata(upload.upload_metadata)
        if upload.is_partial:
            headers["Upload-Concat"] = "partial"
        elif upload.is_final:
            parts = " ".join(f"{FILES_PATH}/{part}" for part in upload.concat_parts or [])
            headers["Upload-Concat"] = f"final;{parts}"
        return Response(None, status_code=HTTP_200_OK, headers=headers, media_type="text/plain")

    @get(
        "/{uid:str}",
        middleware=[DownloadSlotMiddleware()],
        include_in_schema=True,
        summary="Download a file",
        tags=["downloads"],
        security=BEARER_OR_SIGNED_LINK,
        **documented(
            DOWNLOAD_ERRORS,
            parameters=DOWNLOAD_PARAMETERS,
            responses=download_responses(with_body=True),
            uuid_parameters=["uid"],
        ),
    )
    async def download(
        self, request: AnyRequest, uid: FromPath[str], downloads: Downloads
    ) -> Response[None]:
        """The completed file at its upload URL, with RFC 9110 ranges and conditionals."""
        return await downloads.respond(request, uid, request_owner(request), head_only=False)

    @patch("/{uid:str}", status_code=HTTP_204_NO_CONTENT, request_max_body_size=None)
    async def append(
        self, request: AnyRequest, uid: FromPath[str], uploads: Uploads, settings: Config
    ) -> Response[None]:
        """tus core §PATCH: append the body at ``Upload-Offset``."""
        headers = request.headers
        require_tus_version(tus_header(headers, "Tus-Resumable"))
        parsed_id = parse_upload_id(uid)
        _require_offset_content_type(request)
        trailer = _checksum_trailer_reader(request)
        offset_header = tus_header(headers, "Upload-Offset")
        if offset_header is None:
            raise BadRequest("Upload-Offset header is required")
        upload = await uploads.append(
            AppendRequest(
                upload_id=parsed_id,
                offset=parse_integer("Upload-Offset", offset_header),
                owner=request_owner(request),
                content_length=request.content_length,
                # With a trailer announced, the value is read once the body has ended.
                checksum=None
                if trailer
                else parse_upload_checksum(tus_header(headers, "Upload-Checksum")),
                checksum_trailer=trailer,
                declared_length=parse_optional_integer(
                    "Upload-Length", tus_header(headers, "Upload-Length")
                ),
            ),
            stream_request_body(request, settings.read_timeout_seconds),
        )
        return Response(
            None,
            status_code=HTTP_204_NO_CONTENT,
            headers={"Upload-Offset": str(upload.offset), **_upload_state_headers(upload)},
        )

    @delete("/{uid:str}", status_code=HTTP_204_NO_CONTENT)
    async def terminate(self, request: AnyRequest, uid: FromPath[str], uploads: Uploads) -> None:
        """termination: free the upload; later requests answer 410."""
        require_tus_version(tus_header(request.headers, "Tus-Resumable"))
        await uploads.terminate(parse_upload_id(uid), request_owner(request))
