"""Crash safety with a real process: ``kill -9`` the server, restart it, resume the upload."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.e2e.support import (
    MIB,
    OCTETS,
    TUS,
    create_upload,
    download_sha256,
    make_file,
    read_staging,
    sha256_file,
    tus_offset,
)
from tests.support.services import running_ferry


def patch(url: str, offset: int, body: bytes) -> httpx.Response:
    return httpx.patch(
        url,
        content=body,
        headers={**TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS},
        timeout=60,
    )


def test_kill_9_after_half_the_file_then_restart_resumes_at_acknowledged_offset(
    tmp_path: Path,
) -> None:
    source = make_file(tmp_path / "source.bin", 16 * MIB + 99)
    content = source.read_bytes()
    half = 8 * MIB
    with running_ferry(tmp_path) as ferry:
        url = create_upload(ferry.url, len(content))
        acknowledged = patch(url, 0, content[:half])
        assert acknowledged.status_code == 204
        assert int(acknowledged.headers["upload-offset"]) == half

        ferry.kill()
        ferry.start()

        assert tus_offset(url) == half
        assert read_staging(ferry.data_dir, url) == content[:half]
        rest = patch(url, half, content[half:])
        assert rest.status_code == 204
        received, digest = download_sha256(url)
        etag = httpx.head(url, timeout=10).headers["etag"]
    assert received == len(content)
    assert digest == sha256_file(source)
    # The SHA-256 recorded on the file row survived the restart in the middle of the upload.
    assert etag == f'"{digest}"'


class SlowSender(threading.Thread):
    """Sends a PATCH body slowly over a raw socket until told to stop or the peer dies."""

    def __init__(self, url: str, offset: int, body: bytes) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.offset = offset
        self.body = body
        self.sent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        parts = urlsplit(self.url)
        head = (
            f"PATCH {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Tus-Resumable: 1.0.0\r\nContent-Type: {OCTETS}\r\n"
            f"Upload-Offset: {self.offset}\r\nContent-Length: {len(self.body)}\r\n\r\n"
        ).encode()
        try:
            with socket.create_connection((parts.hostname, parts.port or 80), timeout=10) as sock:
                sock.sendall(head)
                step = 256 * 1024
                while self.sent < len(self.body) and not self.stop.is_set():
                    sock.sendall(self.body[self.sent : self.sent + step])
                    self.sent += step
                    time.sleep(0.02)
        except OSError:
            pass  # the server was killed under us: that is the point


def test_patch_killed_mid_body_restarts_with_staging_equal_to_a_durable_offset(
    tmp_path: Path,
) -> None:
    source = make_file(tmp_path / "source.bin", 24 * MIB)
    content = source.read_bytes()
    first = 4 * MIB
    with running_ferry(tmp_path) as ferry:
        url = create_upload(ferry.url, len(content))
        assert patch(url, 0, content[:first]).status_code == 204

        sender = SlowSender(url, first, content[first:])
        sender.start()
        deadline = time.monotonic() + 30
        while sender.sent < 6 * MIB and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sender.sent >= 6 * MIB, "the slow PATCH never got going"
        ferry.kill()
        sender.stop.set()
        sender.join(timeout=10)
        sent_before_kill = first + sender.sent

        ferry.start()
        offset = tus_offset(url)
        # Only bytes that were made durable and committed may count; reconciliation cut
        # the staging file back to exactly that offset.
        assert first <= offset <= sent_before_kill
        staged = read_staging(ferry.data_dir, url)
        assert len(staged) == offset
        assert staged == content[:offset]

        assert patch(url, offset, content[offset:]).status_code == 204
        received, digest = download_sha256(url)
        etag = httpx.head(url, timeout=10).headers["etag"]
    assert received == len(content)
    assert digest == sha256_file(source)
    # The SHA-256 recorded on the file row survived the restart in the middle of the upload.
    assert etag == f'"{digest}"'
