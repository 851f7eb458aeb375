"""Fixtures for S3 integration tests: a migrated S3 Ferry app and S3 assertions.

SeaweedFS enforces S3's 5 MiB minimum part size on completion, like AWS, so the tests cut
5 MiB parts; moto checks the same rule in ``test_aws_part_rules.py``.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from app.core.checksums import ChecksumSpec
from app.db.engine import migrate
from app.main import FerryApp, create_app
from app.settings import Settings
from app.uploads.service import AppendRequest
from tests.conftest import MakeSettings
from tests.support.seaweed import MakeS3Settings, S3Endpoint

MIB = 1024 * 1024
PART = 5 * MIB
TEST_PART_SIZE = PART


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite for the S3 tests: the storage logic is what they test, and time is short.

    The ledger's SQL runs on PostgreSQL in the crash tests (``test_s3_crashes.py``).
    """
    return f"sqlite+aiosqlite:///{tmp_path / 'ferry.db'}"


@pytest.fixture
def s3_settings(make_s3_settings: MakeS3Settings) -> Settings:
    """Migrated settings for a Ferry that stores in SeaweedFS with 5 MiB parts."""
    built = make_s3_settings(s3_min_part_size=TEST_PART_SIZE)
    migrate(built)
    return built


@pytest.fixture
def moto_settings(make_settings: MakeSettings, moto_s3: S3Endpoint, s3_prefix: str) -> Settings:
    """Migrated settings for a Ferry that stores in moto's S3 (AWS's part rules)."""
    built = make_settings(**moto_s3.settings_overrides(s3_prefix), s3_min_part_size=5 * MIB)
    migrate(built)
    return built


@pytest.fixture
async def moto_client(moto_settings: Settings) -> AsyncIterator[AsyncTestClient[FerryApp]]:
    """The app on moto's S3, lifespan included."""
    async with AsyncTestClient(app=create_app(moto_settings), base_url="http://ferry.local") as c:
        yield c


@pytest.fixture
async def s3_client(s3_settings: Settings) -> AsyncIterator[AsyncTestClient[FerryApp]]:
    """The app on S3, lifespan included."""
    async with AsyncTestClient(app=create_app(s3_settings), base_url="http://ferry.local") as c:
        yield c


class S3View:
    """Blocking look-ups in the test bucket under one test's prefix."""

    def __init__(self, endpoint: S3Endpoint, prefix: str) -> None:
        self.endpoint = endpoint
        self.prefix = prefix
        self.client: Any = endpoint.client()

    def open_multipart_uploads(self) -> list[dict[str, Any]]:
        """Multipart uploads still open under the prefix."""
        page = self.client.list_multipart_uploads(Bucket=self.endpoint.bucket, Prefix=self.prefix)
        return list(page.get("Uploads", []))

    def object_keys(self) -> list[str]:
        """Object keys under the prefix."""
        page = self.client.list_objects_v2(Bucket=self.endpoint.bucket, Prefix=self.prefix)
        return [item["Key"] for item in page.get("Contents", [])]

    def sha256_of(self, key: str) -> str:
        """SHA-256 of a stored object, streamed."""
        body = self.client.get_object(Bucket=self.endpoint.bucket, Key=key)["Body"]
        digest = hashlib.sha256()
        for block in iter(lambda: body.read(1024 * 1024), b""):
            digest.update(block)
        return digest.hexdigest()

    def parts_of(self, key: str, upload_id: str) -> list[dict[str, Any]]:
        """Parts S3 holds for an open multipart upload."""
        page = self.client.list_parts(Bucket=self.endpoint.bucket, Key=key, UploadId=upload_id)
        return list(page.get("Parts", []))


@pytest.fixture
def s3_view(seaweed: S3Endpoint, s3_prefix: str) -> S3View:
    """Assertions against the session's SeaweedFS under this test's prefix."""
    return S3View(seaweed, s3_prefix)


def start_streamed_patch(
    client: AsyncTestClient[FerryApp],
    upload_id: str,
    length: int,
    body: AsyncIterator[bytes],
    *,
    offset: int = 0,
    checksum: ChecksumSpec | None = None,
) -> concurrent.futures.Future[object]:
    """One PATCH whose body a test paces (the test client reads a request's whole body
    before the app sees it), run on the app's own loop as a request would be."""
    ferry = client.app.state.ferry
    request = AppendRequest(
        upload_id=uuid.UUID(upload_id), offset=offset, content_length=length, checksum=checksum
    )

    async def append() -> object:
        return await ferry.uploads.append(request, body)

    assert client.blocking_portal is not None
    return client.blocking_portal.start_task_soon(append)
