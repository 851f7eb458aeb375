"""Simple (non-tus) uploads: PUT with the raw body, POST multipart/form-data, digests."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from litestar.testing import AsyncTestClient

from app.main import FerryApp
from app.settings import Settings
from tests.integration.tus_helpers import (  # noqa: F401 - per-module PostgreSQL database
    count_commits,
    database_url,
    tus_postgres_database,
)
from tests.support.services import FerryProcess, postgres_database, running_ferry, zero_stream

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + os.urandom(200)


def _staging_and_files(settings: Settings) -> tuple[list[Path], list[Path]]:
    staging = list(settings.staging_dir.glob("*")) if settings.staging_dir.exists() else []
    files = (
        [p for p in settings.files_dir.rglob("*") if p.is_file()]
        if settings.files_dir.exists()
        else []
    )
    return staging, files


async def test_put_raw_body_stores_file_and_returns_json(
    client: AsyncTestClient[FerryApp],
) -> None:
    body = b"hello from an old script\n" * 100
    response = await client.put("/api/files/notes.txt", content=body)
    assert response.status_code == 201, response.text
    data = response.json()
    assert data["name"] == "notes.txt"
    assert data["size"] == len(body)
    assert data["sha256"] == hashlib.sha256(body).hexdigest()
    assert data["category"] == "text"
    assert data["content_type"].startswith("text/")
    assert data["url"].endswith(f"/files/{data['uid']}")
    download = await client.get(f"/files/{data['uid']}")
    assert download.content == body


async def test_a_put_of_known_length_is_stored_in_one_transaction(
    client: AsyncTestClient[FerryApp],
) -> None:
    commits = count_commits(client)
    response = await client.put("/api/files/one.bin", content=os.urandom(70_000))
    assert response.status_code == 201
    assert len(commits) == 1, "the upload and its file row are inserted together"


async def test_put_with_matching_digest_headers_is_accepted(
    client: AsyncTestClient[FerryApp],
) -> None:
    body = os.urandom(5000)
    sha = base64.b64encode(hashlib.sha256(body).digest()).decode()
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    for headers in (
        {"Digest": f"sha-256={sha}"},
        {"Content-Digest": f"sha-256=:{sha}:"},
        {"Content-MD5": md5},
        {"X-Checksum-Sha256": hashlib.sha256(body).hexdigest()},
    ):
        response = await client.put("/api/files/blob.bin", content=body, headers=headers)
        assert response.status_code == 201, (headers, response.text)


async def test_put_with_wrong_digest_is_422_and_leaves_nothing(
    client: AsyncTestClient[FerryApp], settings: Settings
) -> None:
    wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    response = await client.put(
        "/api/files/blob.bin", content=os.urandom(3000), headers={"Digest": f"sha-256={wrong}"}
    )
    assert response.status_code == 422
    assert "digest" in response.text
    assert (await client.get("/api/files")).json()["total"] == 0
    assert _staging_and_files(settings) == ([], [])


@pytest.mark.parametrize("name", ["..", "a\\b", "bad\x01name"])
async def test_put_refuses_traversal_in_name(client: AsyncTestClient[FerryApp], name: str) -> None:
    response = await client.put(f"/api/files/{quote(name, safe='')}", content=b"x")
    assert response.status_code in (400, 404, 405)
    assert (await client.get("/api/files")).json()["total"] == 0


async def test_put_empty_body_makes_empty_file(client: AsyncTestClient[FerryApp]) -> None:
    response = await client.put("/api/files/empty", content=b"")
    assert response.status_code == 201, response.text
    assert response.json()["size"] == 0
    assert response.json()["sha256"] == hashlib.sha256(b"").hexdigest()


async def test_multipart_post_stores_every_file_part(client: AsyncTestClient[FerryApp]) -> None:
    text = "Grüße, ferry\n".encode() * 50
    response = await client.post(
        "/api/files",
        files=[
            ("file", ("photo.png", PNG, "application/octet-stream")),
            ("file", ("grüße.txt", text, "text/plain")),
        ],
        data={"comment": "ignored field"},
    )
    assert response.status_code == 201, response.text
    stored = response.json()["files"]
    assert [f["name"] for f in stored] == ["photo.png", "grüße.txt"]
    assert stored[0]["category"] == "images"
    assert stored[0]["content_type"] == "image/png"
    assert stored[1]["sha256"] == hashlib.sha256(text).hexdigest()
    for item in stored:
        assert (await client.get(f"/api/files/{item['uid']}")).status_code == 200


async def test_multipart_without_file_part_is_400(client: AsyncTestClient[FerryApp]) -> None:
    response = await client.post("/api/files", data={"only": "a field"}, files=[])
    assert response.status_code in (400, 415)


async def test_post_without_multipart_is_415(client: AsyncTestClient[FerryApp]) -> None:
    response = await client.post(
        "/api/files", content=b"raw", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415


# ---------------------------------------------------------------- big files, real server

GIB = 1024**3


def _multipart_stream(boundary: str, name: str, total: int) -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    yield from zero_stream(total)
    yield f"\r\n--{boundary}--\r\n".encode()


@pytest.fixture
def big_server(tmp_path: Path) -> Iterator[object]:
    with postgres_database() as url, running_ferry(tmp_path, {"FERRY_DATABASE_URL": url}) as server:
        yield server


def test_multi_gib_put_and_multipart_stream_with_flat_rss(
    big_server: object, tmp_path: Path
) -> None:
    """2 GiB by PUT and 256 MiB by chunked multipart through a real server: peak RSS < 150 MiB.

    A buffered body would show up as RSS above the limit (the multipart part alone is
    larger than it), so the limit proves both paths stream.
    """
    assert isinstance(big_server, FerryProcess)
    expected_zero_sha = hashlib.sha256()
    for block in zero_stream(2 * GIB):
        expected_zero_sha.update(block)
    with httpx.Client(base_url=big_server.url, timeout=300) as http:
        put = http.put(
            "/api/files/zeros.bin",
            content=zero_stream(2 * GIB),
            headers={"Content-Length": str(2 * GIB)},
        )
        assert put.status_code == 201, put.text
        assert put.json()["size"] == 2 * GIB
        assert put.json()["sha256"] == expected_zero_sha.hexdigest()
        pieces = [os.urandom(70_000) for _ in range(5)]
        chunked = http.put("/api/files/chunked.bin", content=iter(pieces))
        assert chunked.status_code == 201, chunked.text
        assert chunked.json()["sha256"] == hashlib.sha256(b"".join(pieces)).hexdigest()
        boundary = "ferry-test-boundary-7d3a"
        posted = http.post(
            "/api/files",
            content=_multipart_stream(boundary, "big.bin", 256 * 1024 * 1024),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert posted.status_code == 201, posted.text
        assert posted.json()["files"][0]["size"] == 256 * 1024 * 1024
    peak_mib = big_server.peak_rss_mib()
    assert peak_mib < 150, f"peak RSS {peak_mib:.0f} MiB"
