"""Simple uploads and the file API on the S3 backend (SeaweedFS): objects in, objects out."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from litestar.testing import AsyncTestClient

from app.db.engine import migrate
from app.main import FerryApp, create_app
from app.settings import Settings
from tests.integration.s3.conftest import MIB, TEST_PART_SIZE, S3View
from tests.integration.tus_helpers import create, patch
from tests.support.seaweed import MakeS3Settings, S3Endpoint
from tests.support.services import postgres_database, running_ferry, zero_stream


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


def test_a_gib_put_streams_into_s3_with_rss_no_higher_than_for_128_mib(
    seaweed: S3Endpoint, s3_prefix: str, s3_view: S3View, tmp_path: Path
) -> None:
    """128 MiB, then 1 GiB by PUT through a real server into S3: right SHA-256, no open
    multipart upload, and the peak RSS does not grow with the file (a buffered part or
    body would add its size)."""
    with (
        postgres_database() as url,
        running_ferry(tmp_path, {"FERRY_DATABASE_URL": url, **seaweed.env(s3_prefix)}) as server,
        httpx.Client(base_url=server.url, timeout=300) as http,
    ):
        peaks = []
        for size in (128 * MIB, 1024 * MIB):
            expected = hashlib.sha256()
            for block in zero_stream(size):
                expected.update(block)
            put = http.put(
                f"/api/files/zeros-{size}.bin",
                content=zero_stream(size),
                headers={"Content-Length": str(size)},
            )
            assert put.status_code == 201, put.text
            assert put.json()["size"] == size
            assert put.json()["sha256"] == expected.hexdigest()
            peaks.append(server.peak_rss_mib())
    assert len(s3_view.object_keys()) == 2
    assert s3_view.open_multipart_uploads() == []
    assert peaks[1] - peaks[0] < 16, f"peak RSS grew from {peaks[0]:.0f} to {peaks[1]:.0f} MiB"


@pytest.mark.parametrize("how", ["simple upload", "tus POST then PATCH"])
async def test_a_refused_type_smaller_than_a_part_leaves_no_object(
    refusing_s3_client: AsyncTestClient[FerryApp], s3_view: S3View, how: str
) -> None:
    """A file of one part is put whole by the body that completes it: a refused type must
    not be left behind in the bucket either."""
    pdf = b"%PDF-1.4\n" + os.urandom(100_000)
    if how == "simple upload":
        response = await refusing_s3_client.put("/api/files/paper.pdf", content=pdf)
    else:
        path = await create(refusing_s3_client, len(pdf))
        response = await patch(refusing_s3_client, path, 0, pdf)
    assert response.status_code == 415, response.text
    assert s3_view.object_keys() == []
