"""A download never waits for a writer: range reads while a slow PATCH holds its lock.

Runs against a real ``ferry serve`` so the PATCH body really trickles in over a socket
while the range requests are served.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import sqlite3
import threading
import time
from pathlib import Path

import httpx

from tests.support.services import running_ferry

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"
FILE = os.urandom(2 * 1024 * 1024)
SLOW_BODY = os.urandom(1024 * 1024)
FIRST_PIECE = 256 * 1024


def _tus_upload(client: httpx.Client, data: bytes) -> str:
    created = client.post("/files/", headers={**TUS, "Upload-Length": str(len(data))})
    assert created.status_code == 201
    path = httpx.URL(created.headers["location"]).path
    patched = client.patch(
        path, content=data, headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTETS}
    )
    assert patched.status_code == 204
    return path


def _lock_is_held(database: Path) -> bool:
    """Whether some upload's one-writer lease is taken right now."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT count(*) FROM uploads WHERE lock_token IS NOT NULL").fetchone()
    return bool(row[0])


def _slow_patch(port: int, path: str, release: threading.Event, result: dict[str, int]) -> None:
    """PATCH that sends a first piece, then waits for ``release`` before the rest."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.putrequest("PATCH", path)
    for name, value in {
        **TUS,
        "Upload-Offset": "0",
        "Content-Type": OCTETS,
        "Content-Length": str(len(SLOW_BODY)),
    }.items():
        connection.putheader(name, value)
    connection.endheaders()
    connection.send(SLOW_BODY[:FIRST_PIECE])
    result["first_piece_sent"] = 1
    release.wait(timeout=30)
    connection.send(SLOW_BODY[FIRST_PIECE:])
    response = connection.getresponse()
    response.read()
    result["status"] = response.status
    connection.close()


def test_range_downloads_do_not_wait_for_a_patch_in_progress(tmp_path: Path) -> None:
    with running_ferry(tmp_path) as ferry, httpx.Client(base_url=ferry.url, timeout=10) as client:
        finished = _tus_upload(client, FILE)
        created = client.post("/files/", headers={**TUS, "Upload-Length": str(len(SLOW_BODY))})
        busy = httpx.URL(created.headers["location"]).path

        release = threading.Event()
        result: dict[str, int] = {}
        writer = threading.Thread(
            target=_slow_patch, args=(ferry.port, busy, release, result), daemon=True
        )
        writer.start()
        try:
            # Wait until the slow PATCH holds the upload's lock (read from the database, so
            # that the test itself never competes for it).
            deadline = time.monotonic() + 15
            while not _lock_is_held(ferry.data_dir / "ferry.db"):
                assert time.monotonic() < deadline, "the slow PATCH never took the lock"
                time.sleep(0.05)

            slowest = 0.0
            for start in range(0, len(FILE) - 65536, len(FILE) // 16):
                began = time.monotonic()
                response = client.get(finished, headers={"Range": f"bytes={start}-{start + 65535}"})
                slowest = max(slowest, time.monotonic() - began)
                assert response.status_code == 206
                assert response.content == FILE[start : start + 65536]
            several = client.get(finished, headers={"Range": "bytes=0-9,-10"})
            assert several.status_code == 206
            # The upload being written is not a file yet: an immediate 404, never a 423 wait.
            began = time.monotonic()
            assert client.get(busy, headers={"Range": "bytes=0-9"}).status_code == 404
            slowest = max(slowest, time.monotonic() - began)
            assert slowest < 2.0, f"a download waited {slowest:.2f}s"
            assert writer.is_alive()  # the PATCH was still in flight throughout
            rival = client.patch(
                busy, content=b"", headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTETS}
            )
            assert rival.status_code == 423  # and it still held the upload's lock
        finally:
            release.set()
            writer.join(timeout=30)
        assert result.get("status") == 204
        done = client.get(busy)
        assert done.status_code == 200
        assert done.content == SLOW_BODY
