"""Typed settings read once from the environment and an optional ``.env`` file.

Every variable carries the ``FERRY_`` prefix (``FERRY_DATA_DIR`` sets ``data_dir``). The
original deployment's S3 names (``ENDPOINT_URL``, ``ACCESS_KEY``, ``SECRET_KEY``,
``BUCKET_NAME``) are accepted as fallbacks. A bad value raises :class:`SettingsError`
naming the variable, so start-up can stop with one line instead of a traceback.

Sizes (``FERRY_MAX_SIZE=10G``) take an optional unit; log levels any case; a ``FERRY_*``
name that is no setting is reported by :func:`unknown_variable_warnings` with the closest
real one, since a typo would otherwise silently leave the default in place.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from dotenv import dotenv_values

ENV_PREFIX = "FERRY_"

#: Original-service names accepted when the ``FERRY_`` one is unset.
LEGACY_NAMES: dict[str, str] = {
    "s3_endpoint_url": "ENDPOINT_URL",
    "s3_access_key": "ACCESS_KEY",
    "s3_secret_key": "SECRET_KEY",
    "s3_bucket": "BUCKET_NAME",
    # The operations issue names these two without the unit suffix.
    "read_timeout_seconds": "FERRY_READ_TIMEOUT",
    "shutdown_timeout_seconds": "FERRY_SHUTDOWN_TIMEOUT",
}

#: Settings whose environment value is a comma-separated list.
LIST_FIELDS = frozenset({"cors_origins", "auth", "allowed_types", "denied_types"})

#: Settings counted in bytes, whose value may carry a unit (see :func:`parse_size`).
SIZE_FIELDS = frozenset(
    {
        "s3_min_part_size",
        "max_size",
        "max_size_images",
        "max_size_media",
        "max_size_text",
        "max_size_other",
        "max_metadata_bytes",
        "max_header_bytes",
        "quota_bytes",
        "hook_max_response_bytes",
        "log_max_bytes",
    }
)

#: ``FERRY_*`` variables read by something other than the server's settings: ``ferry
#: ingest``'s options and the test suite's and benchmarks' PostgreSQL. Not typos.
OTHER_VARIABLES = frozenset(
    {"FERRY_API_KEY", "FERRY_SERVER", "FERRY_TEST_POSTGRES", "FERRY_BENCH_POSTGRES"}
)

#: Binary multiples: ``K`` is 1024 bytes, and ``KB`` and ``KiB`` mean the same.
SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(?:([KMGT])(?:I?B)?|B)?", re.ASCII)

#: Log level spellings accepted, any case, and the level each one means.
LOG_LEVELS = {
    "debug": "DEBUG",
    "info": "INFO",
    "warning": "WARNING",
    "warn": "WARNING",
    "error": "ERROR",
}

#: Database URL schemes Ferry can use, and the async driver each one means.
DATABASE_SCHEMES = {
    "postgresql+asyncpg": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "sqlite": "sqlite+aiosqlite",
}

#: ``FERRY_SIGNING_KEY``'s placeholder in ``.env.example``: public, so it signs nothing.
EXAMPLE_SIGNING_KEY = "change-me-to-a-long-random-string"
#: Shortest accepted ``FERRY_SIGNING_KEY`` (HMAC-SHA256 keys of a hash's length).
MIN_SIGNING_KEY_BYTES = 32

PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class SettingsError(ValueError):
    """A configuration value is missing or invalid; the message names the variable."""


class Settings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Ferry's configuration. Field ``x`` is set by the variable ``FERRY_X``."""

    data_dir: Path = Path("data")
    """Root of staging files and locally stored files."""

    database_url: str = ""
    """SQLAlchemy async URL; empty means a SQLite file ``ferry.db`` under ``data_dir``."""

    auto_migrate: bool = True
    """Apply pending Alembic migrations when ``ferry serve`` starts."""

    storage: Literal["local", "s3"] = "local"
    """Where completed files live: the local disk or an S3-compatible object store."""

    s3_endpoint_url: str = ""
    """S3 endpoint for non-AWS stores (SeaweedFS, MinIO, R2); empty means AWS."""

    s3_access_key: str = ""
    """S3 access key id."""

    s3_secret_key: str = ""
    """S3 secret access key."""

    s3_bucket: str = ""
    """Bucket that holds completed files."""

    s3_region: str = "us-east-1"
    """Region used for request signing."""

    s3_prefix: str = "ferry/"
    """Key prefix of every object Ferry writes; the reaper only touches keys below it."""

    s3_min_part_size: PositiveInt = 8 * 1024 * 1024
    """Smallest multipart part size; S3 requires at least 5 MiB for every part but the last."""

    s3_max_parts: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 10_000
    """Most parts one multipart upload may have (10,000 on AWS)."""

    s3_part_concurrency: PositiveInt = 4
    """Parts of one upload sent to S3 at the same time."""

    s3_timeout_seconds: PositiveInt = 60
    """S3 read timeout; a PATCH waits at most twice this (and 5 s) for S3 to take its bytes,
    then answers 503 having acknowledged nothing."""

    max_size: NonNegativeInt = 1024**4
    """Largest upload in bytes, announced as ``Tus-Max-Size``."""

    allowed_types: tuple[str, ...] = ()
    """Content types (sniffed from magic bytes; ``image/*`` patterns) accepted; empty: all."""

    denied_types: tuple[str, ...] = ()
    """Content types (sniffed from magic bytes; ``image/*`` patterns) refused with 415."""

    max_size_images: NonNegativeInt = 0
    """Largest file of the ``images`` category in bytes; 0: only ``max_size`` applies."""

    max_size_media: NonNegativeInt = 0
    """Largest file of the ``media`` category in bytes; 0: only ``max_size`` applies."""

    max_size_text: NonNegativeInt = 0
    """Largest file of the ``text`` category in bytes; 0: only ``max_size`` applies."""

    max_size_other: NonNegativeInt = 0
    """Largest file of the ``other`` category in bytes; 0: only ``max_size`` applies."""

    max_metadata_bytes: PositiveInt = 16 * 1024
    """Largest ``Upload-Metadata`` header accepted (431 above it); also a file's metadata
    after ``PATCH /api/files/{uid}`` (413)."""

    max_metadata_keys: PositiveInt = 64
    """Most keys one ``Upload-Metadata`` header (or a file's metadata) may carry (400 above it)."""

    max_concat_parts: PositiveInt = 1000
    """Most partial uploads one final upload may name (tus concatenation; 400 above it). Each
    partial may be named once: a final's bytes are counted against the owner's quota."""

    upload_ttl_seconds: PositiveInt = 24 * 3600
    """Unfinished uploads expire this long after their last activity."""

    reaper_interval_seconds: PositiveInt = 300
    """How often the in-process reaper removes expired uploads."""

    lock_lease_seconds: PositiveInt = 30
    """Lease of the one-writer lock; a crashed writer's lock frees itself after it."""

    read_timeout_seconds: PositiveInt = 60
    """A PATCH whose client sends nothing for this long is ended; its bytes are kept."""

    max_header_bytes: PositiveInt = 64 * 1024
    """Largest request head (request line and header fields) or trailer section; a larger
    one is answered 431 and its connection closed."""

    header_timeout_seconds: PositiveInt = 10
    """A request head not complete this long after its first byte (or after the connection
    opened) is answered 408 and its connection closed; bodies have their own read timeout."""

    keep_alive_seconds: PositiveInt = 15
    """An idle keep-alive connection is closed after this long."""

    max_connections: PositiveInt = 1000
    """Open connections one server process keeps; a request on one more is answered 503
    with ``Retry-After`` and its connection closed."""

    write_timeout_seconds: PositiveInt = 60
    """A response whose client reads nothing for this long is cut off (its connection
    closed), so a stalled reader holds no memory or download slot for ever."""

    max_downloads: PositiveInt = 256
    """File downloads (``GET``) one server process streams at once; more are answered 503
    with ``Retry-After``."""

    node_id: str = ""
    """Name of this server instance in lock records; empty means the host name."""

    cors_origins: tuple[str, ...] = ("*",)
    """Origins allowed to call Ferry from a browser (``*`` allows any)."""

    auth: tuple[Literal["keys", "jwt", "none"], ...] = ("keys",)
    """Accepted credentials: ``keys``, ``jwt``, ``keys,jwt`` or ``none``."""

    allow_no_auth: bool = False
    """Let ``ferry serve`` bind a non-loopback address with ``FERRY_AUTH=none``."""

    jwt_algorithm: Literal["HS256", "RS256"] = "HS256"
    """Signature algorithm of accepted JWT bearer tokens."""

    jwt_secret: str = ""
    """HS256 shared secret (at least 32 bytes)."""

    jwt_public_key: str = ""
    """RS256 public key: PEM text, or the path of a PEM file."""

    jwt_issuer: str = ""
    """Required ``iss`` claim of JWTs; empty accepts none (issuer must then be unset)."""

    jwt_audience: str = ""
    """Required ``aud`` claim of JWTs."""

    jwt_owner_claim: str = "sub"
    """Claim naming the owner of a JWT's uploads; ``ferry_admin: true`` makes it an admin."""

    quota_bytes: NonNegativeInt = 0
    """Bytes one owner may store: files, unfinished uploads (their declared length, else the
    bytes received so far) and completed partial uploads; 0 = no limit."""

    quota_active_uploads: NonNegativeInt = 0
    """Unfinished uploads one owner may have at once; 0 = no limit."""

    create_rate_per_minute: NonNegativeInt = 0
    """Upload creations per owner per minute (token bucket shared by every node); 0 = no
    limit."""

    create_burst: PositiveInt = 10
    """Creations an owner may make at once before the per-minute rate applies."""

    pre_create_hook_url: str = ""
    """URL POSTed before an upload is created; it may reject it or change its metadata."""

    hook_timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    """Time the pre-create hook has to answer; no answer in time rejects the upload (503)."""

    hook_max_response_bytes: PositiveInt = 64 * 1024
    """Largest pre-create hook answer read; a longer one rejects the upload (503)."""

    webhook_url: str = ""
    """URL that receives post-finish and post-terminate events (empty: none are sent)."""

    webhook_secret: str = ""
    """HMAC-SHA256 key signing each webhook (``Ferry-Signature``); required with a URL."""

    webhook_max_attempts: PositiveInt = 12
    """Deliveries tried per event before it is given up (and logged as an error)."""

    webhook_retry_seconds: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    """First retry delay; it doubles per attempt up to ``webhook_retry_max_seconds``."""

    webhook_retry_max_seconds: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    """Longest delay between two delivery attempts."""

    webhook_poll_seconds: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    """How often the outbox is checked for due deliveries."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Lowest level written to stdout and ``ferry.log``."""

    log_max_bytes: PositiveInt = 10 * 1024 * 1024
    """Size at which ``ferry.log`` and ``error.log`` are rotated."""

    log_backups: NonNegativeInt = 5
    """Rotated log files kept."""

    shutdown_timeout_seconds: PositiveInt = 30
    """On SIGTERM, running requests get this long before the server exits anyway."""

    signing_key: str = ""
    """Secret for signed download links, at least 32 bytes; empty: a random per-process key
    (with a warning)."""

    download_mode: Literal["proxy", "redirect"] = "proxy"
    """``proxy`` streams files through Ferry; ``redirect`` answers 307 to a presigned S3 URL
    (the local backend always proxies)."""

    download_redirect_seconds: PositiveInt = 300
    """Lifetime of the presigned URL a redirect download points to."""

    max_ranges: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    """Most byte ranges one ``Range`` header may ask for; more are ignored (the whole file)."""

    log_dir: Path = Path("logs")
    """Where ``ferry.log`` and ``error.log`` are written."""

    host: str = "127.0.0.1"
    """Address ``ferry serve`` binds to."""

    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    """Server processes sharing the port (one event loop each). More than one needs
    PostgreSQL; see ``app/ops/workers.py``."""

    port: Port = 8000
    """Port ``ferry serve`` listens on."""

    @property
    def staging_dir(self) -> Path:
        """Directory of in-progress uploads, one file per upload."""
        return self.data_dir / "staging"

    @property
    def files_dir(self) -> Path:
        """Directory of completed files on the local backend."""
        return self.data_dir / "files"

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file under the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'ferry.db').resolve()}"

    @property
    def resolved_node_id(self) -> str:
        """This instance's name in lock records."""
        return self.node_id or os.uname().nodename


