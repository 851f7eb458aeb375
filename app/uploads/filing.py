"""Filing: the bytes of a finished upload stored, hashed and shaped into a ``File`` row.

:class:`UploadFiler` owns *how* a fully staged upload reaches storage: what its first
bytes say it is, the SHA-256 (the running hash, else read back from staging or from the
stored object), and :meth:`StorageBackend.store`. It returns values (:class:`Content`,
:class:`Filed`) and writes no rows: the upload service checks the content policy and
commits the file row with the upload's completion (:meth:`UploadRepository.complete_and_file`),
so a file row exists only once its bytes are stored and hashed (invariant 4).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio.to_thread

from app.core.filenames import safe_display_name
from app.core.metadata import decode_metadata_value
from app.core.received_crc import ReceivedCrc32c
from app.core.sha256 import ResumableSha256
from app.db.models import File, Upload
from app.errors import ServiceUnavailable, storage_refusal
from app.storage.backend import Storage, StoredObject
from app.storage.sniff import SNIFF_SIZE, category_for, sniff_content_type
from app.storage.staging import StagingArea

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Content:
    """What an upload's first bytes say it is."""

    content_type: str
    category: str

    @classmethod
    def of(cls, head: bytes) -> Content:
        """Sniffed from ``head`` (magic bytes, never the client's word)."""
        return cls.of_type(sniff_content_type(head))

    @classmethod
    def of_type(cls, content_type: str) -> Content:
        """A content type sniffed before, with its category."""
        return cls(content_type, category_for(content_type).value)


@dataclass(frozen=True, slots=True)
class Filed:
    """A finished upload's bytes, stored and hashed."""

    stored: StoredObject
    sha256: str
    content: Content


class UploadFiler:
    """Stores and hashes finished uploads; lease held by the caller."""

    def __init__(self, storage: Storage, staging: StagingArea) -> None:
        self._storage = storage
        self._staging = staging

    async def staged_content(self, upload: Upload, head: bytes | None = None) -> Content | None:
        """The content of a fully staged upload, or ``None`` when its staging file is gone
        (a crash came after storing it: :meth:`adopt_stored` then).

        ``head`` is the first bytes as the body that completed the upload saw them.
        """
        size = upload.length or 0
        if upload.content_type is not None:
            return Content.of_type(upload.content_type)
        if head is None or len(head) != min(size, SNIFF_SIZE):
            if await self._staging.size(upload.id) != size:
                return None
            head = await read_head(self._staging.read_range(upload.id, 0, SNIFF_SIZE))
        return Content.of(head)

    async def head_of_staged(self, upload: Upload) -> bytes:
        """The first ``SNIFF_SIZE`` staged bytes (content policy before completion)."""
        return await read_head(self._staging.read_range(upload.id, 0, SNIFF_SIZE))

    async def store_staged(
        self,
        upload: Upload,
        content: Content,
        *,
        keep_staged: bool,
        carried_whole: ReceivedCrc32c | None = None,
    ) -> Filed:
        """Store a fully staged upload and hash it; 503 when storage refuses.

        ``carried_whole``: the request finishing it carried all of it from offset 0; its
        bytes' CRCs as they arrived (see :meth:`~app.storage.backend.StorageBackend.store`).

        The staged bytes must be exactly what was acknowledged: a staging file of another
        length refuses the completion (invariant 4), and the upload stays resumable.
        """
        size = upload.length or 0
        if self._storage.shipping is None or carried_whole is not None:
            staged = await self._staging.size(upload.id)
            if staged != size:
                logger.error(
                    "upload %s: staging holds %s bytes but %d were acknowledged; "
                    "completion refused",
                    upload.id,
                    staged,
                    size,
                )
                raise ServiceUnavailable(f"upload {upload.id} cannot be verified; retry later")
        running = ResumableSha256.resume(upload.sha256_state, size)
        sha256 = None if running is None else running.hexdigest()
        if sha256 is None and not self._storage.reclaims_staging:
            sha256 = await sha256_of(self._staging.read_range(upload.id, 0, size))
        try:
            stored = await self._storage.backend.store(
                upload.id,
                self._staging.path_for(upload.id),
                size,
                content.category,
                content.content_type,
                keep_staged=keep_staged,
                carried_whole=carried_whole,
            )
        except OSError as exc:
            logger.exception("storing upload %s failed", upload.id)
            raise storage_refusal(exc, "storage is unavailable; retry later") from exc
        if sha256 is None:
            # A backend that reclaims staged bytes once shipped (S3 punches out parts)
            # cannot be hashed from staging: the stored object is hashed instead.
            sha256 = await sha256_of(self._storage.backend.open_range(stored.key, 0, size))
        return Filed(stored, sha256, content)

    async def adopt_stored(self, upload: Upload) -> Filed:
        """The bytes were moved into storage before a crash hid that from the database."""
        size = upload.length or 0
        found = await self._storage.backend.find_stored(upload.id, "other")
        if found is None or found.size != size:
            raise ServiceUnavailable(f"upload {upload.id} lost its staged bytes")
        backend = self._storage.backend
        content = Content.of(await read_head(backend.open_range(found.key, 0, SNIFF_SIZE)))
        sha256 = await sha256_of(backend.open_range(found.key, 0, size))
        return Filed(found, sha256, content)


def file_row(upload: Upload, filed: Filed, storage_name: str) -> File:
    """The ``File`` row of a filed upload (its id is the upload's: the file UID)."""
    name = safe_display_name(
        decode_metadata_value(upload.upload_metadata, "filename", "name"), str(upload.id)
    )
    return File(
        id=upload.id,
        owner=upload.owner,
        name=name,
        size=filed.stored.size,
        sha256=filed.sha256,
        content_type=filed.content.content_type,
        category=filed.content.category,
        storage=storage_name,
        storage_key=filed.stored.key,
        etag=filed.stored.etag,
        file_metadata=dict(upload.upload_metadata),
    )


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
