"""Signed, expiring links: they stream with ranges and refuse anything tampered or expired."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from litestar.testing import AsyncTestClient

from app.errors import BadRequest
from app.http.links import sign, verify_signed_request
from app.main import create_app
from app.settings import Settings
from tests.integration.test_ranges import build_settings
from tests.integration.tus_helpers import Client, b64, upload
from tests.support.services import postgres_database

SIGNING_KEY = "signed-links-test-key-0123456789abcdef"
DATA = bytes(range(256)) * 64


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def link_settings(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """A known signing key, so tests can make links the server did not hand out; one app
    per module and database (every test makes its own files)."""
    tmp = tmp_path_factory.mktemp("links")
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp / 'ferry.db'}"
        yield build_settings(tmp, url, signing_key=SIGNING_KEY)
        return
    with postgres_database() as url:
        yield build_settings(tmp, url, signing_key=SIGNING_KEY)


@pytest.fixture(scope="module")
async def client(link_settings: Settings) -> AsyncIterator[Client]:
    """The app for the whole module, lifespan included."""
    async with AsyncTestClient(
        app=create_app(link_settings), base_url="http://ferry.local"
    ) as test_client:
        yield test_client


async def _file(client: Client) -> tuple[str, str]:
    path = await upload(client, DATA, Upload_Metadata=f"filename {b64('song.bin')}")
    return path, path.rsplit("/", 1)[-1]


def _path(url: str) -> str:
    parsed = httpx.URL(url)
    return f"{parsed.path}?{parsed.query.decode()}"


async def test_link_endpoint_returns_url_and_expiry(client: Client) -> None:
    _, uid = await _file(client)
    before = int(time.time())
    response = await client.post(f"/files/{uid}/link", params={"expires_in": "600"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"url", "expires", "expires_at"}
    assert before + 600 <= body["expires"] <= int(time.time()) + 600
    assert body["expires_at"].endswith("Z")
    assert re.fullmatch(
        rf"http://ferry\.local/files/{uid}\?expires={body['expires']}&sig=[A-Za-z0-9_-]{{43}}",
        body["url"],
    )


async def test_signed_link_streams_with_ranges_and_head(client: Client) -> None:
    _, uid = await _file(client)
    url = (await client.post(f"/files/{uid}/link")).json()["url"]
    full = await client.get(_path(url))
    assert full.status_code == 200
    assert full.content == DATA
    ranged = await client.get(_path(url), headers={"Range": "bytes=100-199"})
    assert ranged.status_code == 206
    assert ranged.content == DATA[100:200]
    head = await client.head(_path(url))
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(DATA))


async def test_expired_link_is_403(client: Client) -> None:
    _, uid = await _file(client)
    expired = int(time.time()) - 1
    signature = sign(SIGNING_KEY.encode(), uid, expired)
    response = await client.get(f"/files/{uid}?expires={expired}&sig={signature}")
    assert response.status_code == 403
    assert (await client.head(f"/files/{uid}?expires={expired}&sig={signature}")).status_code == 403


async def test_changed_truncated_or_borrowed_signature_is_403(client: Client) -> None:
    _, uid = await _file(client)
    _, other_uid = await _file(client)
    url = _path((await client.post(f"/files/{uid}/link")).json()["url"])
    signature = url.rsplit("sig=", 1)[1]
    expires = re.search(r"expires=(\d+)", url)
    assert expires is not None
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    tampered = [
        url.replace(signature, flipped),
        url.replace(signature, signature[:-1]),
        url.replace(signature, ""),
        url.replace(f"expires={expires[1]}", f"expires={int(expires[1]) + 1}"),
        url.replace(uid, other_uid),  # a signature opens one file only
        f"/files/{uid}?sig={signature}",  # no expiry
        f"/files/{uid}?expires={expires[1]}",  # no signature
    ]
    for candidate in tampered:
        response = await client.get(candidate)
        assert response.status_code == 403, candidate


async def test_link_for_a_missing_file_is_404_and_bad_expiry_is_400(client: Client) -> None:
    assert (await client.post(f"/files/{uuid.uuid4()}/link")).status_code == 404
    _, uid = await _file(client)
    for value in ("-5", "abc", "1", str(400 * 24 * 3600)):
        response = await client.post(f"/files/{uid}/link", params={"expires_in": value})
        assert response.status_code == 400, value


def test_verify_signed_request_is_constant_shape_and_strict() -> None:
    key = b"k" * 32
    uid = str(uuid.uuid4())
    expires = 2_000_000_000
    signature = sign(key, uid, expires)
    good = {"expires": str(expires), "sig": signature}
    assert verify_signed_request(good, uid, key, now=expires - 10)
    assert verify_signed_request(good, uid.upper(), key, now=expires - 10)  # same UUID
    assert not verify_signed_request(good, uid, key, now=expires + 1)
    assert not verify_signed_request(good, uid, b"other key", now=expires - 10)
    assert not verify_signed_request({**good, "sig": signature + "="}, uid, key, now=0)
    for malformed in ("1e9", "\u00b2", "\u0661\u0662", " "):
        with pytest.raises(BadRequest, match="expires"):
            verify_signed_request({**good, "expires": malformed}, uid, key, now=0)
    assert not verify_signed_request({**good, "sig": "é" * 43}, uid, key, now=0)
    assert not verify_signed_request(good, "not-a-uuid", key, now=0)
    assert verify_signed_request(
        {"expires": [str(expires)], "sig": [signature]}, uid, key, now=0
    )  # parse_qs-style lists


async def test_info_endpoint_describes_the_file_with_the_file_apis_field_names(
    client: Client,
) -> None:
    _, uid = await _file(client)
    response = await client.get(f"/files/{uid}/info")
    assert response.status_code == 200
    info = response.json()
    assert info["name"] == "song.bin"
    assert info["size"] == len(DATA)
    assert len(info["sha256"]) == 64
    assert info["url"] == f"http://ferry.local/files/{uid}"
    assert info["player_url"] == f"http://ferry.local/player/{uid}"
    # The same facts under the same names as the file API's record of the file.
    record = (await client.get(f"/api/files/{uid}")).json()
    shared = ("uid", "name", "size", "sha256", "content_type", "category", "created", "url")
    assert {name: info[name] for name in shared} == {name: record[name] for name in shared}
    assert not {"id", "created_at", "download_url"} & set(info)
    assert (await client.get(f"/files/{uuid.uuid4()}/info")).status_code == 404


async def test_pages_and_assets_are_served_with_a_strict_policy(client: Client) -> None:
    _, uid = await _file(client)
    for path in ("/", f"/player/{uid}"):
        page = await client.get(path)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert "https://" not in page.text  # no CDN
    script = await client.get("/static/vendor/tus.min.js")
    assert script.status_code == 200
    assert script.headers["x-content-type-options"] == "nosniff"
    assert (await client.get("/static/vendor/tus-js-client.LICENSE")).status_code == 200
    assert (await client.get("/static/../app/main.py")).status_code == 404


async def test_player_page_for_an_id_that_names_no_finished_file_is_an_html_404(
    client: Client,
) -> None:
    unfinished = await client.post(
        "/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "10"}
    )
    unfinished_uid = unfinished.headers["Location"].rsplit("/", 1)[-1]
    for uid in ("not-a-uid", str(uuid.uuid4()), str(uuid.uuid4()).upper(), unfinished_uid):
        page = await client.get(f"/player/{uid}")
        assert page.status_code == 404, uid
        assert page.headers["content-type"].startswith("text/html"), uid
        assert "<h2>No such file</h2>" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]


@pytest.mark.parametrize("expires", ["%C2%B2", "%D9%A3", "1%C2%B2", "%EF%BC%91"])
async def test_signed_link_with_a_non_ascii_digit_in_expires_answers_400(
    client: Client, expires: str
) -> None:
    _, uid = await _file(client)
    for method in ("GET", "HEAD"):
        response = await client.request(method, f"/files/{uid}?expires={expires}&sig=abc")
        assert response.status_code == 400, (method, response.text)
    assert "expires" in (await client.get(f"/files/{uid}?expires={expires}&sig=abc")).text


@pytest.mark.parametrize("seconds", ["%C2%B2", "%D9%A3%D9%A3", "1%EF%BC%90"])
async def test_link_expires_in_with_a_non_ascii_digit_answers_400(
    client: Client, seconds: str
) -> None:
    _, uid = await _file(client)
    response = await client.post(f"/files/{uid}/link?expires_in={seconds}")
    assert response.status_code == 400, response.text
    assert "expires_in" in response.text
