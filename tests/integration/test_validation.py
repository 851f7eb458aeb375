"""Validation shared by every upload path: each rule refuses with its status, leaving nothing."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select

from app.db.engine import create_engine, create_session_factory, migrate
from app.db.models import File, Upload, UploadState
from app.main import FerryApp, create_app
from app.settings import Settings
from tests.conftest import MakeSettings
from tests.integration.tus_helpers import (  # noqa: F401 - per-module PostgreSQL database
    database_url,
    tus_postgres_database,
)

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(20_000)
TEXT = b"just some words\n" * 1000
TUS = {"Tus-Resumable": "1.0.0"}
PATCH_HEADERS = {**TUS, "Content-Type": "application/offset+octet-stream"}


@pytest.fixture
def policy_settings(make_settings: MakeSettings) -> Settings:
    """A Ferry that refuses PNG, allows only images and text, and caps text at 10 000 bytes."""
    settings = make_settings(
        denied_types=["image/png"],
        allowed_types=["image/*", "text/*"],
        max_size_text=10_000,
        max_size=1_000_000,
    )
    migrate(settings)
    return settings


@pytest.fixture
async def policy_client(
    policy_settings: Settings,
) -> AsyncIterator[tuple[AsyncTestClient[FerryApp], Settings]]:
    """An in-process client of the policy Ferry."""
    settings = policy_settings
    async with AsyncTestClient(app=create_app(settings), base_url="http://ferry.local") as client:
        yield client, settings


async def _assert_nothing_left(settings: Settings) -> None:
    staged = list(settings.staging_dir.iterdir()) if settings.staging_dir.exists() else []
    stored = (
        [p for p in settings.files_dir.rglob("*") if p.is_file()]
        if settings.files_dir.exists()
        else []
    )
    assert staged == [], staged
    assert stored == [], stored
    engine = create_engine(settings.resolved_database_url)
    try:
        async with create_session_factory(engine)() as session:
            files = await session.scalar(select(func.count()).select_from(File))
            live = await session.scalar(
                select(func.count())
                .select_from(Upload)
                .where(Upload.state.in_([UploadState.ACTIVE, UploadState.COMPLETED]))
            )
    finally:
        await engine.dispose()
    assert (files, live) == (0, 0)


async def test_deny_listed_type_by_magic_bytes_is_415_on_put(
    policy_client: tuple[AsyncTestClient[FerryApp], Settings],
) -> None:
    client, settings = policy_client
    # The client claims text; the magic bytes say PNG.
    response = await client.put(
        "/api/files/innocent.txt", content=PNG, headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415
    assert "FERRY_DENIED_TYPES" in response.text
    await _assert_nothing_left(settings)


async def test_type_outside_allow_list_is_415_on_multipart(
    policy_client: tuple[AsyncTestClient[FerryApp], Settings],
) -> None:
    client, settings = policy_client
    zip_bytes = b"PK\x03\x04" + os.urandom(5000)
    response = await client.post(
        "/api/files",
        files=[
            ("file", ("ok.txt", b"fine text\n", "text/plain")),
            ("file", ("archive.zip", zip_bytes, "text/plain")),
        ],
    )
    assert response.status_code == 415
    assert "FERRY_ALLOWED_TYPES" in response.text
    # All or nothing: the accepted first part was removed too.
    await _assert_nothing_left(settings)


async def test_category_limit_is_413_naming_the_category(
    policy_client: tuple[AsyncTestClient[FerryApp], Settings],
) -> None:
    client, settings = policy_client
    response = await client.put("/api/files/long.txt", content=TEXT)
    assert response.status_code == 413
    assert "FERRY_MAX_SIZE_TEXT" in response.text
    await _assert_nothing_left(settings)


async def test_max_size_is_413_before_any_byte_is_stored(
    policy_client: tuple[AsyncTestClient[FerryApp], Settings],
) -> None:
    client, settings = policy_client
    response = await client.put("/api/files/huge.bin", content=b"\x00" * 1_000_001)
    assert response.status_code == 413
    assert "FERRY_MAX_SIZE" in response.text
    await _assert_nothing_left(settings)


async def test_tus_upload_of_denied_type_is_refused_after_first_bytes_and_removed(
    policy_client: tuple[AsyncTestClient[FerryApp], Settings],
) -> None:
    client, settings = policy_client
    created = await client.post("/files/", headers={**TUS, "Upload-Length": str(len(PNG))})
    assert created.status_code == 201
    url = created.headers["location"]
    # The first 10 000 bytes carry the magic bytes: refused before the rest is sent.
    first = await client.patch(
        url, content=PNG[:10_000], headers={**PATCH_HEADERS, "Upload-Offset": "0"}
    )
    assert first.status_code == 415
    assert "FERRY_DENIED_TYPES" in first.text
    status = await client.head(url, headers=TUS)
    assert status.status_code in (404, 410)
    await _assert_nothing_left(settings)


async def test_small_tus_upload_is_checked_at_completion(
    policy_client: tuple[AsyncTestClient[FerryApp], Settings],
) -> None:
    client, settings = policy_client
    small_png = PNG[:2000]
    created = await client.post(
        "/files/",
        content=small_png,
        headers={**PATCH_HEADERS, "Upload-Length": str(len(small_png))},
    )
    assert created.status_code == 415
    await _assert_nothing_left(settings)


async def test_allowed_upload_passes_every_rule(
    policy_client: tuple[AsyncTestClient[FerryApp], Settings],
) -> None:
    client, _ = policy_client
    response = await client.put("/api/files/short.txt", content=b"short text\n")
    assert response.status_code == 201
    gif = b"GIF89a" + os.urandom(100)
    response = await client.put("/api/files/pic.gif", content=gif)
    assert response.status_code == 201, response.text
    assert response.json()["category"] == "images"


def test_policy_settings_come_from_environment(tmp_path: Path) -> None:
    from app.settings import load_settings
    from app.uploads.validation import UploadPolicy

    settings = load_settings(
        {
            "FERRY_DENIED_TYPES": "image/png, application/x-msdownload",
            "FERRY_MAX_SIZE_MEDIA": "1000",
            "FERRY_DATA_DIR": str(tmp_path),
        },
        env_file=None,
    )
    policy = UploadPolicy.from_settings(settings)
    assert policy.denied_types == ("image/png", "application/x-msdownload")
    assert policy.category_max_sizes == {"media": 1000}
