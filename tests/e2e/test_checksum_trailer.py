"""checksum-trailer against a real server: ``Upload-Checksum`` sent after a chunked body."""

from __future__ import annotations

import base64
import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.services import FerryProcess, running_ferry

TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FerryProcess]:
    with running_ferry(tmp_path_factory.mktemp("trailer")) as process:
        yield process


def _chunked_patch(
    server: FerryProcess, path: str, offset: int, pieces: list[bytes], trailer: str
) -> str:
    """Send a chunked PATCH whose checksum arrives as a trailer; return the status line."""
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
        f"Upload-Offset: {offset}\r\nContent-Type: application/offset+octet-stream\r\n"
        "Transfer-Encoding: chunked\r\nTrailer: Upload-Checksum\r\nConnection: close\r\n\r\n"
    ).encode()
    body = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces)
    tail = f"0\r\nUpload-Checksum: {trailer}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + body)
        sock.sendall(tail)
        response = b""
        while chunk := sock.recv(4096):
            response += chunk
    return response.split(b"\r\n", 1)[0].decode()


def _checksum(algorithm: str, data: bytes) -> str:
    return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


def _create(server: FerryProcess, length: int) -> str:
    created = httpx.post(f"{server.url}/files/", headers={**TUS, "Upload-Length": str(length)})
    assert created.status_code == 201
    return "/files/" + created.headers["location"].rsplit("/", 1)[-1]


def _offset(server: FerryProcess, path: str) -> int:
    return int(httpx.head(server.url + path, headers=TUS).headers["upload-offset"])


def test_options_advertises_checksum_trailer(server: FerryProcess) -> None:
    response = httpx.options(f"{server.url}/files/")
    assert "checksum-trailer" in response.headers["tus-extension"].split(",")


def test_matching_trailer_checksum_commits_the_chunk(server: FerryProcess) -> None:
    path = _create(server, 11)
    status = _chunked_patch(
        server, path, 0, [b"hello", b" wor", b"ld"], _checksum("sha256", b"hello world")
    )
    assert status.startswith("HTTP/1.1 204")
    assert _offset(server, path) == 11
    assert httpx.get(server.url + path).content == b"hello world"


def test_mismatching_trailer_checksum_returns_460_and_discards_the_chunk(
    server: FerryProcess,
) -> None:
    path = _create(server, 11)
    status = _chunked_patch(server, path, 0, [b"hello"], _checksum("sha1", b"HELLO"))
    assert status.startswith("HTTP/1.1 460")
    assert _offset(server, path) == 0


def test_unknown_trailer_algorithm_returns_400_and_discards_the_chunk(server: FerryProcess) -> None:
    path = _create(server, 11)
    status = _chunked_patch(server, path, 0, [b"hello"], "whirlpool AAAA")
    assert status.startswith("HTTP/1.1 400")
    assert _offset(server, path) == 0


def test_announced_trailer_that_never_arrives_returns_400(
    server: FerryProcess, tmp_path: Path
) -> None:
    path = _create(server, 5)
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
        "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
        "Transfer-Encoding: chunked\r\nTrailer: Upload-Checksum\r\nConnection: close\r\n\r\n"
        "5\r\nhello\r\n0\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head)
        status = sock.recv(4096).split(b"\r\n", 1)[0].decode()
    assert status.startswith("HTTP/1.1 400")
    assert _offset(server, path) == 0
