"""One writer per upload (invariant 3) with a real server, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.support import MIB, OCTETS, TUS, create_upload, tus_offset
from tests.support.services import FerryProcess, postgres_database, running_ferry

WRITERS = 20
PAYLOAD = 3 * MIB


@pytest.fixture(params=["sqlite", "postgres"])
def race_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FerryProcess]:
    """The shared server on SQLite, or a server of its own on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield request.getfixturevalue("shared_ferry")
        return
    with (
        postgres_database() as url,
        running_ferry(tmp_path, {"FERRY_DATABASE_URL": url}) as server,
    ):
        yield server


async def send_patch(client: httpx.AsyncClient, url: str, payload: bytes) -> int | str:
    """One PATCH at offset 0; the status, or the transport error's name."""
    try:
        response = await client.patch(
            url,
            content=payload,
            headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTETS},
        )
    except httpx.TransportError as error:
        return type(error).__name__
    return response.status_code


class SlowPatch(threading.Thread):
    """A PATCH whose body trickles in over a raw socket; records the final status."""

    def __init__(self, url: str, offset: int, body: bytes) -> None:
        super().__init__(daemon=True)
        self.url, self.offset, self.body = url, offset, body
        self.sent = 0
        self.status: int | None = None

    def run(self) -> None:
        parts = urlsplit(self.url)
        head = (
            f"PATCH {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Tus-Resumable: 1.0.0\r\nContent-Type: {OCTETS}\r\n"
            f"Upload-Offset: {self.offset}\r\nContent-Length: {len(self.body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        with socket.create_connection((parts.hostname, parts.port or 80), timeout=30) as sock:
            sock.sendall(head)
            step = 64 * 1024
            while self.sent < len(self.body):
                sock.sendall(self.body[self.sent : self.sent + step])
                self.sent += min(step, len(self.body) - self.sent)
                time.sleep(0.03)
            reply = sock.recv(4096)
        self.status = int(reply.split(b" ", 2)[1])


def test_twenty_simultaneous_patches_at_one_offset_exactly_one_wins(
    race_server: FerryProcess,
) -> None:
    payloads = [os.urandom(PAYLOAD) for _ in range(WRITERS)]
    url = create_upload(race_server.url, PAYLOAD)

    async def race() -> list[int | str]:
        limits = httpx.Limits(max_connections=WRITERS)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            return await asyncio.gather(*(send_patch(client, url, p) for p in payloads))

    statuses = asyncio.run(race())
    counts = Counter(statuses)
    assert counts[204] == 1, counts
    assert counts[409] + counts[423] == WRITERS - 1, counts

    assert tus_offset(url) == PAYLOAD
    stored = httpx.get(url, timeout=60).content
    winners = [i for i, p in enumerate(payloads) if p == stored]
    assert winners == [statuses.index(204)]
    assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(payloads[winners[0]]).hexdigest()
    # the winner's bytes were filed; no loser left anything behind in staging
    assert not (race_server.data_dir / "staging" / url.rsplit("/", 1)[-1]).exists()


def test_while_a_slow_patch_streams_head_answers_and_a_second_patch_is_refused_quickly(
    shared_ferry: FerryProcess,
) -> None:
    body = os.urandom(6 * MIB)  # ~3 s at the SlowPatch pace
    url = create_upload(shared_ferry.url, len(body))
    slow = SlowPatch(url, 0, body)
    slow.start()
    deadline = time.monotonic() + 30
    while slow.sent < MIB and time.monotonic() < deadline:
        time.sleep(0.02)
    assert slow.sent >= MIB

    status = httpx.head(url, headers=TUS, timeout=10)
    assert status.status_code == 200
    assert int(status.headers["upload-offset"]) == 0  # nothing committed yet
    second = httpx.patch(
        url,
        content=b"intruder",
        headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTETS},
        timeout=10,
    )
    assert second.status_code in (409, 423)
    # Both answers came while the writer was still streaming: neither waited behind it.
    assert slow.is_alive() and slow.status is None
    assert slow.sent < len(body)

    slow.join(timeout=60)
    assert slow.status == 204
    assert tus_offset(url) == len(body)
    assert httpx.get(url, timeout=60).content == body
