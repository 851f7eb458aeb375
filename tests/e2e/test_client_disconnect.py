"""A client that drops the connection mid-PATCH keeps every byte that reached the server."""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.e2e.conftest import SHARED_READ_TIMEOUT_SECONDS
from tests.e2e.support import (
    MIB,
    OCTETS,
    TUS,
    create_upload,
    download_sha256,
    make_file,
    read_staging,
    send_partial_patch,
    sha256_file,
    tus_offset,
    wait_for_offset,
)
from tests.support.services import FerryProcess, running_ferry


def test_disconnect_mid_patch_keeps_received_bytes_and_upload_can_continue(
    tmp_path: Path, shared_ferry: FerryProcess
) -> None:
    source = make_file(tmp_path / "source.bin", 3 * MIB + 5)
    content = source.read_bytes()
    announced = len(content)
    sent = announced // 2 + 12345  # not a multiple of any buffer size
    url = create_upload(shared_ferry.url, len(content))
    send_partial_patch(url, 0, announced, content[:sent])
    offset = wait_for_offset(url, sent)
    assert offset == sent
    assert read_staging(shared_ferry.data_dir, url) == content[:sent]

    # a second, smaller disconnect on top
    send_partial_patch(url, sent, announced - sent, content[sent : sent + 1000])
    offset = wait_for_offset(url, sent + 1000)
    assert offset == sent + 1000

    rest = httpx.patch(
        url,
        content=content[offset:],
        headers={**TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS},
        timeout=60,
    )
    assert rest.status_code == 204
    assert tus_offset(url) == len(content)
    received, digest = download_sha256(url)
    assert received == len(content)
    assert digest == sha256_file(source)
    # the running SHA-256 kept across the cut-off PATCHes is the file's real digest
    assert httpx.head(url, timeout=10).headers["etag"] == f'"{digest}"'


def test_disconnect_mid_patch_with_checksum_discards_the_unverifiable_chunk(
    shared_ferry: FerryProcess,
) -> None:
    content = os.urandom(2 * MIB)
    digest = base64.b64encode(hashlib.sha1(content).digest()).decode()
    url = create_upload(shared_ferry.url, len(content))
    send_partial_patch(
        url, 0, len(content), content[:MIB], extra_headers={"Upload-Checksum": f"sha1 {digest}"}
    )
    time.sleep(1)
    assert tus_offset(url) == 0
    assert read_staging(shared_ferry.data_dir, url) == b""
    whole = httpx.patch(
        url,
        content=content,
        headers={
            **TUS,
            "Upload-Offset": "0",
            "Content-Type": OCTETS,
            "Upload-Checksum": f"sha1 {digest}",
        },
        timeout=60,
    )
    assert whole.status_code == 204
    assert httpx.get(url, timeout=60).content == content


def test_stalled_client_is_cut_off_after_the_read_timeout_and_keeps_its_bytes(
    shared_ferry: FerryProcess,
) -> None:
    content = os.urandom(MIB)
    sent = 300_000
    url = create_upload(shared_ferry.url, len(content))
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port or 80), timeout=15) as sock:
        sock.sendall(
            (
                f"PATCH {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                f"Tus-Resumable: 1.0.0\r\nContent-Type: {OCTETS}\r\n"
                f"Upload-Offset: 0\r\nContent-Length: {len(content)}\r\n\r\n"
            ).encode()
            + content[:sent]
        )
        started = time.monotonic()
        reply = sock.recv(4096)  # the server gives up on us; we never close
        waited = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408"), reply[:80]
    assert SHARED_READ_TIMEOUT_SECONDS - 0.5 < waited < SHARED_READ_TIMEOUT_SECONDS + 8
    assert tus_offset(url) == sent
    assert read_staging(shared_ferry.data_dir, url) == content[:sent]


def test_chunked_patch_is_accepted_and_one_running_past_the_end_is_413_and_discarded(
    shared_ferry: FerryProcess,
) -> None:
    content = os.urandom(MIB)

    def pieces(data: bytes) -> Iterator[bytes]:
        for start in range(0, len(data), 64 * 1024):
            yield data[start : start + 64 * 1024]

    url = create_upload(shared_ferry.url, len(content))
    headers = {**TUS, "Content-Type": OCTETS}
    half = len(content) // 2
    first = httpx.patch(
        url, content=pieces(content[:half]), headers={**headers, "Upload-Offset": "0"}
    )
    assert first.status_code == 204
    assert first.headers["upload-offset"] == str(half)
    too_long = httpx.patch(
        url,
        content=pieces(content[half:] + b"x" * 100_000),
        headers={**headers, "Upload-Offset": str(half)},
    )
    assert too_long.status_code == 413
    assert tus_offset(url) == half
    assert read_staging(shared_ferry.data_dir, url) == content[:half]
    rest = httpx.patch(
        url, content=pieces(content[half:]), headers={**headers, "Upload-Offset": str(half)}
    )
    assert rest.status_code == 204
    assert httpx.get(url, timeout=60).content == content


def test_a_creation_with_upload_that_outlasts_the_lease_still_completes(
    tmp_path: Path,
) -> None:
    """Its row is inserted with the body's outcome; until then nobody else can know the
    upload's id, so there is no lease to renew and none to lose."""
    pieces = [os.urandom(64 * 1024) for _ in range(8)]
    body = b"".join(pieces)
    with running_ferry(tmp_path, {"FERRY_LOCK_LEASE_SECONDS": "1"}) as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        connection.putrequest("POST", "/files/")
        for name, value in {
            **TUS,
            "Upload-Length": str(len(body)),
            "Content-Type": OCTETS,
            "Content-Length": str(len(body)),
        }.items():
            connection.putheader(name, value)
        connection.endheaders()
        for piece in pieces:  # 2.4 s in all: more than twice the lease
            time.sleep(0.3)
            connection.send(piece)
        response = connection.getresponse()
        response.read()
        connection.close()
        assert response.status == 201
        assert response.getheader("Upload-Offset") == str(len(body))
        url = server.url + urlsplit(response.getheader("Location") or "").path
        assert httpx.get(url, timeout=10).content == body
