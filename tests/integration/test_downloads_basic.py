"""The upload URL as a plain HTTP file URL: GET and HEAD without Tus-Resumable."""

from __future__ import annotations

import hashlib

from app.settings import Settings
from tests.integration.tus_helpers import (  # noqa: F401 - fixtures for this module
    Client,
    b64,
    create,
    database_url,
    patch,
    tus_postgres_database,
    upload,
)

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4


async def test_get_of_a_completed_upload_serves_the_file_with_its_headers(
    client: Client,
) -> None:
    path = await upload(client, PNG, Upload_Metadata=f"filename {b64('holiday.png')}")
    response = await client.get(path)
    assert response.status_code == 200
    assert response.content == PNG
    assert response.headers["content-length"] == str(len(PNG))
    assert response.headers["etag"] == f'"{hashlib.sha256(PNG).hexdigest()}"'
    assert response.headers["content-type"].startswith("image/png")
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("inline;")
    assert 'filename="holiday.png"' in disposition


async def test_completed_files_are_filed_by_sniffed_category_under_their_uid(
    client: Client, settings: Settings
) -> None:
    # The client's claimed type does not matter: the bytes decide the folder.
    image = await upload(client, PNG, Upload_Metadata=f"filetype {b64('text/plain')}")
    text = await upload(client, b"just some words\n")
    other = await upload(client, bytes(range(256)) * 8)
    for path, category in ((image, "images"), (text, "text"), (other, "other")):
        uid = path.rsplit("/", 1)[-1]
        assert (settings.files_dir / category / uid).is_file(), category
        assert not (settings.staging_dir / uid).exists()


async def test_plain_head_mirrors_get_headers_without_a_body(client: Client) -> None:
    path = await upload(client, b"some text content\n")
    get = await client.get(path)
    plain_head = await client.head(path)
    assert plain_head.status_code == 200
    assert plain_head.content == b""
    for name in ("content-length", "etag", "content-type", "content-disposition"):
        assert plain_head.headers[name] == get.headers[name], name
    assert "upload-offset" not in plain_head.headers


async def test_hostile_file_name_gives_a_safe_content_disposition(client: Client) -> None:
    hostile = '../../etc/"evil"\r\nSet-Cookie: a=b.html'
    path = await upload(client, b"<html>x</html>", Upload_Metadata=f"filename {b64(hostile)}")
    response = await client.get(path)
    disposition = response.headers["content-disposition"]
    assert "set-cookie" not in {k.lower() for k in response.headers}
    assert "\r" not in disposition and "\n" not in disposition
    fallback = disposition.split('filename="', 1)[1].split('"', 1)[0]
    assert "/" not in fallback and "\\" not in fallback
    assert "filename*=UTF-8''" in disposition


async def test_incomplete_upload_is_not_served(client: Client) -> None:
    path = await create(client, 10)
    await patch(client, path, 0, b"abc")
    assert (await client.get(path)).status_code == 404
    assert (await client.head(path)).status_code == 404
