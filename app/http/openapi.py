"""What ``/schema`` says beyond what Litestar reads from handler signatures.

Streaming handlers never declare a ``data`` parameter (that would read the body into
memory), download headers are read from the request, and errors are raised, not returned;
so their request bodies, headers, statuses and error bodies are declared here, once, and
the handlers name them. The tus protocol routes are not in the schema (tus is specified by
its own protocol); the downloads that share their URL are.

Swagger UI's assets come from ``static/vendor/swagger-ui`` (copied from the npm package
pinned in ``scripts/vendor-assets/package-lock.json``), so the page works offline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from litestar.enums import MediaType
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import (
    Components,
    OpenAPIFormat,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    Reference,
    RequestBody,
    Schema,
    SecurityRequirement,
    SecurityScheme,
)

from app.errors import code_for_status, error_classes
from app.http.schemas import ApiError

BEARER_SCHEME = "bearer"
#: Operations that need ``Authorization: Bearer`` (unless ``FERRY_AUTH=none``).
BEARER: list[SecurityRequirement] = [{BEARER_SCHEME: []}]
#: Operations a signed link (``?expires=…&sig=…``) opens without any other credential.
BEARER_OR_SIGNED_LINK: list[SecurityRequirement] = [{BEARER_SCHEME: []}, {}]

SWAGGER_ASSETS = "/static/vendor/swagger-ui"

_TEXT = "text/plain"
_BINARY = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
_STRING = Schema(type=OpenAPIType.STRING)
_UUID = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.UUID)


def openapi_config(title: str, version: str) -> OpenAPIConfig:
    """``/schema``: the document, the bearer scheme, and Swagger UI from Ferry's own assets."""
    return OpenAPIConfig(
        title=title,
        version=version,
        description=(
            "The JSON file API, simple uploads, downloads, signed links and operations. "
            "The tus 1.0 endpoints (`POST /files/`, `PATCH`/`DELETE` and tus `HEAD` of "
            "`/files/{uid}`) follow the tus protocol and are not listed; errors under `/api` "
            "are JSON `ApiError` bodies, elsewhere plain text."
        ),
        path="/schema",
        components=Components(
            security_schemes={
                BEARER_SCHEME: SecurityScheme(
                    type="http",
                    scheme="bearer",
                    bearer_format="API key (ferry keys create) or JWT",
                    description=(
                        "`Authorization: Bearer <key or token>`; the only credential Ferry "
                        "reads (no API-key header or query form). Not needed with "
                        "`FERRY_AUTH=none` or on a signed link."
                    ),
                )
            }
        ),
        render_plugins=[
            SwaggerRenderPlugin(
                js_url=f"{SWAGGER_ASSETS}/swagger-ui-bundle.js",
                css_url=f"{SWAGGER_ASSETS}/swagger-ui.css",
                standalone_preset_js_url=f"{SWAGGER_ASSETS}/swagger-ui-standalone-preset.js",
                favicon=f"<link rel='icon' href='{SWAGGER_ASSETS}/favicon-32x32.png'>",
            )
        ],
    )


def _describe_status(status: int) -> str:
    """``Not Found (`not_found`)``: the status and every code the error table gives it."""
    codes = {cls.code for cls in error_classes() if cls.status_code == status}
    codes.add(code_for_status(status))
    listed = ", ".join(f"`{code}`" for code in sorted(codes))
    return f"{HTTPStatus(status).phrase} ({listed})"


def api_errors(*statuses: int) -> dict[int, ResponseSpec]:
    """JSON :class:`ApiError` responses (the ``/api`` routes) for ``statuses``."""
    return {
        status: ResponseSpec(
            data_container=ApiError,
            description=_describe_status(status),
            media_type=MediaType.JSON,
            generate_examples=False,
        )
        for status in statuses
    }


def text_errors(*statuses: int) -> dict[int, ResponseSpec]:
    """Plain-text error responses (routes under ``/files``) for ``statuses``."""
    return {
        status: ResponseSpec(
            data_container=str,
            description=HTTPStatus(status).phrase,
            media_type=_TEXT,
            generate_examples=False,
        )
        for status in statuses
    }