def _raw_values(
    environ: Mapping[str, str], env_file: Path | None, defaults: Mapping[str, str]
) -> dict[str, str]:
    """Collect ``FERRY_*`` values: the environment wins over the ``.env`` file, which wins
    over ``defaults``."""
    merged: dict[str, str] = dict(defaults)
    if env_file is not None and env_file.is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(environ)
    raw: dict[str, str] = {}
    for field in msgspec.structs.fields(Settings):
        name = ENV_PREFIX + field.name.upper()
        if name in merged:
            raw[field.name] = merged[name]
        elif field.name in LEGACY_NAMES and LEGACY_NAMES[field.name] in merged:
            raw[field.name] = merged[LEGACY_NAMES[field.name]]
    return raw


def _decode_path(kind: type, value: object) -> object:
    if kind is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError


def _variable_for(path: str) -> str:
    field = path.removeprefix("$.").split("[", 1)[0].split(".", 1)[0]
    return ENV_PREFIX + field.upper()


def parse_size(text: str) -> int:
    """Bytes from ``1048576``, ``512M``, ``10G``, ``1.5GiB``, ``64kb``...

    The unit is ``K``, ``M``, ``G`` or ``T`` in any case, optionally followed by ``B`` or
    ``iB``; all are binary multiples (``1K`` = ``1KB`` = ``1KiB`` = 1024 bytes), as disks and
    S3 part limits are counted. A fraction of a byte is dropped (``1.5K`` = 1536). Raises
    :class:`ValueError` for anything else.
    """
    match = _SIZE.fullmatch(text.strip().upper())
    if match is None:
        raise ValueError(
            f"{text.strip()!r} is not a size (bytes, or with a unit: 512M, 10G, 1.5TiB)"
        )
    number, unit = match.groups()
    return int(Decimal(number) * SIZE_UNITS[unit or ""])


