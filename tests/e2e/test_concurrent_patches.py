"""One writer per upload (invariant 3) with a real server, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.support import MIB, OCTETS, TUS, create_upload, read_staging, tus_offset
from tests.support.services import postgres_database, running_ferry

WRITERS = 20
PAYLOAD = 3 * MIB


@contextlib.contextmanager
def database_env(kind: str) -> Iterator[dict[str, str]]:
    if kind == "sqlite":
        yield {}
        return
    with postgres_database() as url:
        yield {"FERRY_DATABASE_URL": url}


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


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_twenty_simultaneous_patches_at_one_offset_exactly_one_wins(
    tmp_path: Path, database: str
) -> None:
    payloads = [os.urandom(PAYLOAD) for _ in range(WRITERS)]
    with database_env(database) as env, running_ferry(tmp_path, env) as ferry:
        url = create_upload(ferry.url, PAYLOAD)

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
        assert (
            hashlib.sha256(stored).hexdigest() == hashlib.sha256(payloads[winners[0]]).hexdigest()
        )
        assert not (ferry.data_dir / "staging" / url.rsplit("/", 1)[-1]).exists() or (
            read_staging(ferry.data_dir, url) == stored
        )
