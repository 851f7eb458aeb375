"""The API contract: ``/schema`` documents what the server does, and errors keep one shape.

One keyed Ferry (SQLite: neither the schema nor the error shapes depend on the database)
serves the whole module. The schema is fetched as a client would, and every error a route
is made to answer here is looked up in it: status, content type and body shape.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from openapi_spec_validator import validate

from app.auth.keys import ApiKeyStore
from app.db.engine import create_engine, create_session_factory
from app.main import FerryApp, create_app
from app.settings import Settings
from app.storage.sniff import Category
from tests.integration.test_ranges import build_settings

MAX_SIZE = 64 * 1024
Client = AsyncTestClient[FerryApp]


@dataclass
class Ferry:
    """The module's server, a key for it, and a file stored through it."""

    client: Client
    auth: dict[str, str]
    uid: str = ""
    schema: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def keyed_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    tmp = tmp_path_factory.mktemp("contract")
    yield build_settings(
        tmp, f"sqlite+aiosqlite:///{tmp / 'ferry.db'}", auth=["keys"], max_size=MAX_SIZE
    )


@pytest.fixture(scope="module")
async def ferry(keyed_settings: Settings) -> AsyncIterator[Ferry]:
    engine = create_engine(keyed_settings.resolved_database_url)
    try:
        key = await ApiKeyStore(create_session_factory(engine)).create("alice")
    finally:
        await engine.dispose()
    async with AsyncTestClient(
        app=create_app(keyed_settings), base_url="http://ferry.local"
    ) as client:
        server = Ferry(client=client, auth={"Authorization": f"Bearer {key}"})
        stored = await client.put(
            "/api/files/named/notes.txt", content=b"some words\n" * 100, headers=server.auth
        )
        assert stored.status_code == 201, stored.text
        server.uid = stored.json()["uid"]
        server.schema = (await client.get("/schema/openapi.json")).json()
        yield server


def _operation(schema: dict[str, Any], method: str, template: str) -> dict[str, Any]:
    operation: dict[str, Any] = schema["paths"][template][method.lower()]
    return operation


def _parameters(operation: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(item["in"], item["name"]): item for item in operation.get("parameters", [])}


def test_schema_is_a_valid_openapi_document(ferry: Ferry) -> None:
    validate(ferry.schema)