def _database_url(text: str) -> str:
    """The URL with its driver made explicit (``postgres://`` → ``postgresql+asyncpg://``).

    An error names the scheme at most, never the URL: it may hold a password.
    """
    if not text:
        return text
    scheme, separator, rest = text.partition("://")
    driver = DATABASE_SCHEMES.get(scheme.lower())
    if not separator:
        problem = "not a URL"
    elif driver is None:
        problem = f"{scheme!r} is not a database Ferry can use"
    else:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(f"{driver}://{rest}")
        except (ArgumentError, ValueError):  # e.g. a port that is no number
            problem = f"not a valid {driver} URL"
        else:
            return f"{driver}://{rest}"
    raise SettingsError(
        f"FERRY_DATABASE_URL: {problem}; write postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DB "
        "or sqlite+aiosqlite:///PATH"
    )


def _field_value(key: str, text: str) -> object:
    """One raw value prepared for conversion: lists split, sizes and levels understood."""
    if key in LIST_FIELDS:
        return [item.strip() for item in text.split(",") if item.strip()]
    text = text.strip()
    if key in SIZE_FIELDS:
        try:
            return parse_size(text)
        except ValueError as exc:
            raise SettingsError(f"{_variable_for(key)}: {exc}") from None
    if key == "log_level":
        return LOG_LEVELS.get(text.lower(), text)
    if key == "database_url":
        return _database_url(text)
    return text


