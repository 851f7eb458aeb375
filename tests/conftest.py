"""Fixtures shared by every test layer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from app.db.engine import migrate
from app.main import FerryApp, create_app
from app.settings import Settings
from tests.support.services import postgres_database

MakeSettings = Callable[..., Settings]

#: The ``postgres``, ``s3``, ``node``, ``browser`` and ``serve`` markers, applied from what
#: each test uses; S3 fixtures (SeaweedFS, moto, ``make_s3_settings``) for every test layer;
#: ``pytester`` for the test of the markers (tests/unit/test_markers.py).
pytest_plugins = ["tests.support.markers", "tests.support.seaweed", "pytester"]


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each integration test runs once on SQLite and once on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'ferry.db'}"
        return
    with postgres_database() as url:
        yield url


@pytest.fixture
def make_settings(tmp_path: Path, database_url: str) -> MakeSettings:
    """Settings for an isolated Ferry: own data dir, own database, auth off."""

    def build(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "log_dir": tmp_path / "logs",
            "database_url": database_url,
            "auth": ("none",),
        }
        base.update(overrides)
        return msgspec.convert(base, Settings, strict=False, dec_hook=_path_hook)

    return build


def _path_hook(kind: type, value: object) -> object:
    if kind is Path:
        return Path(str(value))
    raise NotImplementedError


@pytest.fixture
def settings(make_settings: MakeSettings) -> Settings:
    """Default test settings, migrated."""
    built = make_settings()
    migrate(built)
    return built


@pytest.fixture
def app(settings: Settings) -> FerryApp:
    """The application under test."""
    return create_app(settings)


@pytest.fixture
async def client(app: FerryApp) -> AsyncIterator[AsyncTestClient[FerryApp]]:
    """An HTTP client talking to the app in-process, lifespan included."""
    async with AsyncTestClient(app=app, base_url="http://ferry.local") as test_client:
        yield test_client
