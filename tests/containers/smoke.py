"""The smoke test every running Ferry container must pass: upload a file over tus
(creation, then two PATCHes) and another with a simple PUT, then download both with and
without ``Range``, comparing bytes and SHA-256 with what was sent."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from dataclasses import dataclass

import httpx

TUS = {"Tus-Resumable": "1.0.0"}
#: Over 8 MiB, S3's (and Ferry's default) part size, so S3 storage stores a multipart object.
TUS_SIZE = 9 * 1024 * 1024 + 12345
PUT_SIZE = 1024 * 1024 + 321


@dataclass(frozen=True)
class Stored:
    """A file the smoke test uploaded: its id and the SHA-256 of what was sent."""

    uid: str
    sha256: str
    size: int


def wait_until_serving(base_url: str, timeout: float = 90) -> None:
    """Wait until ``/health`` answers 200."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(f"{base_url}/health", timeout=2)
            if last.status_code == 200:
                return
        except httpx.HTTPError as error:
            last = error
        time.sleep(0.5)
    raise AssertionError(f"{base_url}/health did not answer 200: {last!r}")


def upload_and_download(base_url: str, key: str) -> list[Stored]:
    """Upload over tus and with PUT, download both back; the files stored."""
    with httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
    ) as client:
        assert client.get("/api/files", headers={"Authorization": ""}).status_code == 401
        stored = [_tus_upload(client, os.urandom(TUS_SIZE)), _put_upload(client)]
    return stored


def _tus_upload(client: httpx.Client, body: bytes) -> Stored:
    name = base64.b64encode(b"smoke-tus.bin").decode()
    created = client.post(
        "/files/",
        headers={**TUS, "Upload-Length": str(len(body)), "Upload-Metadata": f"filename {name}"},
    )
    assert created.status_code == 201, created.text
    location = created.headers["Location"]
    middle = len(body) // 2
    for start, end in ((0, middle), (middle, len(body))):
        patched = client.patch(
            location,
            content=body[start:end],
            headers={
                **TUS,
                "Upload-Offset": str(start),
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert patched.status_code == 204, patched.text
        assert patched.headers["Upload-Offset"] == str(end)
    uid = location.rstrip("/").rsplit("/", 1)[1]
    return _download(client, location, uid, body)


def _put_upload(client: httpx.Client) -> Stored:
    body = os.urandom(PUT_SIZE)
    put = client.put("/api/files/smoke-put.bin", content=body)
    assert put.status_code == 201, put.text
    record = put.json()
    assert record["sha256"] == hashlib.sha256(body).hexdigest()
    return _download(client, record["url"], record["uid"], body)


def _download(client: httpx.Client, url: str, uid: str, body: bytes) -> Stored:
    """GET the whole file and two ranges of it; check the bytes and the recorded SHA-256."""
    digest = hashlib.sha256(body).hexdigest()
    whole = client.get(url)
    assert whole.status_code == 200
    assert hashlib.sha256(whole.content).hexdigest() == digest
    size = len(body)
    for header, start, end in (
        ("bytes=1000-1999", 1000, 2000),
        (f"bytes=-{size // 3}", size - size // 3, size),
    ):
        part = client.get(url, headers={"Range": header})
        assert part.status_code == 206, (header, part.status_code)
        assert part.headers["Content-Range"] == f"bytes {start}-{end - 1}/{size}"
        assert part.content == body[start:end]
    info = client.get(f"/files/{uid}/info")
    assert info.status_code == 200, info.text
    assert info.json()["sha256"] == digest
    return Stored(uid=uid, sha256=digest, size=size)