def load_settings(
    environ: Mapping[str, str] | None = None,
    env_file: Path | None = Path(".env"),
    defaults: Mapping[str, str] | None = None,
) -> Settings:
    """Build and validate settings; raise :class:`SettingsError` naming a bad variable.

    ``defaults`` (``FERRY_*`` names) apply where neither the environment nor the ``.env``
    file sets a variable: how ``make run`` turns auth off on loopback without overriding
    a ``FERRY_AUTH`` written in ``.env``.
    """
    raw = _raw_values(os.environ if environ is None else environ, env_file, defaults or {})
    values = {key: _field_value(key, text) for key, text in raw.items()}
    try:
        settings = msgspec.convert(values, Settings, strict=False, dec_hook=_decode_path)
    except msgspec.ValidationError as exc:
        message = str(exc)
        variable = _variable_for(message.rsplit(" - at `", 1)[-1].rstrip("`"))
        raise SettingsError(f"{variable}: {message.split(' - at ', 1)[0]}") from None
    _check_consistency(settings)
    return settings


def unknown_variable_warnings(
    environ: Mapping[str, str] | None = None, env_file: Path | None = Path(".env")
) -> list[str]:
    """One line per ``FERRY_*`` variable (environment or ``.env``) that is no setting,
    naming the closest real one: ``FERRY_MAX_SIZ`` would otherwise change nothing, silently.
    """
    names: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        names.update(dict.fromkeys(dotenv_values(env_file), str(env_file)))
    names.update(dict.fromkeys(os.environ if environ is None else environ, "the environment"))
    known = {ENV_PREFIX + field.name.upper() for field in msgspec.structs.fields(Settings)}
    accepted = known | OTHER_VARIABLES | set(LEGACY_NAMES.values())
    warnings = []
    for name, source in sorted(names.items()):
        if not name.startswith(ENV_PREFIX) or name in accepted:
            continue
        # Compared without the shared prefix, which would make every name look close.
        guess = difflib.get_close_matches(
            name.removeprefix(ENV_PREFIX), [k.removeprefix(ENV_PREFIX) for k in sorted(known)], n=1
        )
        hint = (
            f"; did you mean {ENV_PREFIX}{guess[0]}?"
            if guess
            else " (.env.example lists every setting)"
        )
        warnings.append(f"{name} (in {source}) is not a Ferry setting and is ignored{hint}")
    return warnings


