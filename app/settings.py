"""Typed settings read once from the environment and an optional ``.env`` file.

Every variable carries the ``FERRY_`` prefix (``FERRY_DATA_DIR`` sets ``data_dir``). The
original deployment's S3 names (``ENDPOINT_URL``, ``ACCESS_KEY``, ``SECRET_KEY``,
``BUCKET_NAME``) are accepted as fallbacks. A bad value raises :class:`SettingsError`
naming the variable, so start-up can stop with one line instead of a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
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
    values: dict[str, object] = {}
    for key, text in raw.items():
        if key in LIST_FIELDS:
            values[key] = [item.strip() for item in text.split(",") if item.strip()]
        else:
            values[key] = text.strip()
    try:
        settings = msgspec.convert(values, Settings, strict=False, dec_hook=_decode_path)
    except msgspec.ValidationError as exc:
        message = str(exc)
        variable = _variable_for(message.rsplit(" - at `", 1)[-1].rstrip("`"))
        raise SettingsError(f"{variable}: {message.split(' - at ', 1)[0]}") from None
    _check_consistency(settings)
    return settings


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
