"""Small helpers shared by the tus integration tests: headers, request shortcuts and a
faster PostgreSQL database fixture.

The tus test modules import :func:`database_url` to override the one in
``tests/conftest.py`` for themselves only: instead of creating, migrating and dropping a
PostgreSQL database for every test (about a second each on a busy machine, half of this
suite's time), each module migrates one database and every test starts by emptying all of
its tables. Tests still run one at a time against a clean, fully migrated database.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient
from litestar.testing.transport import TestClientTransport
from sqlalchemy import event

from app.db.engine import migrate
from app.main import FerryApp
from app.settings import Settings
from tests.support.services import postgres_database

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"
Client = AsyncTestClient[FerryApp]


def b64(text: str | bytes) -> str:
    """Base64 of a metadata value."""
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def path_of(location: str) -> str:
    """The path part of a ``Location`` (the test client wants paths)."""
    return httpx.URL(location).path


def upload_id_of(location: str) -> str:
    """The upload id at the end of an upload URL."""
    return path_of(location).rstrip("/").rsplit("/", 1)[-1]


class _RepeatingTransport(TestClientTransport[Client], httpx.AsyncBaseTransport):
    """The test client's transport, but a repeated header stays separate fields."""

    def parse_request(self, request: httpx.Request) -> dict[str, Any]:
        raw = [(name.lower(), value) for name, value in request.headers.raw]
        scope = super().parse_request(request)
        scope["headers"] = raw
        return scope


def repeating_client(client: Client) -> httpx.AsyncClient:
    """A client of the same running app that sends a repeated header as separate fields.

    The test client joins repeats into one comma-separated value; a real HTTP server passes
    them on one by one, which is what tests of duplicate headers need.
    """
    return httpx.AsyncClient(
        transport=_RepeatingTransport(client),
        base_url="http://ferry.local",
    )


async def create(client: Client, length: int | None, **headers: str) -> str:
    """Create an upload and return its path."""
    extra: dict[str, str] = {**TUS}
    if length is not None:
        extra["Upload-Length"] = str(length)
    extra.update({k.replace("_", "-"): v for k, v in headers.items()})
    response = await client.post("/files/", headers=extra)
    assert response.status_code == 201, response.text
    return path_of(response.headers["location"])


async def patch(
    client: Client, path: str, offset: int, data: bytes, **headers: str
) -> httpx.Response:
    """A tus PATCH of ``data`` at ``offset``."""
    extra: dict[str, Any] = {**TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS}
    extra.update({k.replace("_", "-"): v for k, v in headers.items()})
    return await client.patch(path, content=data, headers=extra)


async def head(client: Client, path: str) -> httpx.Response:
    """A tus HEAD."""
    return await client.head(path, headers=TUS)


async def upload(client: Client, data: bytes, **headers: str) -> str:
    """Create and fill an upload in one PATCH; return its path."""
    path = await create(client, len(data), **headers)
    if data:
        response = await patch(client, path, 0, data)
        assert response.status_code == 204, response.text
    return path


def count_commits(client: Client) -> list[int]:
    """A list that grows by one per database transaction the app commits from now on."""
    commits: list[int] = []
    state = client.app.state  # type: ignore[attr-defined]
    # Upload writes commit on SQLite's writer connection (app.db.group_commit), the rest
    # on the async engine; on PostgreSQL both are the one engine.
    for engine in {state.engine.sync_engine, state.ferry.repository.writes.engine}:
        event.listen(engine, "commit", lambda _connection: commits.append(1))
    return commits


def staging_file(data_dir: Path, path: str) -> Path:
    """The staging file that holds an upload's bytes."""
    return data_dir / "staging" / upload_id_of(path)


def staged_bytes(data_dir: Path, path: str) -> bytes:
    """What staging holds of an upload (nothing before its first body opened the file)."""
    try:
        return staging_file(data_dir, path).read_bytes()
    except FileNotFoundError:
        return b""


@pytest.fixture(scope="module")
def tus_postgres_database() -> Iterator[str]:
    """One migrated PostgreSQL database for a test module; dropped afterwards."""
    with postgres_database() as url:
        migrate(Settings(database_url=url))
        yield url


async def _empty_all_tables(url: str) -> None:
    """Delete every row but the migration version (DELETE is far cheaper than TRUNCATE on
    tables this small; foreign keys are not checked while emptying everything)."""
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        tables = await connection.fetch(
            "SELECT quote_ident(tablename) AS name FROM pg_tables "
            "WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        )
        names = [row["name"] for row in tables]
        try:
            async with connection.transaction():
                await connection.execute("SET LOCAL session_replication_role = replica")
                for name in names:
                    await connection.execute(f"DELETE FROM {name}")
        except asyncpg.InsufficientPrivilegeError:
            if names:
                await connection.execute(f"TRUNCATE {', '.join(names)} RESTART IDENTITY CASCADE")
    finally:
        await connection.close()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test runs on a fresh SQLite file and on an emptied PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'ferry.db'}"
        return
    url: str = request.getfixturevalue("tus_postgres_database")
    asyncio.run(_empty_all_tables(url))
    yield url