def _check_consistency(settings: Settings) -> None:
    if settings.storage == "s3" and not settings.s3_bucket:
        raise SettingsError("FERRY_S3_BUCKET: required when FERRY_STORAGE=s3")
    if "none" in settings.auth and len(settings.auth) > 1:
        raise SettingsError("FERRY_AUTH: 'none' cannot be combined with other methods")
    if settings.workers > 1 and settings.resolved_database_url.startswith("sqlite"):
        raise SettingsError(
            "FERRY_WORKERS: more than one worker needs PostgreSQL (FERRY_DATABASE_URL); "
            "SQLite has one writer at a time"
        )
    if settings.s3_min_part_size < 5 * 1024 * 1024 and settings.storage == "s3":
        raise SettingsError("FERRY_S3_MIN_PART_SIZE: must be at least 5242880 (5 MiB)")
    if settings.max_header_bytes <= settings.max_metadata_bytes:
        raise SettingsError(
            "FERRY_MAX_HEADER_BYTES: must be larger than FERRY_MAX_METADATA_BYTES "
            "(Upload-Metadata is one of the request's header fields)"
        )
    _check_secrets(settings)


def _check_secrets(settings: Settings) -> None:
    """Refuse keys anyone could know: events and links signed with them prove nothing."""
    if settings.webhook_url and not settings.webhook_secret:
        raise SettingsError(
            "FERRY_WEBHOOK_SECRET: required when FERRY_WEBHOOK_URL is set "
            "(events would be signed with an empty key)"
        )
    if settings.signing_key == EXAMPLE_SIGNING_KEY:
        raise SettingsError(
            "FERRY_SIGNING_KEY: still the placeholder of .env.example; "
            "set a random secret (e.g. openssl rand -hex 32)"
        )
    size = len(settings.signing_key.encode("utf-8"))
    if 0 < size < MIN_SIGNING_KEY_BYTES:
        raise SettingsError(
            f"FERRY_SIGNING_KEY: {size} bytes is too short; use at least "
            f"{MIN_SIGNING_KEY_BYTES} random bytes (e.g. openssl rand -hex 32)"
        )
