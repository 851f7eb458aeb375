"""A real ``ferry serve`` process: SIGTERM mid-PATCH, and a client that stalls."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import threading
import time
from pathlib import Path

import httpx

from tests.support.services import FerryProcess, running_ferry

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"
MiB = 1024 * 1024


def _create(server: FerryProcess, length: int) -> str:
    response = httpx.post(f"{server.url}/files/", headers={**TUS, "Upload-Length": str(length)})
    assert response.status_code == 201, response.text
    return httpx.URL(response.headers["location"]).path


def _open_patch(server: FerryProcess, path: str, offset: int, length: int) -> socket.socket:
    """Start a PATCH by hand, so the test decides when (and whether) body bytes flow."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(
        (
            f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
            f"Upload-Offset: {offset}\r\nContent-Type: {OCTETS}\r\n"
            f"Content-Length: {length}\r\n\r\n"
        ).encode()
    )
    return sock


def _offset(server: FerryProcess, path: str) -> int:
    status = httpx.head(f"{server.url}{path}", headers=TUS)
    assert status.status_code == 200, status.text
    return int(status.headers["upload-offset"])


def _finish(server: FerryProcess, path: str, data: bytes, offset: int) -> None:
    response = httpx.patch(
        f"{server.url}{path}",
        content=data[offset:],
        headers={**TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS},
        timeout=60,
    )
    assert response.status_code == 204, response.text
    downloaded = hashlib.sha256()
    with httpx.stream("GET", f"{server.url}{path}", timeout=60) as body:
        for block in body.iter_bytes():
            downloaded.update(block)
    assert downloaded.hexdigest() == hashlib.sha256(data).hexdigest()


def test_sigterm_during_a_large_patch_exits_in_time_and_the_resume_ends_with_the_right_sha256(
    tmp_path: Path,
) -> None:
    data = random.Random(6).randbytes(32 * MiB)
    shutdown_timeout = 5
    env = {"FERRY_SHUTDOWN_TIMEOUT": str(shutdown_timeout)}
    with running_ferry(tmp_path, env) as server:
        path = _create(server, len(data))
        sock = _open_patch(server, path, 0, len(data))
        sent = 0
        for start in range(0, 12 * MiB, 256 * 1024):
            sock.sendall(data[start : start + 256 * 1024])
            sent = start + 256 * 1024
        time.sleep(0.5)  # let the server take in what was sent

        def keep_sending() -> None:
            # A client still uploading while the server stops: slow, steady pieces.
            nonlocal sent
            try:
                while sent < len(data):
                    sock.sendall(data[sent : sent + 64 * 1024])
                    sent += 64 * 1024
                    time.sleep(0.02)
            except OSError:
                pass

        sender = threading.Thread(target=keep_sending, daemon=True)
        sender.start()
        assert server.process is not None
        stopped_at = time.monotonic()
        os.kill(server.process.pid, signal.SIGTERM)
        server.process.wait(timeout=shutdown_timeout + 10)
        took = time.monotonic() - stopped_at
        sock.close()
        sender.join(timeout=5)
        assert took < shutdown_timeout + 1, f"took {took:.1f} s to stop"
        assert took < shutdown_timeout, "the PATCH should end on SIGTERM, not at the deadline"

    with running_ferry(tmp_path, env) as restarted:
        acknowledged = _offset(restarted, path)
        # What arrived before SIGTERM was persisted, not thrown away.
        assert 12 * MiB <= acknowledged < len(data)
        _finish(restarted, path, data, acknowledged)


def test_a_stalled_client_is_cut_after_the_read_timeout_its_bytes_kept_and_lock_released(
    tmp_path: Path,
) -> None:
    data = random.Random(7).randbytes(300_000)
    with running_ferry(tmp_path, {"FERRY_READ_TIMEOUT": "1"}) as server:
        path = _create(server, len(data))
        sock = _open_patch(server, path, 0, len(data))
        sock.sendall(data[:100_000])
        started = time.monotonic()
        sock.settimeout(10)
        answer = sock.recv(4096)
        waited = time.monotonic() - started
        sock.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert 0.8 <= waited < 4, f"cut after {waited:.1f} s"
        assert _offset(server, path) == 100_000
        # The lock is free at once: the resume is not refused with 423.
        _finish(server, path, data, 100_000)
