"""Leases and start-up reconciliation: a crashed writer cannot hold an upload forever, and
staging files agree with committed offsets after a restart (invariants 2 and 3)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio.to_thread
from litestar.testing import AsyncTestClient
from sqlalchemy import update

from app.db.engine import create_engine, create_session_factory, migrate
from app.db.models import Upload
from app.main import create_app
from app.settings import Settings
from tests.conftest import MakeSettings
from tests.integration.tus_helpers import (  # noqa: F401 - fixtures for this module
    TUS,
    Client,
    create,
    database_url,
    head,
    patch,
    staging_file,
    tus_postgres_database,
    upload_id_of,
)


async def set_upload_columns(settings: Settings, path: str, **values: Any) -> None:
    """Change an upload row directly, as a crashed or concurrent process would have left it."""
    engine = create_engine(settings.resolved_database_url)
    try:
        sessions = create_session_factory(engine)
        async with sessions() as session, session.begin():
            await session.execute(
                update(Upload)
                .where(Upload.id == uuid.UUID(path.rsplit("/", 1)[-1]))
                .values(**values)
                .execution_options(synchronize_session=False)
            )
    finally:
        await engine.dispose()


async def test_lease_held_by_another_writer_gives_423_and_head_still_answers(
    client: Client, settings: Settings
) -> None:
    path = await create(client, 10)
    await patch(client, path, 0, b"abc")
    now = datetime.now(UTC)
    await set_upload_columns(
        settings,
        path,
        lock_token="held-elsewhere",
        lock_holder="other-node",
        lock_expires_at=now + timedelta(minutes=5),
    )
    locked = await patch(client, path, 3, b"def")
    assert locked.status_code == 423
    assert locked.headers["tus-resumable"] == "1.0.0"
    assert (await client.delete(path, headers=TUS)).status_code == 423
    status = await head(client, path)
    assert status.status_code == 200
    assert status.headers["upload-offset"] == "3"
    assert staging_file(settings.data_dir, path).read_bytes() == b"abc"

    # The other writer crashed: once its lease runs out, the upload is free again.
    await set_upload_columns(settings, path, lock_expires_at=now - timedelta(seconds=1))
    resumed = await patch(client, path, 3, b"defghij")
    assert resumed.status_code == 204
    assert (await client.get(path)).content == b"abcdefghij"


async def test_restart_reconciles_staging_files_with_committed_offsets(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings()
    await anyio.to_thread.run_sync(migrate, settings)
    async with AsyncTestClient(app=create_app(settings)) as first:
        longer = await create(first, 10)
        shorter = await create(first, 10)
        locked = await create(first, 10)
        for path in (longer, shorter, locked):
            assert (await patch(first, path, 0, b"abcdef")).status_code == 204
    # While the server was down (or as it crashed):
    # - bytes were written past the committed offset but never acknowledged,
    with staging_file(settings.data_dir, longer).open("ab") as extra:
        extra.write(b"NOT-ACKNOWLEDGED")
    # - a staging file lost bytes the database believes in (disk trouble),
    staging_file(settings.data_dir, shorter).write_bytes(b"abc")
    # - this node died while holding a lease,
    await set_upload_columns(
        settings,
        locked,
        lock_token="dead-request",
        lock_holder=settings.resolved_node_id,
        lock_expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    # - and a staging file has no upload row at all.
    orphan = settings.staging_dir / str(uuid.uuid4())
    orphan.write_bytes(b"orphan")

    async with AsyncTestClient(app=create_app(settings)) as second:
        assert staging_file(settings.data_dir, longer).read_bytes() == b"abcdef"
        assert (await head(second, longer)).headers["upload-offset"] == "6"
        assert staging_file(settings.data_dir, shorter).read_bytes() == b"abc"
        assert (await head(second, shorter)).headers["upload-offset"] == "3"
        assert not orphan.exists()
        assert (await patch(second, locked, 6, b"ghij")).status_code == 204
        assert (await patch(second, longer, 6, b"ghij")).status_code == 204
        assert (await patch(second, shorter, 3, b"defghij")).status_code == 204
        for path in (longer, shorter, locked):
            assert (await second.get(path)).content == b"abcdefghij"


async def test_completion_stored_but_not_committed_before_a_crash_is_filed_at_restart(
    make_settings: MakeSettings,
) -> None:
    """The last PATCH renames the staging file into place, then the process dies before the
    transaction that commits the offset with the file row: the restart files the upload."""
    settings = make_settings()
    await anyio.to_thread.run_sync(migrate, settings)
    async with AsyncTestClient(app=create_app(settings)) as first:
        path = await create(first, 10)
        assert (await patch(first, path, 0, b"abcd")).status_code == 204
    # What the crash left: the whole upload renamed into its category folder, the row
    # still at the offset of the previous PATCH.
    staged = staging_file(settings.data_dir, path)
    stored = settings.data_dir / "files" / "text" / staged.name
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(b"abcdefghij")
    staged.unlink()

    async with AsyncTestClient(app=create_app(settings)) as second:
        status = await head(second, path)
        assert status.headers["upload-offset"] == "10"
        download = await second.get(path)
        assert download.status_code == 200
        assert download.content == b"abcdefghij"
        assert download.headers["content-type"].startswith("text/plain")
        assert not staged.exists()


async def test_terminating_an_upload_removes_bytes_stored_without_a_row(
    make_settings: MakeSettings,
) -> None:
    """A failed filing can leave the renamed file behind; termination deletes it too."""
    settings = make_settings()
    await anyio.to_thread.run_sync(migrate, settings)
    async with AsyncTestClient(app=create_app(settings)) as c:
        path = await create(c, 10)
        assert (await patch(c, path, 0, b"abcd")).status_code == 204
        leftover = settings.data_dir / "files" / "other" / upload_id_of(path)
        leftover.parent.mkdir(parents=True, exist_ok=True)
        leftover.write_bytes(b"\x00" * 10)
        assert (await c.delete(path, headers=TUS)).status_code == 204
        assert not leftover.exists()
        assert not staging_file(settings.data_dir, path).exists()


async def test_completion_whose_storing_fails_keeps_its_bytes_and_finishes_on_head(
    make_settings: MakeSettings,
) -> None:
    """Storage refuses the rename (its category folder is not a folder): 503, yet the last
    PATCH's bytes are committed, and a HEAD once storage works again files the upload."""
    settings = make_settings()
    await anyio.to_thread.run_sync(migrate, settings)
    async with AsyncTestClient(app=create_app(settings)) as c:
        path = await create(c, 10)
        assert (await patch(c, path, 0, b"abcd")).status_code == 204
        blocker = settings.data_dir / "files" / "text"
        blocker.parent.mkdir(parents=True, exist_ok=True)
        if blocker.is_dir():
            blocker.rmdir()
        blocker.write_bytes(b"not a folder")
        failed = await patch(c, path, 4, b"efghij")
        assert failed.status_code == 503
        assert failed.headers["tus-resumable"] == "1.0.0"
        blocker.unlink()
        blocker.mkdir()
        status = await head(c, path)
        assert status.headers["upload-offset"] == "10"
        assert (await c.get(path)).content == b"abcdefghij"
