"""tus expiration: Upload-Expires on every answer, 410 after it, the reaper removes files."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import anyio
import anyio.to_thread
from click.testing import CliRunner
from litestar.testing import AsyncTestClient

from app.__main__ import main as ferry_cli
from app.composition import open_ferry
from app.db.engine import migrate
from app.main import create_app
from app.settings import Settings
from tests.conftest import MakeSettings
from tests.integration.tus_helpers import (  # noqa: F401 - fixtures for this module
    OCTETS,
    TUS,
    Client,
    create,
    database_url,
    head,
    patch,
    path_of,
    staging_file,
    tus_postgres_database,
    upload,
)


async def expire_due_now(settings: Settings, limit: int = 500) -> int:
    """Run ``UploadService.expire_due()`` once, as the reaper does."""
    async with open_ferry(settings) as ferry:
        return await ferry.uploads.expire_due(limit=limit)


def parse_expires(value: str) -> datetime:
    assert value.endswith(" GMT"), value
    moment = parsedate_to_datetime(value)
    assert moment.tzinfo is not None
    return moment


async def test_upload_expires_is_an_rfc9110_date_on_post_patch_and_head(
    client: Client, settings: Settings
) -> None:
    now = datetime.now(UTC)
    created = await client.post("/files/", headers={**TUS, "Upload-Length": "10"})
    path = path_of(created.headers["location"])
    patched = await patch(client, path, 0, b"abc")
    status = await head(client, path)
    for response in (created, patched, status):
        expires = parse_expires(response.headers["upload-expires"])
        ttl = timedelta(seconds=settings.upload_ttl_seconds)
        assert now + ttl - timedelta(seconds=5) <= expires <= now + ttl + timedelta(seconds=60)
    # a finished file no longer expires
    done = await patch(client, path, 3, b"defghij")
    assert done.status_code == 204
    assert "upload-expires" not in (await head(client, path)).headers


async def test_expired_upload_answers_410_and_reaper_and_cleanup_remove_staging(
    make_settings: MakeSettings,
) -> None:
    short = make_settings(upload_ttl_seconds=1, reaper_interval_seconds=3600)
    await anyio.to_thread.run_sync(migrate, short)
    async with AsyncTestClient(app=create_app(short)) as short_client:
        unfinished = [await create(short_client, 10) for _ in range(3)]
        for path in unfinished:
            await patch(short_client, path, 0, b"abc")
        finished = await upload(short_client, b"kept forever")
        await anyio.sleep(1.3)
        for path in unfinished:
            assert (await head(short_client, path)).status_code == 410
            late = await short_client.patch(
                path,
                content=b"d",
                headers={**TUS, "Upload-Offset": "3", "Content-Type": OCTETS},
            )
            assert late.status_code == 410
            assert staging_file(short.data_dir, path).exists()

        # The in-process reaper's work, one batch of two: UploadService.expire_due().
        assert await expire_due_now(short, limit=2) == 2
        left = [p for p in unfinished if staging_file(short.data_dir, p).exists()]
        assert len(left) == 1

        # `ferry cleanup` does the same from the command line and takes the last one.
        env = {
            "FERRY_DATA_DIR": str(short.data_dir),
            "FERRY_DATABASE_URL": short.resolved_database_url,
            "FERRY_LOG_DIR": str(short.log_dir),
            "FERRY_AUTH": "none",
        }
        result = await anyio.to_thread.run_sync(
            lambda: CliRunner().invoke(ferry_cli, ["cleanup"], env=env)
        )
        assert result.exit_code == 0, result.output
        assert "expired 1 uploads" in result.output

        for path in unfinished:
            assert not staging_file(short.data_dir, path).exists()
            assert (await head(short_client, path)).status_code == 410
        assert (await short_client.get(finished)).content == b"kept forever"
    assert os.listdir(short.data_dir / "staging") == []
