"""Filing: a fully staged upload becomes a stored, hashed ``File``.

:class:`~app.uploads.service.UploadService` decides *when* an upload is filed (its lock
held, every byte durable); :class:`UploadFiler` owns *how*: the content policy checked on
the sniffed head, storing the bytes in the backend, the SHA-256, and the one transaction
that writes the file row and completes the upload. A file row therefore exists only once
its bytes are stored and hashed (invariant 4).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from sqlalchemy import update

from app.core.filenames import safe_display_name
from app.core.metadata import decode_metadata_value
from app.db.models import File, Upload, UploadState
from app.errors import FerryError, ServiceUnavailable
from app.storage.backend import StoredObject
from app.storage.sniff import SNIFF_SIZE, category_for, sniff_content_type
from app.uploads.collaborator import ServiceCollaborator, not_yet_inserted

if TYPE_CHECKING:
    from app.uploads.appending import Appended
    from app.uploads.service import UploadService

logger = logging.getLogger(__name__)


class UploadFiler(ServiceCollaborator):
    """Stores, hashes and records uploads as files for :class:`UploadService`; lock held.

    The staging area, hashes and policy are the service's, fixed at construction; the
    backend is read through the service each time.
    """

    def __init__(self, uploads: UploadService) -> None:
        super().__init__(uploads)

    async def file_upload(
        self, upload: Upload, token: str, appended: Appended | None = None
    ) -> None:
        """Store, hash and record a fully staged upload (or one a crash left stored)."""
        size = upload.length or 0
        staged_path = self.staging.path_for(upload.id)
        just_staged = appended is not None and appended.uncommitted_from is not None
        if just_staged or await self.staging.size(upload.id) == size:
            if appended is not None and len(appended.head) == min(size, SNIFF_SIZE):
                head = appended.head
            else:
                head = await read_head(self.staging.read_range(upload.id, 0, SNIFF_SIZE))
            content_type = sniff_content_type(head)
            category = category_for(content_type).value
            await self.enforce_content_policy(upload, token, size, head)
            sha256 = self.hashes.digest_at(upload.id, size)
            # A backend that reclaims staged bytes once they are stored (S3 punches out
            # shipped parts) cannot be hashed from staging: hash the stored object instead.
            reclaims_staging = getattr(self.backend, "reclaims_staging", False)
            if sha256 is None and not reclaims_staging:
                sha256 = await sha256_of(self.staging.read_range(upload.id, 0, size))
            try:
                stored = await self.backend.store(
                    upload.id,
                    staged_path,
                    size,
                    category,
                    content_type,
                    keep_staged=not_yet_inserted(upload),
                )
            except OSError as exc:
                logger.exception("storing upload %s failed", upload.id)
                raise ServiceUnavailable("storage is unavailable; retry later") from exc
            if sha256 is None:
                sha256 = await sha256_of(self.backend.open_range(stored.key, 0, size))
        else:
            # The bytes were moved into storage before a crash hid that from the database.
            found = await self.backend.find_stored(upload.id, "other")
            if found is None or found.size != size:
                raise ServiceUnavailable(f"upload {upload.id} lost its staged bytes")
            stored = found
            head = await read_head(self.backend.open_range(stored.key, 0, SNIFF_SIZE))
            content_type = sniff_content_type(head)
            category = category_for(content_type).value
            sha256 = await sha256_of(self.backend.open_range(stored.key, 0, size))
        first_row = not_yet_inserted(upload)
        await self.record_file(upload, token, stored, sha256, content_type, category)
        if first_row:
            # The staged name was kept until the rows existed (see ``keep_staged``).
            await self.staging.remove(upload.id)

    async def record_file(
        self,
        upload: Upload,
        token: str,
        stored: StoredObject,
        sha256: str,
        content_type: str,
        category: str,
    ) -> None:
        """Write the file row and complete the upload in one transaction; lock held.

        A creation-with-upload whose row was not inserted yet is inserted here, completed:
        a small file costs one transaction in all.
        """
        name = safe_display_name(
            decode_metadata_value(upload.upload_metadata, "filename", "name"), str(upload.id)
        )
        completed: dict[str, Any] = {
            "state": UploadState.COMPLETED,
            "length": stored.size,
            "offset": stored.size,
            "lock_token": None,
            "lock_holder": None,
            "lock_expires_at": None,
            "expires_at": None,
        }
        first_row = not_yet_inserted(upload)
        async with self._sessions() as session, session.begin():
            if first_row:
                for field, value in completed.items():
                    setattr(upload, field, value)
                session.add(upload)
            session.add(
                File(
                    id=upload.id,
                    owner=upload.owner,
                    name=name,
                    size=stored.size,
                    sha256=sha256,
                    content_type=content_type,
                    category=category,
                    storage=self.backend.name,
                    storage_key=stored.key,
                    etag=stored.etag,
                    file_metadata=dict(upload.upload_metadata),
                )
            )
            if not first_row:
                await session.execute(
                    update(Upload)
                    .where(Upload.id == upload.id, Upload.lock_token == token)
                    .values(**completed)
                    .execution_options(synchronize_session=False)
                )
        upload.expires_at = None
        upload.length = upload.offset = stored.size

    async def enforce_content_policy(
        self, upload: Upload, token: str, size: int | None, head: bytes | None = None
    ) -> None:
        """Validation by magic bytes; a refused upload is retired so nothing stays behind."""
        if not self.policy.checks_content:
            return
        if head is None:
            head = await read_head(self.staging.read_range(upload.id, 0, SNIFF_SIZE))
        content_type = sniff_content_type(head)
        try:
            self.policy.check_content(content_type, category_for(content_type).value, size)
        except FerryError:
            await self._uploads._retire(upload, token, UploadState.TERMINATED)
            raise


async def read_head(stream: AsyncIterator[bytes]) -> bytes:
    """The first ``SNIFF_SIZE`` bytes of ``stream``, for content sniffing."""
    head = bytearray()
    async for block in stream:
        head += block
        if len(head) >= SNIFF_SIZE:
            break
    return bytes(head[:SNIFF_SIZE])


async def sha256_of(stream: AsyncIterator[bytes]) -> str:
    """The hex SHA-256 of ``stream``, hashed off the event loop."""
    return (await sha256_and_size(stream))[0]


async def sha256_and_size(stream: AsyncIterator[bytes]) -> tuple[str, int]:
    """The hex SHA-256 of ``stream`` and how many bytes it held."""
    digest = hashlib.sha256()
    size = 0
    async for block in stream:
        await anyio.to_thread.run_sync(digest.update, block)
        size += len(block)
    return digest.hexdigest(), size
