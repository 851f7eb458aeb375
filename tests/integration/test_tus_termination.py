"""tus termination: DELETE frees the upload, its staging file and, once complete, its file."""

from __future__ import annotations

from app.settings import Settings
from tests.integration.tus_helpers import (  # noqa: F401 - fixtures for this module
    TUS,
    Client,
    create,
    database_url,
    head,
    patch,
    staging_file,
    tus_postgres_database,
    upload,
)


async def test_delete_unfinished_upload_is_204_then_gone_and_staging_removed(
    client: Client, settings: Settings
) -> None:
    path = await create(client, 10)
    await patch(client, path, 0, b"abc")
    assert staging_file(settings.data_dir, path).exists()
    response = await client.delete(path, headers=TUS)
    assert response.status_code == 204
    assert response.headers["tus-resumable"] == "1.0.0"
    assert not staging_file(settings.data_dir, path).exists()
    assert (await head(client, path)).status_code in (404, 410)
    assert (await patch(client, path, 3, b"def")).status_code in (404, 410)
    assert (await client.delete(path, headers=TUS)).status_code in (404, 410)
    assert not staging_file(settings.data_dir, path).exists()


async def test_delete_completed_upload_removes_the_stored_file(
    client: Client, settings: Settings
) -> None:
    path = await upload(client, b"a finished file")
    assert (await client.get(path)).status_code == 200
    stored = [p for p in settings.files_dir.rglob("*") if p.is_file()]
    assert len(stored) == 1
    assert (await client.delete(path, headers=TUS)).status_code == 204
    assert (await client.get(path)).status_code in (404, 410)
    assert (await head(client, path)).status_code in (404, 410)
    assert [p for p in settings.files_dir.rglob("*") if p.is_file()] == []
