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


def test_kill_9_mid_upload_and_mid_patch_then_restart_resumes_both_identically(
    tmp_path: Path,
) -> None:
    # Upload A: half the file acknowledged, then the server dies between PATCHes.
    # Upload B: a PATCH body is streaming when the server dies.
    source_a = make_file(tmp_path / "a.bin", 16 * MIB + 99)
    source_b = make_file(tmp_path / "b.bin", 24 * MIB)
    content_a, content_b = source_a.read_bytes(), source_b.read_bytes()
    half = 8 * MIB
    first = 4 * MIB
    with running_ferry(tmp_path) as ferry:
        url_a = create_upload(ferry.url, len(content_a))
        acknowledged = patch(url_a, 0, content_a[:half])
        assert acknowledged.status_code == 204
        assert int(acknowledged.headers["upload-offset"]) == half

        url_b = create_upload(ferry.url, len(content_b))
        assert patch(url_b, 0, content_b[:first]).status_code == 204
        sender = SlowSender(url_b, first, content_b[first:])
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

        # A: exactly the acknowledged bytes, nothing lost.
        assert tus_offset(url_a) == half
        assert read_staging(ferry.data_dir, url_a) == content_a[:half]
        # B: only bytes that were made durable and committed count; reconciliation cut
        # the staging file back to exactly that offset.
        offset_b = tus_offset(url_b)
        assert first <= offset_b <= sent_before_kill
        staged_b = read_staging(ferry.data_dir, url_b)
        assert len(staged_b) == offset_b
        assert staged_b == content_b[:offset_b]

        assert patch(url_a, half, content_a[half:]).status_code == 204
        assert patch(url_b, offset_b, content_b[offset_b:]).status_code == 204
        results = {}
        for url, source in ((url_a, source_a), (url_b, source_b)):
            received, digest = download_sha256(url)
            etag = httpx.head(url, timeout=10).headers["etag"]
            results[url] = (received, digest, etag, source)
    for received, digest, etag, source in results.values():
        assert received == source.stat().st_size
        assert digest == sha256_file(source)
        # The SHA-256 recorded on the file row survived the restart in the middle.
        assert etag == f'"{digest}"'
