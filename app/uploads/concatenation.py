"""tus concatenation: partial uploads, and final uploads assembled from them.

A partial upload is not filed on its own; its bytes wait (staged whole, or in the
backend's partial store) until a final upload names it. The road depends on the backend
(``partial_store_of(backend)``, see docs/design.md):

* local: once every partial is complete, :meth:`Concatenator.assemble_final` copies them
  end to end into the final's staging file (hashing on the way) and the final is filed like
  any upload;
* S3: each partial is stored as its own object when it completes and
  :meth:`Concatenator.file_concatenation` has the store assemble the final, reads it back
  for the SHA-256 and records the file.

:class:`~app.uploads.service.UploadService` keeps the states and the lock; this module
owns the partials' bookkeeping and the assembly.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from sqlalchemy import select, update

from app.core.clock import utcnow
from app.db.models import Upload, UploadState
from app.errors import BadRequest, NotFound, ServiceUnavailable
from app.storage.backend import StoredObject
from app.storage.sniff import SNIFF_SIZE, category_for, sniff_content_type
from app.uploads.collaborator import ServiceCollaborator
from app.uploads.filing import read_head, sha256_and_size

if TYPE_CHECKING:
    from hashlib import _Hash

    from app.uploads.filing import UploadFiler
    from app.uploads.service import UploadService

logger = logging.getLogger(__name__)

LIVE_STATES = (UploadState.ACTIVE, UploadState.COMPLETED)


class Concatenator(ServiceCollaborator):
    """Partial uploads and the assembly of final uploads, for :class:`UploadService`.

    The staging area, hashes and partial store are the service's, fixed at construction;
    the backend is read through the service each time.
    """

    def __init__(self, uploads: UploadService, filer: UploadFiler) -> None:
        super().__init__(uploads)
        self._filer = filer

    async def load_partials(self, ids: list[uuid.UUID], owner: str | None) -> list[Upload]:
        """The partial uploads a final upload names, in order; 404/400 for unusable ones."""
        async with self._sessions() as session:
            rows = (await session.scalars(select(Upload).where(Upload.id.in_(set(ids))))).all()
        by_id = {row.id: row for row in rows}
        partials: list[Upload] = []
        for partial_id in ids:
            row = by_id.get(partial_id)
            if row is None or (owner is not None and row.owner != owner):
                # Another owner's partial answers like a missing one: 404, no oracle.
                raise NotFound(f"Upload-Concat names {partial_id}, which does not exist")
            usable = (
                row.is_partial
                and row.state in LIVE_STATES
                and not self._uploads._is_past_expiry(row)
            )
            if not usable or row is None:
                raise BadRequest(f"Upload-Concat names {partial_id}, which is not a partial upload")
            partials.append(row)
        return partials

    async def assemble_final(self, final: Upload, token: str) -> bool:
        """Concatenate a final upload's partials into its staging file; lock held.

        Returns ``False`` while some partial is unfinished (concatenation-unfinished).
        With a partial store the final is assembled in the backend when it is filed.
        """
        if self.partials is not None:
            return await self._finished_partials(final) is not None
        if final.is_complete and final.offset > 0:
            return True  # assembled before a crash stopped it from being filed
        # (Only assembly sets a final's offset, so an empty final still gets its empty file.)
        partials = await self._finished_partials(final)
        if partials is None:
            return False
        paths = [self.staging.path_for(p.id) for p in partials]
        target = self.staging.path_for(final.id)
        running = hashlib.sha256()
        size = await anyio.to_thread.run_sync(_concatenate_files, paths, target, running)
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(Upload)
                .where(Upload.id == final.id, Upload.lock_token == token)
                .values(length=size, offset=size)
                .execution_options(synchronize_session=False)
            )
        final.length = size
        final.offset = size
        self.hashes.record(final.id, size, running)
        return True

    async def _finished_partials(self, final: Upload) -> list[Upload] | None:
        """A final upload's partials in order, or ``None`` while one is unfinished."""
        part_ids = [uuid.UUID(p) for p in final.concat_parts or []]
        async with self._sessions() as session:
            rows = (await session.scalars(select(Upload).where(Upload.id.in_(set(part_ids))))).all()
        by_id = {row.id: row for row in rows}
        partials = [by_id.get(p) for p in part_ids]
        if any(p is None or p.state != UploadState.COMPLETED for p in partials):
            return None
        return [p for p in partials if p is not None]

    async def file_concatenation(self, final: Upload, token: str) -> None:
        """Assemble a final upload in the partial store, verify it, record the file.

        The head is read from the partial objects for sniffing and the content policy; the
        SHA-256 is computed by reading the assembled object back, which also proves S3
        holds every byte (invariant 4). Lock held and kept alive by the caller.
        """
        assert self.partials is not None
        partials = await self._finished_partials(final)
        if partials is None:
            raise ServiceUnavailable(f"a partial upload of {final.id} went away; retry later")
        sources = [self.partials.partial_object(p.id, p.length or 0) for p in partials]
        size = sum(source.size for source in sources)
        head = await read_head(self._read_across(sources, SNIFF_SIZE))
        content_type = sniff_content_type(head)
        category = category_for(content_type).value
        await self._filer.enforce_content_policy(final, token, size, head)
        try:
            stored = await self.partials.concatenate(
                final.id, sources, self.staging.path_for(final.id), category, content_type
            )
        except OSError as exc:
            logger.exception("assembling final upload %s failed", final.id)
            raise ServiceUnavailable("storage is unavailable; retry later") from exc
        digest, read = "", stored.size
        if stored.size == size:
            digest, read = await sha256_and_size(self.backend.open_range(stored.key, 0, size))
        if read != size:  # S3 assembled something else: never record it as the file
            raise ServiceUnavailable(
                f"final upload {final.id}: the store holds {read} of {size} bytes; retry later"
            )
        await self._filer.record_file(final, token, stored, digest, content_type, category)

    async def _read_across(self, sources: list[StoredObject], length: int) -> AsyncIterator[bytes]:
        """The first ``length`` bytes of ``sources`` read end to end."""
        for source in sources:
            if length <= 0:
                return
            take = min(length, source.size)
            async for block in self.backend.open_range(source.key, 0, take):
                yield block
            length -= take

    async def assemble_finals_waiting_for(self, partial_id: uuid.UUID) -> None:
        """Finish the final uploads that were waiting for ``partial_id`` to complete."""
        async with self._sessions() as session:
            finals = (
                await session.scalars(
                    select(Upload).where(
                        Upload.state == UploadState.ACTIVE, Upload.concat_parts.is_not(None)
                    )
                )
            ).all()
        for final in finals:
            if str(partial_id) in (final.concat_parts or []):
                try:
                    await self._uploads._finish_when_free(final)
                except Exception:
                    logger.exception("could not finish final upload %s", final.id)

    async def store_partial(self, upload: Upload) -> None:
        """Move a completed partial into the partial store (S3: its own object)."""
        assert self.partials is not None
        try:
            await self.partials.store_partial(
                upload.id, self.staging.path_for(upload.id), upload.length or 0
            )
        except OSError as exc:
            logger.exception("storing partial upload %s failed", upload.id)
            raise ServiceUnavailable("storage is unavailable; retry later") from exc

    async def mark_partial_complete(self, upload: Upload, token: str) -> None:
        """Complete a partial upload without filing it; lock held."""
        # concatenation: a partial is not processed on its own; its bytes stay (staged, or
        # in the partial store) until a final upload uses them or it expires.
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(Upload)
                .where(Upload.id == upload.id, Upload.lock_token == token)
                .values(
                    state=UploadState.COMPLETED,
                    lock_token=None,
                    lock_holder=None,
                    lock_expires_at=None,
                    expires_at=utcnow() + self.ttl,
                )
                .execution_options(synchronize_session=False)
            )


def _concatenate_files(sources: list[Any], target: Any, running: _Hash) -> int:
    """Copy ``sources`` end to end into ``target``, hashing on the way (worker thread)."""
    total = 0
    with open(target, "wb") as out:
        for source in sources:
            with open(source, "rb") as handle:
                while block := handle.read(1024 * 1024):
                    running.update(block)
                    out.write(block)
                    total += len(block)
        out.flush()
        os.fsync(out.fileno())
    return total
