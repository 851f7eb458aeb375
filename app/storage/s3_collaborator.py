"""The pieces every collaborator of :class:`~app.storage.s3.S3Backend` shares.

The backend delegates shipping parts, reconciling the ledger, completing objects, cleaning
up and reading to one object each; they all work on the backend's one S3 client, its
parts ledger (in the app's database). The client is read through the backend each time:
``start()`` opens it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy.exc import SQLAlchemyError

from app.errors import FerryError, ServiceUnavailable, StorageMisconfigured
from app.storage.backend import StoredObject

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
    from types_aiobotocore_s3 import S3Client

    from app.storage.s3 import S3Backend

logger = logging.getLogger(__name__)

#: Errors of one S3 call that are worth retrying later (S3 or the network is unwell);
#: among them, :data:`MISCONFIGURATION_HINTS` picks out those no retry fixes.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    BotoCoreError,
    ClientError,
    aiohttp.ClientError,
    OSError,
    asyncio.TimeoutError,
)
#: Errors a background task waits out: S3 trouble, or the database holding the ledger.
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, SQLAlchemyError)
#: S3 error codes that mean Ferry's S3 settings are wrong, with the setting to check. A
#: HEAD's error has no body, so its code is the bare status: 403 is one of the first three.
MISCONFIGURATION_HINTS: dict[str, str] = {
    "SignatureDoesNotMatch": "FERRY_S3_SECRET_KEY",
    "InvalidAccessKeyId": "FERRY_S3_ACCESS_KEY",
    "AccessDenied": "FERRY_S3_ACCESS_KEY's permissions on FERRY_S3_BUCKET",
    "403": "FERRY_S3_ACCESS_KEY, FERRY_S3_SECRET_KEY and the key's permissions",
    "NoSuchBucket": "FERRY_S3_BUCKET",
}
PARTIALS_FOLDER = "partials"
"""Partial uploads (tus concatenation) are kept at ``{prefix}partials/{uid}``."""


class S3Collaborator:
    """Sees the backend's settings and bucket; its client and ledger through it."""

    def __init__(self, backend: S3Backend) -> None:
        self._backend = backend
        self.settings = backend.settings
        self.bucket = backend.bucket
        self.prefix = backend.prefix

    @property
    def client(self) -> S3Client:
        """The backend's S3 client (opened by ``start()``)."""
        return self._backend.client

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        """The session factory of the parts ledger ."""
        return self._backend.sessions

    async def head(self, key: str) -> StoredObject | None:
        """The object at ``key`` (size and ETag), or ``None`` where there is none."""
        try:
            response = await self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if error_code(exc) in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        return StoredObject(key=key, size=response["ContentLength"], etag=response.get("ETag"))


def storage_unavailable() -> ServiceUnavailable:
    """The 503 for an S3 call that failed in a way worth retrying soon."""
    return ServiceUnavailable(
        "object storage is unavailable; retry later", headers={"Retry-After": "5"}
    )


def error_code(exc: ClientError) -> str:
    """The S3 error code of a failed call (``""`` if it has none)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def misconfiguration_of(exc: BaseException | None) -> str | None:
    """The S3 error code when ``exc`` says Ferry's S3 settings are wrong, else ``None``."""
    if isinstance(exc, ClientError) and error_code(exc) in MISCONFIGURATION_HINTS:
        return error_code(exc)
    return None


def storage_failure(exc: BaseException) -> FerryError:
    """The client's error for a failed S3 call: 500 for a misconfiguration (logged as
    one), else the 503 of :func:`storage_unavailable`."""
    code = misconfiguration_of(exc)
    if code is None:
        return storage_unavailable()
    logger.error(
        "S3 refused Ferry's request with %s: a configuration problem, not an outage; check %s",
        code,
        MISCONFIGURATION_HINTS[code],
    )
    return StorageMisconfigured(
        f"object storage refused the request ({code}): the server's S3 configuration is "
        "wrong; retrying will not help until an operator fixes it"
    )
