"""The byte quota holds after creation too: lengths that become known, bytes that arrive
without a known length (deferred tus uploads, chunked PUTs, multipart forms), completed
partial uploads and final uploads all count (issue 14).

Requests go through litestar's synchronous test client, which sends a generator body
without ``Content-Length``: the server then learns the size only as the bytes arrive.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from app.db.engine import migrate
from app.main import FerryApp, create_app
from app.settings import Settings
from tests.conftest import MakeSettings
from tests.integration.test_ops import _with_owner
from tests.integration.tus_helpers import (  # noqa: F401 - per-module PostgreSQL database
    OCTETS,
    TUS,
    database_url,
    path_of,
    tus_postgres_database,
)

KIB = 1024
MIB = 1024 * KIB
ALICE = {"X-Test-Owner": "alice"}
Client = TestClient[FerryApp]


@pytest.fixture
def quota_settings(make_settings: MakeSettings) -> Settings:
    """A 1 MiB byte quota per owner."""
    settings = make_settings(quota_bytes=MIB)
    migrate(settings)
    return settings


@pytest.fixture
def client(quota_settings: Settings) -> Iterator[Client]:
    """The app in-process; the owner comes from ``X-Test-Owner`` (auth is off)."""
    app = _with_owner(create_app(quota_settings))
    with TestClient(app=app, base_url="http://ferry.local") as test_client:
        yield test_client


def chunked(data: bytes) -> Iterator[bytes]:
    """A body without ``Content-Length`` (sent with ``Transfer-Encoding: chunked``)."""
    yield data


def create(client: Client, **headers: str) -> Any:
    return client.post("/files/", headers={**TUS, **ALICE, **headers})


def create_deferred(client: Client, **headers: str) -> str:
    response = create(client, **{"Upload-Defer-Length": "1", **headers})
    assert response.status_code == 201, response.text
    return path_of(response.headers["location"])


def patch(client: Client, path: str, offset: int, body: Any, **headers: str) -> Any:
    return client.patch(
        path,
        content=body,
        headers={**TUS, **ALICE, "Upload-Offset": str(offset), "Content-Type": OCTETS, **headers},
    )


def offset_of(client: Client, path: str) -> int:
    return int(client.head(path, headers={**TUS, **ALICE}).headers["upload-offset"])


def stored_files(settings: Settings) -> list[Path]:
    root = settings.files_dir
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def staged_files(settings: Settings) -> list[Path]:
    root = settings.staging_dir
    return [p for p in root.iterdir() if p.is_file()] if root.exists() else []


def refused_by_quota(response: Any) -> bool:
    return response.status_code == 413 and "FERRY_QUOTA_BYTES" in response.text


# ---------------------------------------------------------------- deferred lengths


def test_deferred_length_upload_cannot_append_past_the_byte_quota(client: Client) -> None:
    path = create_deferred(client)
    # Announced too large: refused before a byte is read.
    assert refused_by_quota(patch(client, path, 0, b"x" * (3 * MIB)))
    # Not announced: cut as the bytes arrive; nothing of the refused body is acknowledged.
    assert refused_by_quota(patch(client, path, 0, chunked(b"x" * (3 * MIB))))
    assert offset_of(client, path) == 0
    assert patch(client, path, 0, chunked(b"a" * (768 * KIB))).status_code == 204
    assert refused_by_quota(patch(client, path, 768 * KIB, chunked(b"b" * (512 * KIB))))
    assert offset_of(client, path) == 768 * KIB
    # What is left fits.
    done = patch(client, path, 768 * KIB, b"c" * (256 * KIB), **{"Upload-Length": str(MIB)})
    assert done.status_code == 204
    assert done.headers["upload-offset"] == str(MIB)
    assert refused_by_quota(create(client, **{"Upload-Length": "1"}))


def test_creation_with_upload_of_deferred_length_past_the_byte_quota_keeps_nothing(
    client: Client,
) -> None:
    response = client.post(
        "/files/",
        content=chunked(b"x" * (3 * MIB)),
        headers={**TUS, **ALICE, "Upload-Defer-Length": "1", "Content-Type": OCTETS},
    )
    assert refused_by_quota(response)
    # The upload exists (its Location is given, as for any refused creation-with-upload body).
    assert offset_of(client, path_of(response.headers["location"])) == 0


def test_declaring_a_deferred_length_reserves_it_against_the_byte_quota(client: Client) -> None:
    path = create_deferred(client)
    assert patch(client, path, 0, b"a" * (100 * KIB)).status_code == 204
    too_long = patch(client, path, 100 * KIB, b"", **{"Upload-Length": str(3 * MIB)})
    assert refused_by_quota(too_long)
    status = client.head(path, headers={**TUS, **ALICE})
    assert status.headers.get("upload-defer-length") == "1"  # the length stays unknown
    declared = patch(client, path, 100 * KIB, b"", **{"Upload-Length": str(768 * KIB)})
    assert declared.status_code == 204
    # The declared length is reserved: another deferred upload has only the rest.
    other = create_deferred(client)
    assert refused_by_quota(patch(client, other, 0, chunked(b"x" * (300 * KIB))))
    assert patch(client, other, 0, chunked(b"x" * (256 * KIB))).status_code == 204


def test_another_owner_appending_is_not_limited_by_alices_quota(client: Client) -> None:
    path = create_deferred(client)
    assert patch(client, path, 0, chunked(b"a" * MIB)).status_code == 204
    bobs = create_deferred(client, **{"X-Test-Owner": "bob"})
    response = patch(client, bobs, 0, chunked(b"b" * MIB), **{"X-Test-Owner": "bob"})
    assert response.status_code == 204


# ---------------------------------------------------------------- simple uploads


def test_chunked_put_past_the_byte_quota_is_refused_and_leaves_nothing(
    client: Client, quota_settings: Settings
) -> None:
    response = client.put("/api/files/big.bin", content=chunked(b"x" * (3 * MIB)), headers=ALICE)
    assert refused_by_quota(response)
    assert stored_files(quota_settings) == []
    assert staged_files(quota_settings) == []
    fits = client.put("/api/files/half.bin", content=chunked(b"y" * (512 * KIB)), headers=ALICE)
    assert fits.status_code == 201, fits.text
    again = client.put("/api/files/more.bin", content=chunked(b"z" * (600 * KIB)), headers=ALICE)
    assert refused_by_quota(again)
    assert len(stored_files(quota_settings)) == 1


def _form(*parts: tuple[str, bytes]) -> tuple[bytes, dict[str, str]]:
    boundary = "ferry-quota-boundary"
    body = b"".join(
        b"--" + boundary.encode() + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="' + name.encode() + b'"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
        for name, data in parts
    )
    body += b"--" + boundary.encode() + b"--\r\n"
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}", **ALICE}


def test_multipart_post_past_the_byte_quota_is_refused_whole(
    client: Client, quota_settings: Settings
) -> None:
    for sizes in ([3 * MIB], [768 * KIB, 768 * KIB]):
        body, headers = _form(*((f"part{n}.bin", b"f" * size) for n, size in enumerate(sizes)))
        response = client.post("/api/files", content=body, headers=headers)
        assert refused_by_quota(response), sizes
        assert stored_files(quota_settings) == []
        assert staged_files(quota_settings) == []
    body, headers = _form(("a.bin", b"a" * (400 * KIB)), ("b.bin", b"b" * (400 * KIB)))
    assert client.post("/api/files", content=body, headers=headers).status_code == 201


# ---------------------------------------------------------------- concatenation


def _partial(client: Client, data: bytes) -> str:
    response = create(client, **{"Upload-Length": str(len(data)), "Upload-Concat": "partial"})
    assert response.status_code == 201, response.text
    path = path_of(response.headers["location"])
    if data:
        assert patch(client, path, 0, data).status_code == 204
    return path


def _final(client: Client, *parts: str) -> Any:
    return create(client, **{"Upload-Concat": "final;" + " ".join(parts)})


def test_completed_partial_uploads_count_against_the_byte_quota(client: Client) -> None:
    first = _partial(client, b"a" * (512 * KIB))
    _partial(client, b"b" * (512 * KIB))
    refused = create(client, **{"Upload-Length": str(512 * KIB), "Upload-Concat": "partial"})
    assert refused_by_quota(refused)
    # A partial holds its bytes until it expires or is terminated.
    assert client.delete(first, headers={**TUS, **ALICE}).status_code == 204
    _partial(client, b"c" * (512 * KIB))


def test_final_upload_counts_its_length_against_the_byte_quota(
    client: Client, quota_settings: Settings
) -> None:
    part = _partial(client, b"p" * (300 * KIB))
    first = _final(client, part)
    assert first.status_code == 201, first.text
    # 300 KiB partial + 300 KiB file + 300 KiB more fits; one more final does not.
    assert _final(client, part).status_code == 201
    assert refused_by_quota(_final(client, part))
    assert len(stored_files(quota_settings)) == 2


def test_final_upload_naming_a_partial_twice_is_refused_with_400(
    client: Client, quota_settings: Settings
) -> None:
    part = _partial(client, b"p" * (64 * KIB))
    # The amplification: 64 KiB named 1024 times under a 1 MiB quota (1024 is also
    # past FERRY_MAX_CONCAT_PARTS), or just 16 times.
    assert _final(client, *([part] * 1024)).status_code == 400
    sixteen = _final(client, *([part] * 16))
    assert sixteen.status_code == 400
    assert "twice" in sixteen.text
    other = _partial(client, b"q" * (64 * KIB))
    assert _final(client, part, other, part).status_code == 400
    assert stored_files(quota_settings) == []
    assert _final(client, part, other).status_code == 201


def test_final_upload_naming_more_partials_than_allowed_is_refused_naming_the_setting(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(max_concat_parts=3)
    migrate(settings)
    with TestClient(app=_with_owner(create_app(settings)), base_url="http://ferry.local") as http:
        parts = [_partial(http, bytes([n])) for n in range(4)]
        response = _final(http, *parts)
        assert response.status_code == 400
        assert "FERRY_MAX_CONCAT_PARTS" in response.text
        assert _final(http, *parts[:3]).status_code == 201
        # The 429 KiB header: one 1-byte partial named 10,000 times.
        many = _final(http, *([parts[0]] * 10_000))
        assert many.status_code == 400
        assert "FERRY_MAX_CONCAT_PARTS" in many.text


def test_final_of_deferred_partials_is_counted_once_its_length_is_known(
    client: Client, quota_settings: Settings
) -> None:
    first = create_deferred(client, **{"Upload-Concat": "partial"})
    second = create_deferred(client, **{"Upload-Concat": "partial"})
    final = _final(client, first, second)
    assert final.status_code == 201, final.text
    final_path = path_of(final.headers["location"])
    # 2 x 300 KiB of partials, then the final's 600 KiB: 1.2 MiB > 1 MiB.
    for path in (first, second):
        filled = patch(client, path, 0, b"d" * (300 * KIB), **{"Upload-Length": str(300 * KIB)})
        assert filled.status_code == 204
    status = client.head(final_path, headers={**TUS, **ALICE})
    assert status.status_code == 413
    assert "upload-offset" not in status.headers
    assert client.get(final_path, headers=ALICE).status_code == 404
    assert stored_files(quota_settings) == []


def test_final_of_deferred_partials_within_the_quota_is_assembled(client: Client) -> None:
    first = create_deferred(client, **{"Upload-Concat": "partial"})
    final = _final(client, first)
    final_path = path_of(final.headers["location"])
    filled = patch(client, first, 0, b"e" * (400 * KIB), **{"Upload-Length": str(400 * KIB)})
    assert filled.status_code == 204
    status = client.head(final_path, headers={**TUS, **ALICE})
    assert status.status_code == 200
    assert status.headers["upload-offset"] == str(400 * KIB)
    download = client.get(final_path, headers=ALICE)
    assert download.status_code == 200
    assert download.content == b"e" * (400 * KIB)
