"""Downloads cost bounded memory whatever the client does, and there is a cap on how many run.

A real ``ferry serve`` and raw sockets that ask for a 16 MiB file and never read: the server
buffers what it sends, so only its own block sizes and flow control bound the memory, and
only the write timeout frees a connection whose client never reads again.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.support import MIB, OCTETS, TUS
from tests.support.services import FerryProcess, running_ferry

FILE_SIZE = 16 * MIB
STALLED_READERS = 20


def _store_file(server: FerryProcess) -> str:
    """A 16 MiB file stored through tus (creation-with-upload); its path."""
    response = httpx.post(
        f"{server.url}/files/",
        headers={**TUS, "Upload-Length": str(FILE_SIZE), "Content-Type": OCTETS},
        content=os.urandom(FILE_SIZE),
        timeout=60,
    )
    assert response.status_code == 201, response.text
    return httpx.URL(response.headers["location"]).path


def _stalled_reader(server: FerryProcess, path: str) -> socket.socket:
    """A connection that asks for the file and then reads nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: ferry\r\n\r\n".encode())
    return sock


def _readers_holding_every_slot(server: FerryProcess, path: str, count: int) -> list[socket.socket]:
    """``count`` stalled readers, each answered 200 (its download holds a slot now).

    Waits for the answers rather than pausing: on a loaded machine that can take longer
    than any fixed pause. A reader answered 503 is replaced by a new one (for up to 10 s):
    the slot of a download an earlier test walked away from comes back only once the server
    sees that client gone.
    """
    readers: list[socket.socket] = []
    deadline = time.monotonic() + 10
    try:
        while len(readers) < count:
            sock = _stalled_reader(server, path)
            sock.settimeout(20)
            status = sock.recv(12)
            if status == b"HTTP/1.1 200":
                readers.append(sock)
                continue
            sock.close()
            assert status == b"HTTP/1.1 503" and time.monotonic() < deadline, status
            time.sleep(0.2)
    except BaseException:
        for sock in readers:
            sock.close()
        raise
    return readers


def _rss_mib(server: FerryProcess) -> float:
    assert server.process is not None
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_stalled_download_readers_hold_at_most_1_mib_each(tmp_path: Path) -> None:
    with running_ferry(tmp_path) as server:
        path = _store_file(server)
        for _ in range(3):  # warm up: thread pool, page cache, allocator arenas
            assert len(httpx.get(f"{server.url}{path}", timeout=60).content) == FILE_SIZE
        time.sleep(0.5)
        before = _rss_mib(server)
        readers = [_stalled_reader(server, path) for _ in range(STALLED_READERS)]
        try:
            time.sleep(3)  # every response has filled the socket buffers and stopped
            during = _rss_mib(server)
        finally:
            for sock in readers:
                sock.close()
        per_reader = (during - before) / STALLED_READERS
        assert per_reader <= 1.0, (
            f"RSS {before:.1f} -> {during:.1f} MiB with {STALLED_READERS} stalled readers "
            f"({per_reader:.2f} MiB each)"
        )


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FerryProcess, str]]:
    """A server streaming at most two downloads, cutting a reader stalled for 3 s."""
    env = {"FERRY_MAX_DOWNLOADS": "2", "FERRY_WRITE_TIMEOUT_SECONDS": "3"}
    with running_ferry(tmp_path_factory.mktemp("capped"), env) as server:
        yield server, _store_file(server)


def _get_status(url: str, deadline_seconds: float) -> int:
    """The status of a GET, retried while it is 503 (for at most ``deadline_seconds``)."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        with httpx.stream("GET", url, timeout=30) as response:
            if response.status_code != 503 or time.monotonic() > deadline:
                return response.status_code
        time.sleep(0.2)


def test_downloads_beyond_the_cap_are_answered_503_with_retry_after(
    capped: tuple[FerryProcess, str],
) -> None:
    server, path = capped
    readers = _readers_holding_every_slot(server, path, 2)
    try:
        refused = httpx.get(f"{server.url}{path}", timeout=30)
        assert refused.status_code == 503, refused.status_code
        assert int(refused.headers["retry-after"]) > 0
        assert "downloads are in progress" in refused.text
        # Other requests are not downloads and are not refused.
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    finally:
        for sock in readers:
            sock.close()
    # A client that goes away gives its slot back.
    assert _get_status(f"{server.url}{path}", deadline_seconds=2) == 200


def test_download_whose_client_stops_reading_is_cut_after_the_write_timeout(
    capped: tuple[FerryProcess, str],
) -> None:
    server, path = capped
    readers = _readers_holding_every_slot(server, path, 2)
    try:
        assert httpx.get(f"{server.url}{path}", timeout=30).status_code == 503
        # Nobody closes the stalled readers: the server cuts them off and frees the slots.
        assert _get_status(f"{server.url}{path}", deadline_seconds=8) == 200
        for sock in readers:  # what reached them before the cut, then the end
            received = 0
            sock.settimeout(10)
            try:
                while chunk := sock.recv(1024 * 1024):
                    received += len(chunk)
            except ConnectionResetError:
                pass
            assert received < FILE_SIZE
    finally:
        for sock in readers:
            sock.close()