def test_schema_declares_bearer_auth_where_a_credential_is_needed(ferry: Ferry) -> None:
    schema = ferry.schema
    bearer = schema["components"]["securitySchemes"]["bearer"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")
    for template, item in schema["paths"].items():
        for method, operation in item.items():
            security = operation.get("security")
            if template.startswith("/api/"):
                assert security == [{"bearer": []}], (method, template)
            elif template in {"/files/{uid}", "/files/{uid}/info"}:
                # A signed link stands in for the credential: bearer, or nothing at all.
                assert security == [{"bearer": []}, {}], (method, template)
            elif template == "/files/{uid}/link":
                assert security == [{"bearer": []}]
            else:
                assert template.startswith(("/health", "/metrics")), template
                assert security is None, (method, template)


def test_schema_documents_the_bodies_of_simple_uploads(ferry: Ferry) -> None:
    put = _operation(ferry.schema, "PUT", "/api/files/named/{name}")
    raw = put["requestBody"]["content"]
    assert list(raw) == ["application/octet-stream"]
    assert raw["application/octet-stream"]["schema"] == {"type": "string", "format": "binary"}
    assert put["requestBody"]["required"] is True
    assert put["responses"]["201"]["headers"]["Location"]
    form = _operation(ferry.schema, "POST", "/api/files")["requestBody"]["content"]
    assert list(form) == ["multipart/form-data"]
    files = form["multipart/form-data"]["schema"]["properties"]["file"]
    assert files["items"] == {"type": "string", "format": "binary"}


def test_schema_documents_downloads_ranges_and_signed_links(ferry: Ferry) -> None:
    for method, with_body in (("GET", True), ("HEAD", False)):
        download = _operation(ferry.schema, method, "/files/{uid}")
        parameters = _parameters(download)
        assert parameters["path", "uid"]["schema"]["format"] == "uuid"
        for header in ("Range", "If-Range", "If-Match", "If-None-Match"):
            assert ("header", header) in parameters
        assert {("query", "expires"), ("query", "sig")} <= set(parameters)
        responses = download["responses"]
        assert {"200", "206", "304", "416", "404"} <= set(responses)
        assert "Content-Range" in responses["206"]["headers"]
        assert "Content-Range" in responses["416"]["headers"]
        assert ("content" in responses["206"]) is with_body
    info = _operation(ferry.schema, "GET", "/files/{uid}/info")
    assert info["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/FileInfo"
    }
    link = _operation(ferry.schema, "POST", "/files/{uid}/link")
    assert ("query", "expires_in") in _parameters(link)
    assert link["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SignedLink"
    }
    # tus itself is specified by its protocol, not here.
    assert "/files" not in ferry.schema["paths"]
    assert "patch" not in ferry.schema["paths"]["/files/{uid}"]


def test_schema_gives_every_path_one_template_and_typed_uids(ferry: Ferry) -> None:
    shapes: dict[str, str] = {}
    for template in ferry.schema["paths"]:
        shape = re.sub(r"\{[^}]+\}", "{}", template)
        assert shape not in shapes, f"{template} and {shapes[shape]} are one path"
        shapes[shape] = template
    for method in ("GET", "PATCH", "DELETE"):
        operation = _operation(ferry.schema, method, "/api/files/{uid}")
        assert _parameters(operation)["path", "uid"]["schema"]["format"] == "uuid"


def test_schema_lists_category_values_and_metrics_as_text(ferry: Ferry) -> None:
    assert ferry.schema["components"]["schemas"]["Category"]["enum"] == [c.value for c in Category]
    metrics = _operation(ferry.schema, "GET", "/metrics")["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]


async def test_file_records_use_one_set_of_field_names(ferry: Ferry) -> None:
    components = ferry.schema["components"]["schemas"]
    shared = {"uid", "name", "size", "sha256", "content_type", "category", "created", "url"}
    assert shared <= set(components["FileOut"]["properties"])
    assert shared <= set(components["FileInfo"]["properties"])
    info = await ferry.client.get(f"/files/{ferry.uid}/info", headers=ferry.auth)
    record = await ferry.client.get(f"/api/files/{ferry.uid}", headers=ferry.auth)
    assert {name: info.json()[name] for name in shared} == {
        name: record.json()[name] for name in shared
    }


class _AssetLinks(HTMLParser):
    """Every ``src``/``href`` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in {"src", "href"} and value]


async def test_swagger_ui_loads_only_assets_ferry_serves(ferry: Ferry) -> None:
    page = await ferry.client.get("/schema/swagger")
    assert page.status_code == 200
    links = _AssetLinks()
    links.feed(page.text)
    assert len(links.urls) >= 4  # the bundle, the preset, the stylesheet, the icon
    vendored = Path(__file__).parents[2] / "static" / "vendor" / "swagger-ui"
    for url in links.urls:
        assert url.startswith("/static/"), f"{url} is not served by Ferry"
        asset = await ferry.client.get(url)
        assert asset.status_code == 200, url
        assert asset.content == (vendored / url.rsplit("/", 1)[-1]).read_bytes()
    assert "cdn." not in page.text and "://" not in page.text.split("spec:")[0]


@dataclass(frozen=True)
class Case:
    """One request made to fail, and what its answer must be."""

    method: str
    url: str
    template: str
    status: int
    code: str | None = None  # JSON routes: the expected error code
    parameter: str | None = None
    keyed: bool = True
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None


def _patch(uid: str, body: bytes, parameter: str) -> Case:
    """A JSON edit of ``uid`` refused for ``parameter``."""
    return Case(
        "PATCH",
        f"/api/files/{uid}",
        "/api/files/{uid}",
        400,
        "invalid_parameter",
        parameter,
        headers={"Content-Type": "application/json"},
        body=body,
    )


def _put(status: int, code: str, body: bytes = b"x", **headers: str) -> Case:
    """A simple upload refused with ``status`` and ``code``."""
    parameter = "Content-Digest" if code == "invalid_parameter" else None
    template = "/api/files/named/{name}"
    return Case(
        "PUT", "/api/files/named/a.bin", template, status, code, parameter, True, headers, body
    )


def _cases(uid: str) -> list[Case]:
    nobody = str(uuid.uuid4())
    other = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    form = "multipart/form-data; boundary=b"
    no_file = b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n--b--\r\n'
    return [
        Case("GET", "/api/files?category=nope", "/api/files", 400, "invalid_parameter", "category"),
        Case("GET", "/api/files?sort=nope", "/api/files", 400, "invalid_parameter", "sort"),
        Case("GET", "/api/files?limit=0", "/api/files", 400, "invalid_parameter", "limit"),
        Case("GET", "/api/files?uid=x", "/api/files", 400, "invalid_parameter", "uid"),
        Case("GET", "/api/files?sha256=a%00b", "/api/files", 400, "invalid_parameter", "sha256"),
        Case("GET", "/api/files", "/api/files", 401, "unauthorized", keyed=False),
        Case("GET", f"/api/files/{nobody}", "/api/files/{uid}", 404, "not_found"),
        Case("GET", "/api/files/not-a-uid", "/api/files/{uid}", 404, "not_found"),
        Case("DELETE", f"/api/files/{nobody}", "/api/files/{uid}", 404, "not_found"),
        _patch(uid, b'{"colour": "red"}', "colour"),
        _patch(uid, b'{"name": "a\\\\b"}', "name"),
        _patch(uid, b'{"metadata": {"a b": "c"}}', "metadata"),
        _put(400, "invalid_parameter", **{"Content-Digest": "sha-256=:not base64!:"}),
        _put(422, "digest_mismatch", **{"Content-Digest": f"sha-256=:{other}:"}),
        _put(413, "too_large", b"\0" * (MAX_SIZE + 1)),
        Case(
            "PUT", "/api/files/named/a", "/api/files/named/{name}", 401, "unauthorized", keyed=False
        ),
        Case("POST", "/api/files", "/api/files", 415, "unsupported_media_type", body=b"x"),
        Case(
            "POST",
            "/api/files",
            "/api/files",
            400,
            "bad_request",
            headers={"Content-Type": form},
            body=no_file,
        ),
        Case("GET", f"/files/{nobody}", "/files/{uid}", 404),
        Case("HEAD", f"/files/{nobody}", "/files/{uid}", 404),
        Case("GET", f"/files/{uid}", "/files/{uid}", 401, keyed=False),
        Case("GET", f"/files/{uid}", "/files/{uid}", 416, headers={"Range": "bytes=99999-"}),
        Case("GET", f"/files/{uid}", "/files/{uid}", 412, headers={"If-Match": '"other"'}),
        Case("GET", f"/files/{uid}?expires=1&sig=AAAA", "/files/{uid}", 403, keyed=False),
        Case("GET", f"/files/{uid}?expires=soon&sig=AAAA", "/files/{uid}", 400, keyed=False),
        Case("GET", f"/files/{nobody}/info", "/files/{uid}/info", 404),
        Case("POST", f"/files/{uid}/link?expires_in=5", "/files/{uid}/link", 400),
        Case("POST", f"/files/{nobody}/link", "/files/{uid}/link", 404),
    ]


async def test_every_error_is_documented_for_its_route_with_its_body_shape(ferry: Ferry) -> None:
    schema = ferry.schema
    error_schema = schema["components"]["schemas"]["ApiError"]
    codes = set(schema["components"]["schemas"]["ErrorCode"]["enum"])
    for case in _cases(ferry.uid):
        headers = {**(ferry.auth if case.keyed else {}), **case.headers}
        response = await ferry.client.request(
            case.method, case.url, headers=headers, content=case.body
        )
        where = f"{case.method} {case.url}"
        assert response.status_code == case.status, (where, response.text)
        documented = _operation(schema, case.method, case.template)["responses"]
        assert str(case.status) in documented, f"{where}: {case.status} is not in the schema"
        content = documented[str(case.status)].get("content", {})
        media_type = response.headers["content-type"].split(";")[0]
        if case.method == "HEAD":
            continue
        assert media_type in content, (where, media_type, list(content))
        if case.code is None:
            assert media_type == "text/plain", where  # the /files routes keep plain text
            continue
        body = response.json()
        assert set(error_schema["required"]) <= set(body) <= set(error_schema["properties"])
        assert body["error"] in codes
        assert (body["error"], body.get("parameter")) == (case.code, case.parameter), where
        assert body["detail"], where


async def test_json_errors_name_the_allowed_values_and_tus_errors_stay_plain_text(
    ferry: Ferry,
) -> None:
    category = await ferry.client.get("/api/files?category=nope", headers=ferry.auth)
    assert category.json() == {
        "error": "invalid_parameter",
        "detail": "category: must be one of images, media, text, other",
        "parameter": "category",
    }
    unknown_route = await ferry.client.get("/api/nothing", headers=ferry.auth)
    assert unknown_route.status_code == 404
    assert unknown_route.json()["error"] == "not_found"
    method = await ferry.client.request("PUT", "/api/files", headers=ferry.auth)
    assert (method.status_code, method.json()["error"]) == (405, "method_not_allowed")
    tus = await ferry.client.patch(
        f"/files/{uuid.uuid4()}",
        headers={
            **ferry.auth,
            "Tus-Resumable": "1.0.0",
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
        content=b"x",
    )
    assert tus.status_code == 404
    assert tus.headers["content-type"].startswith("text/plain")
    assert not tus.text.startswith("{")


async def test_put_at_the_first_path_still_stores_a_file(ferry: Ferry) -> None:
    stored = await ferry.client.put("/api/files/first.txt", content=b"hi\n", headers=ferry.auth)
    assert stored.status_code == 201, stored.text
    assert stored.json()["name"] == "first.txt"
    assert stored.headers["location"] == stored.json()["url"]
