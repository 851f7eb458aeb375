"""Settings: FERRY_ variables, the .env file, legacy S3 names, and errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import Settings, SettingsError, load_settings


def load(environ: dict[str, str], env_file: Path | None = None) -> Settings:
    return load_settings(environ, env_file)


def test_defaults_without_any_variable() -> None:
    settings = load({})
    assert settings == Settings()
    assert settings.storage == "local"
    assert settings.cors_origins == ("*",)
    assert settings.resolved_database_url.startswith("sqlite+aiosqlite:///")
    assert settings.resolved_database_url.endswith("/data/ferry.db")


def test_ferry_variables_are_typed() -> None:
    settings = load(
        {
            "FERRY_DATA_DIR": "/srv/ferry",
            "FERRY_MAX_SIZE": "1048576",
            "FERRY_AUTO_MIGRATE": "false",
            "FERRY_PORT": " 9000 ",
            "FERRY_CORS_ORIGINS": "https://a.example, https://b.example,",
            "FERRY_AUTH": "keys,jwt",
        }
    )
    assert settings.data_dir == Path("/srv/ferry")
    assert settings.staging_dir == Path("/srv/ferry/staging")
    assert settings.files_dir == Path("/srv/ferry/files")
    assert settings.max_size == 1048576
    assert settings.auto_migrate is False
    assert settings.port == 9000
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.auth == ("keys", "jwt")


def test_unrelated_variables_are_ignored() -> None:
    assert load({"PATH": "/bin", "FERRY_UNKNOWN_THING": "1"}) == Settings()


def test_env_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("FERRY_MAX_SIZE=100\nFERRY_PORT=7000\n# comment\n")
    settings = load({"FERRY_PORT": "7001"}, env_file)
    assert settings.max_size == 100
    assert settings.port == 7001


def test_defaults_apply_only_where_neither_the_environment_nor_env_file_sets_a_variable(
    tmp_path: Path,
) -> None:
    env_file = tmp_path / ".env"
    defaults = {"FERRY_AUTH": "none"}
    assert load_settings({}, env_file, defaults).auth == ("none",)
    env_file.write_text("FERRY_AUTH=keys\n")
    assert load_settings({}, env_file, defaults).auth == ("keys",)
    assert load_settings({"FERRY_AUTH": "jwt"}, env_file, defaults).auth == ("jwt",)


def test_missing_env_file_is_fine(tmp_path: Path) -> None:
    assert load({}, tmp_path / "absent.env") == Settings()


def test_legacy_s3_names_are_fallbacks_for_the_ferry_names() -> None:
    legacy = {
        "ENDPOINT_URL": "http://s3.local:8333",
        "ACCESS_KEY": "old-key",
        "SECRET_KEY": "old-secret",
        "BUCKET_NAME": "old-bucket",
        "FERRY_STORAGE": "s3",
    }
    settings = load(legacy)
    assert settings.s3_endpoint_url == "http://s3.local:8333"
    assert settings.s3_access_key == "old-key"
    assert settings.s3_secret_key == "old-secret"
    assert settings.s3_bucket == "old-bucket"
    assert load({**legacy, "FERRY_S3_BUCKET": "new-bucket"}).s3_bucket == "new-bucket"


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"FERRY_MAX_SIZE": "lots"}, "FERRY_MAX_SIZE"),
        ({"FERRY_MAX_SIZE": "-1"}, "FERRY_MAX_SIZE"),
        ({"FERRY_PORT": "70000"}, "FERRY_PORT"),
        ({"FERRY_STORAGE": "ftp"}, "FERRY_STORAGE"),
        ({"FERRY_AUTO_MIGRATE": "maybe"}, "FERRY_AUTO_MIGRATE"),
        ({"FERRY_UPLOAD_TTL_SECONDS": "0"}, "FERRY_UPLOAD_TTL_SECONDS"),
        ({"FERRY_AUTH": "keys,password"}, "FERRY_AUTH"),
        ({"FERRY_AUTH": "none,keys"}, "FERRY_AUTH"),
        ({"FERRY_STORAGE": "s3"}, "FERRY_S3_BUCKET"),
        (
            {"FERRY_STORAGE": "s3", "FERRY_S3_BUCKET": "b", "FERRY_S3_MIN_PART_SIZE": "1024"},
            "FERRY_S3_MIN_PART_SIZE",
        ),
        ({"FERRY_WEBHOOK_URL": "https://hooks.example/ferry"}, "FERRY_WEBHOOK_SECRET"),
        ({"FERRY_SIGNING_KEY": "change-me-to-a-long-random-string"}, "FERRY_SIGNING_KEY"),
        ({"FERRY_SIGNING_KEY": "x" * 31}, "FERRY_SIGNING_KEY"),
        ({"FERRY_SIGNING_KEY": "é" * 15}, "FERRY_SIGNING_KEY"),
    ],
)
def test_bad_value_raises_one_line_naming_the_variable(
    environ: dict[str, str], variable: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load(environ)
    message = str(caught.value)
    assert message.startswith(f"{variable}:")
    assert "\n" not in message


def test_weak_secrets_stop_start_up_but_strong_or_absent_ones_do_not(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "FERRY_WEBHOOK_URL=https://hooks.example/ferry\nFERRY_WEBHOOK_SECRET=\n"
        "FERRY_SIGNING_KEY=change-me-to-a-long-random-string\n"
    )
    with pytest.raises(SettingsError, match=r"^FERRY_WEBHOOK_SECRET: required"):
        load({}, env_file)
    with pytest.raises(SettingsError, match=r"^FERRY_SIGNING_KEY: still the placeholder"):
        load({"FERRY_WEBHOOK_SECRET": "s"}, env_file)
    strong = load({"FERRY_WEBHOOK_SECRET": "s", "FERRY_SIGNING_KEY": "k" * 32}, env_file)
    assert strong.signing_key == "k" * 32
    assert load({}).signing_key == ""  # empty: a random per-process key, with a warning


def test_bad_value_in_env_file_names_the_variable(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("FERRY_LOCK_LEASE_SECONDS=soon\n")
    with pytest.raises(SettingsError, match=r"^FERRY_LOCK_LEASE_SECONDS:"):
        load({}, env_file)


@pytest.mark.parametrize(
    ("variables", "reason"),
    [
        ({}, "PostgreSQL"),
        ({"FERRY_DATABASE_URL": "sqlite+aiosqlite:///x.db"}, "PostgreSQL"),
        ({"FERRY_STORAGE": "s3", "FERRY_S3_BUCKET": "b"}, "PostgreSQL"),
    ],
)
def test_several_workers_are_refused_where_processes_cannot_share_the_work(
    variables: dict[str, str], reason: str
) -> None:
    with pytest.raises(SettingsError, match=rf"^FERRY_WORKERS: .*{reason}"):
        load_settings({"FERRY_WORKERS": "2", **variables}, env_file=None)


@pytest.mark.parametrize("storage", [{}, {"FERRY_STORAGE": "s3", "FERRY_S3_BUCKET": "b"}])
def test_several_workers_with_postgresql_are_accepted_on_local_and_s3_storage(
    storage: dict[str, str],
) -> None:
    settings = load_settings(
        {"FERRY_WORKERS": "4", "FERRY_DATABASE_URL": "postgresql+asyncpg://h/db", **storage},
        env_file=None,
    )
    assert settings.workers == 4


def test_connection_limits_have_safe_defaults_and_are_read_from_the_environment() -> None:
    defaults = load({})
    assert defaults.max_header_bytes == 64 * 1024
    assert defaults.header_timeout_seconds == 10
    assert defaults.keep_alive_seconds == 15
    assert defaults.max_connections == 1000
    assert defaults.write_timeout_seconds == 60
    assert defaults.max_downloads == 256
    tuned = load(
        {
            "FERRY_MAX_HEADER_BYTES": "32768",
            "FERRY_HEADER_TIMEOUT_SECONDS": "5",
            "FERRY_KEEP_ALIVE_SECONDS": "2",
            "FERRY_MAX_CONNECTIONS": "10",
            "FERRY_WRITE_TIMEOUT_SECONDS": "30",
            "FERRY_MAX_DOWNLOADS": "3",
        }
    )
    assert (tuned.max_header_bytes, tuned.header_timeout_seconds, tuned.max_downloads) == (
        32768,
        5,
        3,
    )
    with pytest.raises(SettingsError, match=r"^FERRY_MAX_CONNECTIONS:"):
        load({"FERRY_MAX_CONNECTIONS": "0"})


def test_header_cap_must_exceed_the_upload_metadata_cap() -> None:
    with pytest.raises(SettingsError, match=r"^FERRY_MAX_HEADER_BYTES: .*FERRY_MAX_METADATA_BYTES"):
        load({"FERRY_MAX_HEADER_BYTES": "16384", "FERRY_MAX_METADATA_BYTES": "16384"})