def documented(
    errors: Mapping[int, ResponseSpec],
    *,
    request_body: RequestBody | None = None,
    parameters: Sequence[Parameter] = (),
    responses: Mapping[str, OpenAPIResponse] | None = None,
    uuid_parameters: Sequence[str] = (),
    response_headers: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Keyword arguments of a route decorator: what the route's signature cannot say.

    ``errors`` are the error statuses the route really answers (:func:`api_errors`,
    :func:`text_errors`); no other error status is listed (Litestar would add a generic
    400 to every route with a parameter). ``responses`` adds or replaces other statuses,
    ``response_headers`` names headers (of :data:`_RESPONSE_HEADERS`) a status carries;
    ``uuid_parameters`` names path parameters that are routed as text (so that the tus
    rules, not the router, answer a malformed id) but are UUIDs.
    """
    declared = {*errors, *(int(status) for status in responses or {})}

    @dataclass
    class DocumentedOperation(Operation):
        def __post_init__(self) -> None:
            if request_body is not None:
                self.request_body = request_body
            listed = [
                _as_uuid(parameter)
                if isinstance(parameter, Parameter) and parameter.name in uuid_parameters
                else parameter
                for parameter in self.parameters or []
            ]
            self.parameters = [*listed, *parameters] or None
            merged = {**(self.responses or {}), **(responses or {})}
            for status, names in (response_headers or {}).items():
                response = merged[status]
                if isinstance(response, OpenAPIResponse):
                    response.headers = {**(response.headers or {}), **_headers(*names)}
            self.responses = {
                status: merged[status]
                for status in sorted(merged)
                if int(status) < 400 or int(status) in declared
            }

    return {"responses": dict(errors), "operation_class": DocumentedOperation}


def _as_uuid(parameter: Parameter) -> Parameter:
    parameter.schema = _UUID
    return parameter


RAW_BODY = RequestBody(
    required=True,
    description=(
        "The file's bytes, streamed (any length up to `FERRY_MAX_SIZE`). The content type "
        "is sniffed from the bytes; an optional `Content-Digest`, `Repr-Digest`, `Digest`, "
        "`Content-MD5` or `X-Checksum-Sha256` is checked (422 on a mismatch)."
    ),
    content={"application/octet-stream": OpenAPIMediaType(schema=_BINARY)},
)

FORM_BODY = RequestBody(
    required=True,
    description=(
        "Every part with a file name becomes a file (any field name; other fields are "
        "ignored); all or nothing. A part may carry its own `Content-MD5` or `Digest`."
    ),
    content={
        "multipart/form-data": OpenAPIMediaType(
            schema=Schema(
                type=OpenAPIType.OBJECT,
                properties={"file": Schema(type=OpenAPIType.ARRAY, items=_BINARY)},
            )
        )
    },
)


def _header_parameter(name: str, description: str) -> Parameter:
    return Parameter(name=name, param_in="header", schema=_STRING, description=description)


def _query_parameter(name: str, description: str, schema: Schema = _STRING) -> Parameter:
    return Parameter(name=name, param_in="query", schema=schema, description=description)


SIGNED_LINK_PARAMETERS = [
    _query_parameter(
        "expires",
        "signed link: expiry in unix seconds (from `POST /files/{uid}/link`)",
        Schema(type=OpenAPIType.INTEGER),
    ),
    _query_parameter("sig", "signed link: the signature; with `expires`, no other credential"),
]

DOWNLOAD_PARAMETERS = [
    _header_parameter(
        "Range",
        "`bytes=a-b`, `a-`, `-n`, or several ranges (→ `multipart/byteranges`); malformed "
        "or too many ranges are ignored (200, the whole file)",
    ),
    _header_parameter("If-Range", "the ETag or the exact Last-Modified: ranges only if unchanged"),
    _header_parameter("If-Match", "412 unless the ETag (the SHA-256) matches"),
    _header_parameter("If-None-Match", "304 when the ETag matches"),
    _header_parameter("If-Modified-Since", "304 when not modified since"),
    _header_parameter("If-Unmodified-Since", "412 when modified since"),
    *SIGNED_LINK_PARAMETERS,
]

LINK_PARAMETERS = [
    _query_parameter(
        "expires_in",
        "seconds the link is valid: 10 … 2592000 (30 days); default 86400",
        Schema(type=OpenAPIType.INTEGER, minimum=10, maximum=30 * 24 * 3600, default=86400),
    )
]


_RESPONSE_HEADERS = {
    "ETag": "the file's SHA-256, quoted (a strong validator)",
    "Last-Modified": "when the file was stored",
    "Accept-Ranges": "`bytes`",
    "Content-Length": "bytes in this body",
    "Content-Disposition": "`inline` for media and plain text, else `attachment`",
    "Content-Range": "`bytes a-b/size` (206) or `bytes */size` (416)",
    "Location": "the file's download URL (201) or a short-lived presigned S3 URL (307)",
}
_FILE_HEADERS = ("ETag", "Last-Modified", "Accept-Ranges", "Content-Length", "Content-Disposition")


def _headers(*names: str) -> dict[str, OpenAPIHeader | Reference]:
    return {
        name: OpenAPIHeader(schema=_STRING, description=_RESPONSE_HEADERS[name]) for name in names
    }


def download_responses(*, with_body: bool) -> dict[str, OpenAPIResponse]:
    """The success statuses of a download (``GET``) or of its ``HEAD`` (no bodies)."""
    whole = {"*/*": OpenAPIMediaType(schema=_BINARY)}
    ranges = {**whole, "multipart/byteranges": OpenAPIMediaType(schema=_BINARY)}
    return {
        "200": OpenAPIResponse(
            description="The whole file (no Range, or a Range that is ignored)",
            headers=_headers(*_FILE_HEADERS),
            content=whole if with_body else None,
        ),
        "206": OpenAPIResponse(
            description="The requested range; several ranges as `multipart/byteranges`",
            headers=_headers(*_FILE_HEADERS, "Content-Range"),
            content=ranges if with_body else None,
        ),
        "304": OpenAPIResponse(description="Not modified (If-None-Match, If-Modified-Since)"),
        "307": OpenAPIResponse(
            description="Redirect to the object store (`FERRY_DOWNLOAD_MODE=redirect`)",
            headers=_headers("Location"),
        ),
        "416": OpenAPIResponse(
            description="No requested range overlaps the file",
            headers=_headers("Content-Range"),
            content={_TEXT: OpenAPIMediaType(schema=_STRING)} if with_body else None,
        ),
    }


#: What a download (or its ``HEAD``) may refuse with: a malformed or bad signed link, no
#: credential, no such file, a failed precondition, every slot taken, the database down.
DOWNLOAD_ERRORS = text_errors(400, 401, 403, 404, 412, 503)
