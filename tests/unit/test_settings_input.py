"""Settings as people type them: sizes with units, log levels in any case, the database
URLs people have, and a warning naming the real variable when a ``FERRY_*`` name is wrong."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from app.settings import (
    SIZE_FIELDS,
    Settings,
    SettingsError,
    load_settings,
    parse_size,
    unknown_variable_warnings,
)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1048576),
        ("512M", 512 * 1024**2),
        ("10G", 10 * 1024**3),
        ("10g", 10 * 1024**3),
        ("1T", 1024**4),
        ("64KB", 64 * 1024),
        ("64kib", 64 * 1024),
        ("1.5GiB", 3 * 1024**3 // 2),
        ("1.5K", 1536),
        (" 8 MiB ", 8 * 1024**2),
        ("100B", 100),
        ("0", 0),
    ],
)
def test_sizes_take_binary_units_in_any_case(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "10Q", "-1", "1e9", "1iB", "G", "1.2.3M", "١٢"])
def test_a_size_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


def test_every_size_setting_reads_units_and_names_itself_when_wrong() -> None:
    for field in SIZE_FIELDS:
        variable = f"FERRY_{field.upper()}"
        settings = load_settings({variable: "6M", "FERRY_MAX_HEADER_BYTES": "7M"}, env_file=None)
        if field != "max_header_bytes":
            assert getattr(settings, field) == 6 * 1024**2, variable
        with pytest.raises(SettingsError, match=rf"^{variable}: '6 parsecs' is not a size"):
            load_settings({variable: "6 parsecs"}, env_file=None)


def test_the_size_settings_are_the_byte_counts() -> None:
    """A new byte-count setting must accept units too: its name says what it counts."""
    counted_in_bytes = {
        field.name
        for field in msgspec.structs.fields(Settings)
        if field.type is not bool and ("size" in field.name or field.name.endswith("_bytes"))
    }
    assert counted_in_bytes == SIZE_FIELDS


def test_sizes_with_units_work_from_the_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("FERRY_MAX_SIZE=10G\nFERRY_QUOTA_BYTES=1.5T\n")
    settings = load_settings({}, env_file)
    assert settings.max_size == 10 * 1024**3
    assert settings.quota_bytes == 3 * 1024**4 // 2


@pytest.mark.parametrize(
    ("text", "level"),
    [("debug", "DEBUG"), ("Info", "INFO"), ("WARNING", "WARNING"), ("warn", "WARNING")],
)
def test_log_levels_accept_any_case(text: str, level: str) -> None:
    assert load_settings({"FERRY_LOG_LEVEL": text}, env_file=None).log_level == level


def test_an_unknown_log_level_names_the_variable() -> None:
    with pytest.raises(SettingsError, match=r"^FERRY_LOG_LEVEL:"):
        load_settings({"FERRY_LOG_LEVEL": "loud"}, env_file=None)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u:p@db.example/ferry", "postgresql+asyncpg://u:p@db.example/ferry"),
        ("postgresql://u@127.0.0.1:5432/ferry", "postgresql+asyncpg://u@127.0.0.1:5432/ferry"),
        ("postgresql+asyncpg://u@h/d", "postgresql+asyncpg://u@h/d"),
        ("sqlite:////srv/ferry.db", "sqlite+aiosqlite:////srv/ferry.db"),
    ],
)
def test_common_database_urls_get_the_async_driver(url: str, expected: str) -> None:
    assert load_settings({"FERRY_DATABASE_URL": url}, env_file=None).database_url == expected


@pytest.mark.parametrize(
    "url",
    [
        "mysql://ferry:s3cret-pw@db/ferry",
        "ferry:s3cret-pw@localhost/ferry",
        "postgresql+asyncpg://ferry:s3cret-pw@db:port/ferry",
        "postgresql+psycopg2://ferry:s3cret-pw@db/ferry",
    ],
)
def test_a_bad_database_url_is_one_line_without_its_password(url: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"FERRY_DATABASE_URL": url}, env_file=None)
    message = str(caught.value)
    assert message.startswith("FERRY_DATABASE_URL: ")
    assert "postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DB" in message
    assert "s3cret-pw" not in message
    assert "\n" not in message


def test_unknown_ferry_variables_are_named_with_the_closest_setting(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("FERRY_DATADIR=/srv/ferry\nFERRY_STORAGE=local\n")
    environ = {
        "FERRY_MAX_SIZ": "10G",
        "FERRY_S3_BUCKET_NAME": "b",
        "FERRY_QQQ": "1",
        "FERRY_API_KEY": "ferry_x",  # ferry ingest's, not a typo
        "FERRY_READ_TIMEOUT": "5",  # an accepted older name
        "PATH": "/bin",
    }
    warnings = unknown_variable_warnings(environ, env_file)
    assert warnings == [
        f"FERRY_DATADIR (in {env_file}) is not a Ferry setting and is ignored; "
        "did you mean FERRY_DATA_DIR?",
        "FERRY_MAX_SIZ (in the environment) is not a Ferry setting and is ignored; "
        "did you mean FERRY_MAX_SIZE?",
        "FERRY_QQQ (in the environment) is not a Ferry setting and is ignored "
        "(.env.example lists every setting)",
        "FERRY_S3_BUCKET_NAME (in the environment) is not a Ferry setting and is ignored; "
        "did you mean FERRY_S3_BUCKET?",
    ]
    assert unknown_variable_warnings({"FERRY_MAX_SIZE": "1G"}, env_file=None) == []
