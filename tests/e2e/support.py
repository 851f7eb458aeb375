"""Helpers for tests against a real ``ferry serve``: test files, hashes and raw HTTP."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"
MIB = 1024 * 1024


def make_file(path: Path, size: int) -> Path:
    """A file of ``size`` random bytes (random, so no chunk looks like another)."""
    with path.open("wb") as out:
        left = size
        while left:
            block = os.urandom(min(left, MIB))
            out.write(block)
            left -= len(block)
    return path


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(MIB):
            digest.update(block)
    return digest.hexdigest()


def download_sha256(url: str) -> tuple[int, str]:
    """Stream a plain GET of ``url``; return (bytes received, SHA-256)."""
    digest = hashlib.sha256()
    size = 0
    with httpx.stream("GET", url, timeout=60) as response:
        assert response.status_code == 200, response.status_code
        for block in response.iter_bytes():
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def tus_offset(url: str) -> int:
    """The upload's offset from a tus HEAD."""
    response = httpx.head(url, headers=TUS, timeout=10)
    assert response.status_code == 200, response.status_code
    return int(response.headers["upload-offset"])


def create_upload(base_url: str, length: int) -> str:
    """Create an upload and return its absolute URL."""
    response = httpx.post(
        f"{base_url}/files/", headers={**TUS, "Upload-Length": str(length)}, timeout=10
    )
    assert response.status_code == 201, response.text
    return str(httpx.URL(base_url).join(response.headers["location"]))


def send_partial_patch(
    url: str,
    offset: int,
    declared: int,
    body: bytes,
    extra_headers: dict[str, str] | None = None,
) -> None:
    """PATCH announcing ``declared`` bytes, send only ``body``, then drop the connection.

    This is the pulled network cable: the server sees the body end early.
    """
    parts = urlsplit(url)
    request = (
        f"PATCH {parts.path} HTTP/1.1\r\n"
        f"Host: {parts.netloc}\r\n"
        "Tus-Resumable: 1.0.0\r\n"
        f"Content-Type: {OCTETS}\r\n"
        f"Upload-Offset: {offset}\r\n"
        f"Content-Length: {declared}\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in (extra_headers or {}).items())
        + "\r\n"
    ).encode()
    with socket.create_connection((parts.hostname, parts.port or 80), timeout=10) as sock:
        sock.sendall(request)
        sock.sendall(body)
        time.sleep(0.3)  # let the server read what was sent before the connection drops


def wait_for_offset(url: str, expected_at_least: int, timeout: float = 15) -> int:
    """Poll HEAD until the offset reaches ``expected_at_least`` (or time runs out)."""
    deadline = time.monotonic() + timeout
    offset = tus_offset(url)
    while offset < expected_at_least and time.monotonic() < deadline:
        time.sleep(0.1)
        offset = tus_offset(url)
    return offset


def read_staging(data_dir: Path, url: str) -> bytes:
    """Bytes of an upload's staging file."""
    return (data_dir / "staging" / url.rstrip("/").rsplit("/", 1)[-1]).read_bytes()
