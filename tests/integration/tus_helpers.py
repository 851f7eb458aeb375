"""Small helpers shared by the tus integration tests: headers and request shortcuts."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
from litestar.testing import AsyncTestClient

from app.main import FerryApp

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"
Client = AsyncTestClient[FerryApp]


def b64(text: str | bytes) -> str:
    """Base64 of a metadata value."""
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def path_of(location: str) -> str:
    """The path part of a ``Location`` (the test client wants paths)."""
    return httpx.URL(location).path


def upload_id_of(location: str) -> str:
    """The upload id at the end of an upload URL."""
    return path_of(location).rstrip("/").rsplit("/", 1)[-1]


async def create(client: Client, length: int | None, **headers: str) -> str:
    """Create an upload and return its path."""
    extra: dict[str, str] = {**TUS}
    if length is not None:
        extra["Upload-Length"] = str(length)
    extra.update({k.replace("_", "-"): v for k, v in headers.items()})
    response = await client.post("/files/", headers=extra)
    assert response.status_code == 201, response.text
    return path_of(response.headers["location"])


async def patch(
    client: Client, path: str, offset: int, data: bytes, **headers: str
) -> httpx.Response:
    """A tus PATCH of ``data`` at ``offset``."""
    extra: dict[str, Any] = {**TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS}
    extra.update({k.replace("_", "-"): v for k, v in headers.items()})
    return await client.patch(path, content=data, headers=extra)


async def head(client: Client, path: str) -> httpx.Response:
    """A tus HEAD."""
    return await client.head(path, headers=TUS)


async def upload(client: Client, data: bytes, **headers: str) -> str:
    """Create and fill an upload in one PATCH; return its path."""
    path = await create(client, len(data), **headers)
    if data:
        response = await patch(client, path, 0, data)
        assert response.status_code == 204, response.text
    return path


def staging_file(data_dir: Path, path: str) -> Path:
    """The staging file that holds an upload's bytes."""
    return data_dir / "staging" / upload_id_of(path)
