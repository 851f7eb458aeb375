"""The browser side: the upload page, the player page, their assets and the file summary.

Pages are static HTML from ``static/`` (no templating, no CDN: the one third-party script,
tus-js-client, is vendored in ``static/vendor/``). They talk to Ferry only through its
public endpoints: tus at ``/files/``, ``GET /files/{uid}/info`` and
``POST /files/{uid}/link``. A strict Content-Security-Policy allows nothing but our own
origin, so no inline script or style exists in them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

from app.errors import NotFound
from app.http.links import create_signed_link
from app.http.openapi import (
    BEARER_OR_SIGNED_LINK,
    SIGNED_LINK_PARAMETERS,
    documented,
    text_errors,
)
from app.http.schemas import FileInfo, file_info_out
from app.http.tus_protocol import parse_upload_id
from app.uploads.service import UploadService

#: ``static/`` at the project root (the package is installed in editable mode).
STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def _page(name: str, status_code: int = 200) -> Response[bytes]:
    body = await anyio.Path(STATIC_DIR / name).read_bytes()
    return Response(
        body,
        status_code=status_code,
        media_type="text/html; charset=utf-8",
        headers=PAGE_HEADERS,
    )


@get("/", include_in_schema=False)
async def upload_page() -> Response[bytes]:
    """Drag-and-drop resumable uploads through tus."""
    return await _page("upload.html")


@get("/player/{uid:str}", include_in_schema=False)
async def player_page(
    uid: FromPath[str], uploads: NamedDependency[UploadService]
) -> Response[bytes]:
    """Plays, shows or offers one file, with its checksum and a copyable signed link.

    A person follows this link in a browser, so an id that names no finished file (malformed,
    unknown, an unfinished upload) is answered with an HTML 404 page, not the API's plain
    text. The page is public (a browser cannot send the key on navigation): it says only
    whether a file has this random 128-bit id; its name, facts and bytes still need the key
    or a signed link.
    """
    try:
        await uploads.get_file(parse_upload_id(uid))
    except NotFound:
        return await _page("not-found.html", status_code=404)
    return await _page("player.html")


@get(
    "/files/{uid:str}/info",
    summary="A file's facts (the player page's)",
    tags=["downloads"],
    security=BEARER_OR_SIGNED_LINK,
    **documented(
        text_errors(400, 401, 403, 404, 503),
        parameters=SIGNED_LINK_PARAMETERS,
        uuid_parameters=["uid"],
    ),
)
async def file_info(
    request: Request[Any, Any, Any], uid: FromPath[str], uploads: NamedDependency[UploadService]
) -> FileInfo:
    """A completed file's name, size, type and SHA-256 (the caller must be allowed to read it)."""
    from app.http.tus import request_owner

    try:
        stored = await uploads.get_file(parse_upload_id(uid), request_owner(request))
    except NotFound:
        raise NotFound("no such file (or its upload is not complete)") from None
    return file_info_out(stored, str(request.base_url))


def _harden_static(response: Response[Any]) -> Response[Any]:
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def web_route_handlers() -> list[ControllerRouterHandler]:
    """Routes of this module, for ``create_app``."""
    return [
        upload_page,
        player_page,
        file_info,
        create_signed_link,
        create_static_files_router(
            path="/static", directories=[STATIC_DIR], after_request=_harden_static
        ),
    ]
