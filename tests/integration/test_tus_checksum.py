"""tus checksum extension: verified chunks are kept, mismatching ones discarded whole."""

from __future__ import annotations

import base64
import hashlib

import google_crc32c

from app.settings import Settings
from tests.integration.tus_helpers import (  # noqa: F401 - fixtures for this module
    OCTETS,
    TUS,
    Client,
    create,
    database_url,
    head,
    patch,
    path_of,
    staged_bytes,
    staging_file,
    tus_postgres_database,
)


def checksum_header(algorithm: str, data: bytes) -> str:
    if algorithm == "crc32c":
        digest = google_crc32c.value(data).to_bytes(4, "big")
    else:
        digest = hashlib.new(algorithm, data).digest()
    return f"{algorithm} {base64.b64encode(digest).decode()}"


async def test_chunks_with_matching_checksum_are_stored_for_every_algorithm(
    client: Client,
) -> None:
    chunks = [b"first chunk|", b"second chunk|", b"third chunk|", b"fourth chunk"]
    total = b"".join(chunks)
    path = await create(client, len(total))
    offset = 0
    for algorithm, chunk in zip(("sha1", "sha256", "md5", "crc32c"), chunks, strict=True):
        response = await patch(
            client, path, offset, chunk, Upload_Checksum=checksum_header(algorithm, chunk)
        )
        assert response.status_code == 204, algorithm
        offset += len(chunk)
        assert response.headers["upload-offset"] == str(offset)
    assert (await client.get(path)).content == total


async def test_checksum_mismatch_is_460_and_discards_the_chunk(
    client: Client, settings: Settings
) -> None:
    path = await create(client, 20)
    assert (await patch(client, path, 0, b"0123456789")).status_code == 204
    for algorithm in ("sha1", "sha256", "md5", "crc32c"):
        wrong = checksum_header(algorithm, b"something else")
        response = await patch(client, path, 10, b"abcdefghij", Upload_Checksum=wrong)
        assert response.status_code == 460, algorithm
        assert response.headers["tus-resumable"] == "1.0.0"
        assert (await head(client, path)).headers["upload-offset"] == "10"
        assert staged_bytes(settings.data_dir, path) == b"0123456789"
    good = checksum_header("sha256", b"abcdefghij")
    assert (await patch(client, path, 10, b"abcdefghij", Upload_Checksum=good)).status_code == 204
    assert (await client.get(path)).content == b"0123456789abcdefghij"


async def test_unknown_or_malformed_checksum_is_400_and_stores_nothing(
    client: Client, settings: Settings
) -> None:
    path = await create(client, 5)
    for header in (
        "sha512 AAAA",
        "SHA256 " + checksum_header("sha256", b"hello")[7:],
        "sha1",
        "md5 !!",
    ):
        response = await patch(client, path, 0, b"hello", Upload_Checksum=header)
        assert response.status_code == 400, header
    assert (await head(client, path)).headers["upload-offset"] == "0"
    assert staged_bytes(settings.data_dir, path) == b""


async def test_creation_with_upload_checks_the_checksum_of_the_body(client: Client) -> None:
    bad = await client.post(
        "/files/",
        content=b"hello",
        headers={
            **TUS,
            "Upload-Length": "5",
            "Content-Type": OCTETS,
            "Upload-Checksum": checksum_header("md5", b"jello"),
        },
    )
    assert bad.status_code == 460
    assert (await head(client, path_of(bad.headers["location"]))).headers["upload-offset"] == "0"
    good = await client.post(
        "/files/",
        content=b"hello",
        headers={
            **TUS,
            "Upload-Length": "5",
            "Content-Type": OCTETS,
            "Upload-Checksum": checksum_header("md5", b"hello"),
        },
    )
    assert good.status_code == 201
    assert good.headers["upload-offset"] == "5"
