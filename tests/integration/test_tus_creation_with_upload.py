"""creation-with-upload on the local backend: the upload's row is inserted with its first
body's outcome (``UploadService._born_with_its_body``), so a small file costs one
transaction, and every other outcome still leaves a resumable upload or nothing at all."""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any

import anyio.to_thread
from litestar.testing import AsyncTestClient

from app.db.engine import migrate
from app.main import create_app
from app.settings import Settings
from tests.conftest import MakeSettings
from tests.integration.tus_helpers import (  # noqa: F401 - fixtures for this module
    OCTETS,
    TUS,
    Client,
    count_commits,
    database_url,
    head,
    patch,
    path_of,
    staging_file,
    tus_postgres_database,
    upload_id_of,
)


async def create_with_body(client: Client, length: int, body: bytes, **headers: str) -> Any:
    extra = {k.replace("_", "-"): v for k, v in headers.items()}
    return await client.post(
        "/files/",
        content=body,
        headers={**TUS, "Upload-Length": str(length), "Content-Type": OCTETS, **extra},
    )


async def test_a_small_file_sent_with_its_creation_costs_one_transaction(
    client: Client, settings: Settings
) -> None:
    body = os.urandom(64 * 1024)
    commits = count_commits(client)
    created = await create_with_body(client, len(body), body)
    assert created.status_code == 201
    assert created.headers["upload-offset"] == str(len(body))
    assert len(commits) == 1, "the upload row and the file row are written together"
    path = path_of(created.headers["location"])
    assert (await head(client, path)).headers["upload-offset"] == str(len(body))
    record = (await client.get(f"/api/files/{upload_id_of(path)}")).json()
    assert record["sha256"] == hashlib.sha256(body).hexdigest()
    assert (await client.get(path)).content == body
    assert not staging_file(settings.data_dir, path).exists()


async def test_a_first_body_shorter_than_the_upload_leaves_it_resumable(client: Client) -> None:
    data = os.urandom(300_000)
    created = await create_with_body(client, len(data), data[:100_000])
    assert created.status_code == 201
    assert created.headers["upload-offset"] == "100000"
    path = path_of(created.headers["location"])
    assert (await head(client, path)).headers["upload-offset"] == "100000"
    assert (await patch(client, path, 100_000, data[100_000:])).status_code == 204
    assert (await client.get(path)).content == data


async def test_a_first_body_with_a_bad_checksum_leaves_an_empty_resumable_upload(
    client: Client,
) -> None:
    data = b"hello, world"
    wrong = "sha1 " + "AAAAAAAAAAAAAAAAAAAAAAAAAAA="
    refused = await create_with_body(client, len(data), data, upload_checksum=wrong)
    assert refused.status_code == 460
    path = path_of(refused.headers["location"])
    assert (await head(client, path)).headers["upload-offset"] == "0"
    assert (await patch(client, path, 0, data)).status_code == 204
    assert (await client.get(path)).content == data


async def test_a_first_body_that_is_refused_by_content_type_leaves_nothing(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(allowed_types=["image/*"])
    await anyio.to_thread.run_sync(migrate, settings)
    async with AsyncTestClient(app=create_app(settings), base_url="http://ferry.local") as c:
        refused = await create_with_body(c, 20_000, b"plain text, not an image\n" * 800)
        assert refused.status_code == 415
        assert list(settings.staging_dir.iterdir()) == []
        assert not any(path.is_file() for path in (settings.data_dir / "files").rglob("*"))
        gone = await head(c, path_of(refused.headers["location"]))
        assert gone.status_code in (404, 410)


async def test_a_crash_before_the_rows_leaves_nothing_after_restart(
    make_settings: MakeSettings,
) -> None:
    """The body was staged and linked into its category folder, then the process died
    before the one transaction: no row names the upload, so neither copy survives."""
    settings = make_settings()
    await anyio.to_thread.run_sync(migrate, settings)
    upload_id = str(uuid.uuid4())
    settings.staging_dir.mkdir(parents=True)
    staged = settings.staging_dir / upload_id
    staged.write_bytes(b"never acknowledged")
    stored = settings.data_dir / "files" / "text" / upload_id
    stored.parent.mkdir(parents=True)
    os.link(staged, stored)

    async with AsyncTestClient(app=create_app(settings), base_url="http://ferry.local") as c:
        assert not staged.exists()
        assert not stored.exists()
        assert (await head(c, f"/files/{upload_id}")).status_code == 404


async def test_a_crash_after_the_rows_keeps_the_file_and_drops_the_staged_name(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings()
    await anyio.to_thread.run_sync(migrate, settings)
    body = b"stored and recorded\n" * 100
    async with AsyncTestClient(app=create_app(settings), base_url="http://ferry.local") as c:
        path = path_of((await create_with_body(c, len(body), body)).headers["location"])
    # The crash came before the staged name was removed.
    stored = settings.data_dir / "files" / "text" / upload_id_of(path)
    os.link(stored, staging_file(settings.data_dir, path))

    async with AsyncTestClient(app=create_app(settings), base_url="http://ferry.local") as c:
        assert not staging_file(settings.data_dir, path).exists()
        assert (await c.get(path)).content == body


async def test_a_first_body_larger_than_the_upload_is_413_and_the_upload_stays_usable(
    client: Client,
) -> None:
    data = b"0123456789"
    refused = await create_with_body(client, len(data), data + b"overflow")
    assert refused.status_code == 413
    path = path_of(refused.headers["location"])
    assert (await head(client, path)).headers["upload-offset"] == "0"
    assert (await patch(client, path, 0, data)).status_code == 204
    assert (await client.get(path)).content == data


async def test_a_complete_first_body_whose_storing_fails_is_kept_and_finished_by_head(
    client: Client, settings: Settings
) -> None:
    """Storage refuses the file (its category folder is not a folder): 503 with the
    Location, the upload exists with every byte, and a HEAD files it once storage works."""
    body = b"plain text that will be stored later\n" * 50
    blocker = settings.data_dir / "files" / "text"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    if blocker.is_dir():
        blocker.rmdir()
    blocker.write_bytes(b"not a folder")
    failed = await create_with_body(client, len(body), body)
    assert failed.status_code == 503
    path = path_of(failed.headers["location"])
    blocker.unlink()
    blocker.mkdir()
    assert (await head(client, path)).headers["upload-offset"] == str(len(body))
    assert (await client.get(path)).content == body
    assert not staging_file(settings.data_dir, path).exists()
