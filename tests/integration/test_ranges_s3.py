"""The range rules again, with files stored in S3 (SeaweedFS), and redirect downloads.

The tests are the ones of :mod:`tests.integration.test_ranges`, collected here with the
``shared_settings`` fixture pointing at S3. The database does not matter to the S3 read
path, so this module runs on SQLite only to keep the suite short.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from app.db.engine import migrate
from app.settings import Settings
from tests.integration.test_ranges import (
    DATA,
    ETAG,
    SIZE,
    build_settings,
    client,
    file_path,
    test_full_get_has_validators_and_accept_ranges,
    test_head_mirrors_get_without_a_body,
    test_if_range_that_does_not_match_serves_the_whole_file,
    test_if_range_with_current_strong_etag_serves_the_range,
    test_malformed_or_abusive_range_is_ignored_with_200,
    test_overlapping_and_adjacent_ranges_are_coalesced,
    test_overlapping_ranges_never_send_more_than_the_file,
    test_several_ranges_return_multipart_byteranges,
    test_single_range_returns_206_with_content_range,
    test_unsatisfiable_range_returns_416_with_length,
)
from tests.integration.tus_helpers import Client, upload
from tests.support.seaweed import MakeS3Settings, S3Endpoint

__all__ = [
    "client",
    "file_path",
    "test_full_get_has_validators_and_accept_ranges",
    "test_head_mirrors_get_without_a_body",
    "test_if_range_that_does_not_match_serves_the_whole_file",
    "test_if_range_with_current_strong_etag_serves_the_range",
    "test_malformed_or_abusive_range_is_ignored_with_200",
    "test_overlapping_and_adjacent_ranges_are_coalesced",
    "test_overlapping_ranges_never_send_more_than_the_file",
    "test_several_ranges_return_multipart_byteranges",
    "test_single_range_returns_206_with_content_range",
    "test_unsatisfiable_range_returns_416_with_length",
]


@pytest.fixture(scope="module")
def shared_settings(seaweed: S3Endpoint, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Ferry storing in SeaweedFS under a prefix of its own, on SQLite (the S3 read path
    does not touch the database beyond one row)."""
    tmp = tmp_path_factory.mktemp("ranges-s3")
    return build_settings(
        tmp,
        f"sqlite+aiosqlite:///{tmp / 'ferry.db'}",
        **seaweed.settings_overrides(f"t-{uuid.uuid4().hex[:12]}/"),
    )


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only for the redirect test too."""
    return f"sqlite+aiosqlite:///{tmp_path / 'ferry.db'}"


@pytest.fixture
def redirect_settings(make_s3_settings: MakeS3Settings) -> Settings:
    """Ferry on S3 with ``FERRY_DOWNLOAD_MODE=redirect``."""
    built = make_s3_settings(download_mode="redirect", download_redirect_seconds=60)
    migrate(built)
    return built


async def test_redirect_mode_answers_307_to_a_presigned_url_that_serves_ranges(
    redirect_settings: Settings,
) -> None:
    from litestar.testing import AsyncTestClient

    from app.main import create_app

    async with AsyncTestClient(
        app=create_app(redirect_settings), base_url="http://ferry.local"
    ) as client:
        path = await upload(client, DATA)
        # The test client would follow the redirect into the app itself: do not.
        response = await client.get(path, headers={"Range": "bytes=10-19"}, follow_redirects=False)
        assert response.status_code == 307
        assert response.headers["cache-control"] == "no-store"
        location = response.headers["location"]
        assert "Signature" in location or "X-Amz-Signature" in location
        head = await client.head(path, follow_redirects=False)
        assert head.status_code == 307
    async with httpx.AsyncClient() as s3:
        ranged = await s3.get(location, headers={"Range": "bytes=10-19"})
        assert ranged.status_code == 206
        assert ranged.content == DATA[10:20]
        full = await s3.get(location)
        assert full.content == DATA


async def test_s3_download_of_a_larger_file_streams_every_byte(client: Client) -> None:
    data = bytes(range(256)) * 40_000  # ~10 MiB: several S3 read blocks
    path = await upload(client, data)
    response = await client.get(path)
    assert response.content == data
    start = len(data) - 3_000_000
    tail = await client.get(path, headers={"Range": f"bytes={start}-"})
    assert tail.status_code == 206
    assert tail.content == data[start:]


async def test_these_range_tests_really_read_from_s3(client: Client, file_path: str) -> None:
    assert client.app.state.backend.name == "s3"
    assert len(DATA) == SIZE
    assert (await client.get(file_path)).headers["etag"] == ETAG
