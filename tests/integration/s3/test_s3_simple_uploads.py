"""Simple uploads and the file API on the S3 backend (SeaweedFS): objects in, objects out."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator

import pytest
from litestar.testing import AsyncTestClient

from app.db.engine import migrate
from app.main import FerryApp, create_app
from app.settings import Settings
from tests.integration.s3.conftest import MIB, TEST_PART_SIZE, S3View
from tests.support.seaweed import MakeS3Settings


@pytest.fixture
def refusing_s3_settings(make_s3_settings: MakeS3Settings) -> Settings:
    """S3 Ferry that refuses PDF documents (by magic bytes)."""
    settings = make_s3_settings(s3_min_part_size=TEST_PART_SIZE, denied_types=["application/pdf"])
    migrate(settings)
    return settings


@pytest.fixture
async def refusing_s3_client(
    refusing_s3_settings: Settings,
) -> AsyncIterator[AsyncTestClient[FerryApp]]:
    settings = refusing_s3_settings
    async with AsyncTestClient(app=create_app(settings), base_url="http://ferry.local") as c:
        yield c


async def test_put_and_multipart_store_objects_and_delete_removes_them(
    s3_client: AsyncTestClient[FerryApp], s3_view: S3View
) -> None:
    big = os.urandom(12 * MIB)  # more than two S3 parts
    put = await s3_client.put("/api/files/big.bin", content=big)
    assert put.status_code == 201, put.text
    assert put.json()["sha256"] == hashlib.sha256(big).hexdigest()
    posted = await s3_client.post(
        "/api/files", files=[("file", ("note.txt", b"hello s3\n", "text/plain"))]
    )
    assert posted.status_code == 201, posted.text
    keys = s3_view.object_keys()
    assert len(keys) == 2
    assert hashlib.sha256(big).hexdigest() in {s3_view.sha256_of(key) for key in keys}
    assert s3_view.open_multipart_uploads() == []
    for uid in (put.json()["uid"], posted.json()["files"][0]["uid"]):
        assert (await s3_client.delete(f"/api/files/{uid}")).status_code == 204
    assert s3_view.object_keys() == []


async def test_refused_type_leaves_no_object_and_no_open_multipart_upload(
    refusing_s3_client: AsyncTestClient[FerryApp], s3_view: S3View
) -> None:
    pdf = b"%PDF-1.4\n" + os.urandom(11 * MIB)
    response = await refusing_s3_client.put("/api/files/paper.pdf", content=pdf)
    assert response.status_code == 415
    assert s3_view.object_keys() == []
    assert s3_view.open_multipart_uploads() == []
