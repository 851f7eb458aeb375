"""A real ``ferry serve`` protects itself at the connection level, with nothing in front of it:
capped request heads (431), a deadline for a head (408), idle keep-alive connections closed,
a cap on open connections (503) — and none of that cuts off a slow body.

Raw sockets, because every client library would send well-formed, prompt requests.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.support import OCTETS, create_upload, tus_offset
from tests.support.services import FerryProcess, running_ferry

HEADER_CAP = 16 * 1024
HEADER_TIMEOUT = 1
KEEP_ALIVE = 1


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FerryProcess]:
    """A server with small limits, so the tests are quick."""
    env = {
        "FERRY_MAX_HEADER_BYTES": str(HEADER_CAP),
        "FERRY_MAX_METADATA_BYTES": "4096",
        "FERRY_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "FERRY_KEEP_ALIVE_SECONDS": str(KEEP_ALIVE),
    }
    with running_ferry(tmp_path_factory.mktemp("guarded"), env) as server:
        yield server


def _connect(server: FerryProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def _read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float | None]:
    """Everything the server sends, and the seconds until it closed (``None``: still open)."""
    started = time.monotonic()
    received = b""
    sock.settimeout(0.2)
    while time.monotonic() - started < timeout:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received, time.monotonic() - started
        if not data:
            return received, time.monotonic() - started
        received += data
    return received, None


def _head(lines: int, line_bytes: int) -> bytes:
    padding = "".join(f"X-Pad-{i}: {'p' * line_bytes}\r\n" for i in range(lines))
    return f"GET /health HTTP/1.1\r\nHost: ferry\r\n{padding}\r\n".encode()


def test_request_head_larger_than_the_cap_is_answered_431_and_closed(
    guarded: FerryProcess,
) -> None:
    with _connect(guarded) as sock:
        sock.sendall(_head(lines=10, line_bytes=1000))  # well under the cap
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
    for oversized in (_head(lines=64, line_bytes=1000), _head(lines=1, line_bytes=1024 * 1024)):
        with _connect(guarded) as sock:
            sender = threading.Thread(target=_send_ignoring_errors, args=(sock, oversized))
            sender.start()
            answer, closed_after = _read_until_closed(sock, timeout=10)
            sender.join(timeout=10)
        assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large"), answer[:100]
        assert b"connection: close" in answer
        assert closed_after is not None


def test_request_head_trickling_in_is_answered_408_within_the_header_timeout(
    guarded: FerryProcess,
) -> None:
    socks = [_connect(guarded) for _ in range(20)]
    try:
        for sock in socks:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: ferry\r\n")
        started = time.monotonic()
        open_socks = list(socks)
        answers: dict[socket.socket, bytes] = {sock: b"" for sock in socks}
        # One more header line every 0.3 s: each arrives well within any per-read timeout.
        while open_socks and time.monotonic() - started < HEADER_TIMEOUT + 4:
            time.sleep(0.3)
            for sock in list(open_socks):
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                    sock.settimeout(0.01)
                    data = sock.recv(65536)
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    data = b""
                answers[sock] += data
                if not data:
                    open_socks.remove(sock)
        assert not open_socks, f"{len(open_socks)} of 20 slow heads still open"
        for answer in answers.values():
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:100]
        assert any(answer.startswith(b"HTTP/1.1 408") for answer in answers.values())
    finally:
        for sock in socks:
            sock.close()


def test_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    guarded: FerryProcess,
) -> None:
    with _connect(guarded) as sock:
        answer, closed_after = _read_until_closed(sock, timeout=HEADER_TIMEOUT + 4)
    assert closed_after is not None
    assert answer == b""


def test_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(
    guarded: FerryProcess,
) -> None:
    with _connect(guarded) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: ferry\r\n\r\n")
        time.sleep(0.3)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        answer, closed_after = _read_until_closed(sock, timeout=KEEP_ALIVE + 2)
    assert answer == b""
    assert closed_after is not None


def test_slow_body_is_not_cut_off_by_the_header_timeout(guarded: FerryProcess) -> None:
    url = create_upload(guarded.url, 12)
    path = httpx.URL(url).path
    with _connect(guarded) as sock:
        sock.sendall(
            (
                f"PATCH {path} HTTP/1.1\r\nHost: ferry\r\nTus-Resumable: 1.0.0\r\n"
                f"Content-Type: {OCTETS}\r\nUpload-Offset: 0\r\nContent-Length: 12\r\n\r\n"
            ).encode()
        )
        for byte in b"slowly sent!":  # 12 bytes over ~3.6 s: longer than the head timeout
            time.sleep(0.3)
            sock.sendall(bytes([byte]))
        answer, _ = _read_until_closed(sock, timeout=2)
    assert answer.startswith(b"HTTP/1.1 204"), answer[:200]
    assert tus_offset(url) == 12
    assert httpx.get(url, timeout=10).content == b"slowly sent!"


def test_trailer_section_larger_than_the_cap_ends_the_request(guarded: FerryProcess) -> None:
    url = create_upload(guarded.url, 5)
    path = httpx.URL(url).path
    with _connect(guarded) as sock:
        head = (
            f"PATCH {path} HTTP/1.1\r\nHost: ferry\r\nTus-Resumable: 1.0.0\r\n"
            f"Content-Type: {OCTETS}\r\nUpload-Offset: 0\r\nTransfer-Encoding: chunked\r\n"
            "Trailer: Upload-Checksum\r\n\r\n5\r\nhello\r\n0\r\nX-Big: "
        ).encode()
        flood = (head, *[b"t" * (1024 * 1024)] * 64)
        sender = threading.Thread(target=_send_ignoring_errors, args=(sock, iter(flood)))
        sender.start()
        _, closed_after = _read_until_closed(sock, timeout=10)
        sender.join(timeout=10)
    assert closed_after is not None and closed_after < 5
    assert not sender.is_alive()
    assert tus_offset(url) == 0  # the chunk's checksum never arrived: nothing was kept


def test_connections_beyond_the_cap_are_answered_503_with_retry_after(tmp_path: Path) -> None:
    with running_ferry(tmp_path, {"FERRY_MAX_CONNECTIONS": "4"}) as server:
        held = [_connect(server) for _ in range(4)]
        try:
            time.sleep(0.3)
            with _connect(server) as extra:
                extra.sendall(b"GET /health HTTP/1.1\r\nHost: ferry\r\n\r\n")
                answer, closed_after = _read_until_closed(extra, timeout=5)
            assert answer.startswith(b"HTTP/1.1 503"), answer[:100]
            assert b"retry-after: " in answer.lower()
            assert closed_after is not None
            for sock in held:  # the held ones are served
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: ferry\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 10
        status = 0
        while time.monotonic() < deadline and status != 200:
            time.sleep(0.2)
            status = httpx.get(f"{server.url}/health", timeout=5).status_code
        assert status == 200  # slots free again once connections close


def test_oversized_heads_do_not_grow_the_server(tmp_path: Path) -> None:
    """Four requests trying to send 64 MiB of headers each cost the server next to nothing."""
    with running_ferry(tmp_path) as server:
        assert server.process is not None
        before = _rss_mib(server.process.pid)
        socks = [_connect(server) for _ in range(4)]
        senders = [
            threading.Thread(target=_send_ignoring_errors, args=(sock, _endless_head()))
            for sock in socks
        ]
        for sender in senders:
            sender.start()
        peak = before
        deadline = time.monotonic() + 30
        while any(sender.is_alive() for sender in senders) and time.monotonic() < deadline:
            peak = max(peak, _rss_mib(server.process.pid))
            time.sleep(0.05)
        for sock in socks:
            sock.close()
        assert not any(sender.is_alive() for sender in senders), "the server kept reading"
        assert peak - before < 16, f"RSS {before:.0f} MiB -> peak {peak:.0f} MiB"
        assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200


def _endless_head() -> Iterator[bytes]:
    yield b"GET /health HTTP/1.1\r\nHost: ferry\r\nX-Big: "
    block = b"b" * (1024 * 1024)
    for _ in range(64):
        yield block


def _send_ignoring_errors(sock: socket.socket, data: bytes | Iterator[bytes]) -> None:
    pieces = [data] if isinstance(data, bytes) else data
    try:
        for piece in pieces:
            sock.sendall(piece)
    except OSError:
        pass  # the server closed the connection: what this test expects


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")
