"""No input makes a 5xx: arbitrary values for every query parameter and header the routes read.

A client-visible failure is a 4xx with a plain message (invariant 6); a 500 means some
value reached code that did not expect it (a Unicode digit through ``int()``, a NUL byte into
PostgreSQL, a malformed URL into ``urlsplit``). Hypothesis sends such values to every route,
on SQLite and on PostgreSQL, with auth off and with API keys (a valid key, or a drawn
``Authorization``), against an app holding a finished file and unfinished uploads.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from app.auth.keys import ApiKeyStore
from app.db.engine import create_engine, create_session_factory, migrate
from app.main import FerryApp, create_app
from app.settings import Settings
from tests.conftest import MakeSettings
from tests.integration.tus_helpers import OCTETS, TUS, path_of

#: Values that broke, or could break, a parser: Unicode digits, NUL, huge numbers, bad URLs.
TRICKY = [
    "",
    " ",
    "0",
    "-1",
    "+1",
    "1e3",
    "9" * 30,
    "\u00b2",
    "\u0661\u0662",
    "\uff11",
    "\x00",
    "a\x00b",
    "1.0.0",
    "partial",
    "final;http://[::1/files/x",
    "final;/files/x /files/y",
    "bytes=0-",
    "bytes=-5",
    "bytes=\u0660-\u0665",
    "bytes=5-1,0-0",
    '"x"',
    'W/"x"',
    "*",
    "Mon, 01 Jan 99999 00:00:00 GMT",
    "Thu, 01 Jan 1970 00:00:00 GMT",
    "sha1 " + base64.b64encode(b"x" * 20).decode(),
    "sha256 !!",
    "filename " + base64.b64encode(b"a.txt").decode(),
    "k \x00",
    "multipart/form-data; boundary=x",
    "multipart/form-data",
    OCTETS,
    "PATCH",
    "DELETE",
    "GET",
    "2026-01-01T00:00:00Z",
    "-created",
    "Bearer ",
    "Bearer ferry_x",
    "Bearer a.b.c",
    "Basic YTpi",
]

#: What a real HTTP parser lets through in a header value: visible ASCII, space and tab.
header_values = st.one_of(
    st.sampled_from([value for value in TRICKY if "\x00" not in value and value.isascii()]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.just("\t"), max_size=60),
)
#: A query string may carry anything percent-encoded (NUL included), but not a lone surrogate.
query_values = st.one_of(
    st.sampled_from(TRICKY), st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
)

CONDITIONALS = ["If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since"]
DOWNLOAD_HEADERS = ["Range", "If-Range", "Tus-Resumable", *CONDITIONALS]
LINK_QUERY = ["expires", "sig"]


@dataclass(frozen=True)
class Route:
    """One route and the inputs it reads."""

    method: str
    path: str
    headers: tuple[str, ...] = ()
    query: tuple[str, ...] = ()
    body: bool = False


def _routes(file_path: str, upload_path: str, doomed_path: str, *, with_auth: bool) -> list[Route]:
    uid = file_path.rsplit("/", 1)[-1]
    routes = _route_table(file_path, upload_path, doomed_path, uid)
    if not with_auth:
        return routes
    # The credential is read on every route (and a link's query instead of it on downloads).
    return [Route(r.method, r.path, (*r.headers, "Authorization"), r.query, r.body) for r in routes]


def _route_table(file_path: str, upload_path: str, doomed_path: str, uid: str) -> list[Route]:
    creation = (
        "Tus-Resumable",
        "Upload-Length",
        "Upload-Defer-Length",
        "Upload-Metadata",
        "Upload-Concat",
        "Upload-Checksum",
        "Content-Type",
        "X-HTTP-Method-Override",
        "Origin",
        "X-Request-Id",
    )
    appending = (
        "Tus-Resumable",
        "Upload-Offset",
        "Upload-Checksum",
        "Upload-Length",
        "Content-Type",
        "X-HTTP-Method-Override",
    )
    digests = ("Content-Digest", "Repr-Digest", "Digest", "Content-MD5", "X-Checksum-Sha256")
    listing = (
        "limit",
        "offset",
        "category",
        "name_prefix",
        "content_type",
        "created_after",
        "created_before",
        "sort",
        "uid",
        "sha256",
    )
    return [
        Route("POST", "/files/", creation, body=True),
        Route("OPTIONS", "/files/", ("Origin", "Access-Control-Request-Method", "Tus-Resumable")),
        Route("HEAD", upload_path, DOWNLOAD_HEADERS, LINK_QUERY),
        Route("PATCH", upload_path, appending, body=True),
        Route("POST", upload_path, appending, body=True),
        Route("DELETE", doomed_path, ("Tus-Resumable", "Upload-Length")),
        Route("GET", file_path, DOWNLOAD_HEADERS, LINK_QUERY),
        Route("HEAD", file_path, DOWNLOAD_HEADERS, LINK_QUERY),
        Route("GET", f"{file_path}/info", (), LINK_QUERY),
        Route("POST", f"{file_path}/link", (), ("expires_in",)),
        Route("GET", "/api/files", (), listing),
        Route("GET", f"/api/files/{uid}"),
        Route("PUT", "/api/files/{name}", digests, body=True),
        Route("POST", "/api/files", ("Content-Type", *digests), body=True),
        Route("GET", "/player/{name}"),
    ]


@st.composite
def requests(draw: st.DrawFn, routes: list[Route]) -> dict[str, Any]:
    """One request: a route, some of its headers and query parameters, maybe a body."""
    route = draw(st.sampled_from(routes))
    headers = {name: draw(header_values) for name in route.headers if draw(st.booleans())}
    query = [(name, draw(query_values)) for name in route.query if draw(st.booleans())]
    path = route.path
    if "{name}" in path:
        path = path.replace("{name}", quote(draw(query_values) or "x", safe=""))
    body = draw(st.binary(max_size=64)) if route.body else b""
    return {
        "method": route.method,
        "url": path,
        "headers": headers,
        "params": query,
        "content": body,
    }


@pytest.mark.parametrize("auth", ["none", "keys"])
def test_no_query_parameter_or_header_value_makes_a_5xx(
    make_settings: MakeSettings, auth: str
) -> None:
    config = make_settings(auth=(auth,), signing_key="property-test-signing-key-0123456789")
    migrate(config)
    credentials: dict[str, str] = {}
    if auth == "keys":
        credentials["Authorization"] = f"Bearer {asyncio.run(_new_key(config))}"
    with TestClient(app=create_app(config), base_url="http://ferry.local") as client:
        client.headers.update(credentials)
        file_path = _tus_upload(client, b"finished file bytes", finished=True)
        upload_path = _tus_upload(client, b"0123456789", finished=False)
        doomed_path = _tus_upload(client, b"doomed", finished=False)
        routes = _routes(file_path, upload_path, doomed_path, with_auth=auth == "keys")

        @settings(
            max_examples=300,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(requests(routes))
        def no_5xx(request: dict[str, Any]) -> None:
            response = client.request(**request)
            assert response.status_code < 500, (request, response.status_code, response.text)
            assert "Traceback" not in response.text

        no_5xx()


async def _new_key(config: Settings) -> str:
    engine = create_engine(config.resolved_database_url)
    try:
        return await ApiKeyStore(create_session_factory(engine)).create("prop")
    finally:
        await engine.dispose()


def _tus_upload(client: TestClient[FerryApp], data: bytes, *, finished: bool) -> str:
    created = client.post("/files/", headers={**TUS, "Upload-Length": str(len(data))})
    assert created.status_code == 201, created.text
    path = path_of(created.headers["location"])
    body = data if finished else data[: len(data) // 2]
    patched = client.patch(
        path, content=body, headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTETS}
    )
    assert patched.status_code == 204, patched.text
    return path
