"""Invariant 5 on S3: expiry and the orphan sweep leave no open multipart upload."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from litestar.testing import AsyncTestClient
from sqlalchemy import update

from app.cli_tasks import run_cleanup
from app.core.clock import utcnow
from app.db.engine import create_engine
from app.db.models import Upload
from app.main import FerryApp
from app.settings import Settings
from tests.integration.s3.conftest import MIB, PART, S3View
from tests.integration.tus_helpers import create, patch, staging_file, upload_id_of


async def wait_for_open_uploads(s3_view: S3View, count: int) -> None:
    for _ in range(200):
        if len(s3_view.open_multipart_uploads()) == count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} open multipart uploads")


async def test_expired_upload_aborts_its_multipart_upload_and_staging(
    s3_client: AsyncTestClient[FerryApp], s3_settings: Settings, s3_view: S3View
) -> None:
    path = await create(s3_client, 3 * PART)
    response = await patch(s3_client, path, 0, b"\x01" * (PART + MIB))
    assert response.status_code == 204
    await wait_for_open_uploads(s3_view, 1)
    engine = create_engine(s3_settings.resolved_database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                update(Upload)
                .where(Upload.id == uuid.UUID(upload_id_of(path)))
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
    finally:
        await engine.dispose()
    assert await run_cleanup(s3_settings) == 1, "ferry cleanup expires it"
    assert s3_view.open_multipart_uploads() == []
    assert not staging_file(s3_settings.data_dir, path).exists()
    gone = await s3_client.head(path, headers={"Tus-Resumable": "1.0.0"})
    assert gone.status_code in (404, 410)


async def test_sweep_aborts_multipart_uploads_no_live_upload_owns(
    s3_client: AsyncTestClient[FerryApp], s3_settings: Settings, s3_view: S3View
) -> None:
    live_path = await create(s3_client, 3 * PART)
    assert (await patch(s3_client, live_path, 0, b"\x02" * PART)).status_code == 204
    await wait_for_open_uploads(s3_view, 1)
    orphan_key = f"{s3_view.prefix}other/{uuid.uuid4()}"
    s3_view.client.create_multipart_upload(Bucket=s3_view.endpoint.bucket, Key=orphan_key)
    outside_key = f"not-ferry-{uuid.uuid4()}"
    outside = s3_view.client.create_multipart_upload(
        Bucket=s3_view.endpoint.bucket, Key=outside_key
    )
    try:
        await wait_for_open_uploads(s3_view, 2)
        await run_cleanup(s3_settings)
        still_open = s3_view.open_multipart_uploads()
        assert len(still_open) == 1, "the orphan is aborted"
        assert still_open[0]["Key"].endswith(upload_id_of(live_path)), "the live one is kept"
        everything = s3_view.client.list_multipart_uploads(Bucket=s3_view.endpoint.bucket)
        assert outside_key in [u["Key"] for u in everything.get("Uploads", [])], (
            "keys outside Ferry's prefix are never touched"
        )
    finally:
        s3_view.client.abort_multipart_upload(
            Bucket=s3_view.endpoint.bucket, Key=outside_key, UploadId=outside["UploadId"]
        )
