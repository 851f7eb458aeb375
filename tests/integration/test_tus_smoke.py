"""A first end-to-end pass through the app: create, append, status, download."""

from __future__ import annotations

import hashlib

from litestar.testing import AsyncTestClient

from app.main import FerryApp

TUS = {"Tus-Resumable": "1.0.0"}


async def test_upload_in_two_patches_then_download_returns_same_bytes(
    client: AsyncTestClient[FerryApp],
) -> None:
    payload = b"hello world, this is ferry"
    created = await client.post("/files/", headers={**TUS, "Upload-Length": str(len(payload))})
    assert created.status_code == 201
    url = created.headers["location"]
    first = await client.patch(
        url,
        content=payload[:5],
        headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
    )
    assert first.status_code == 204
    assert first.headers["upload-offset"] == "5"
    second = await client.patch(
        url,
        content=payload[5:],
        headers={**TUS, "Upload-Offset": "5", "Content-Type": "application/offset+octet-stream"},
    )
    assert second.status_code == 204
    assert second.headers["upload-offset"] == str(len(payload))
    status = await client.head(url, headers=TUS)
    assert status.headers["upload-offset"] == str(len(payload))
    download = await client.get(url)
    assert download.status_code == 200
    assert download.content == payload
    assert download.headers["etag"] == f'"{hashlib.sha256(payload).hexdigest()}"'
