"""Upkeep outside requests: expiry, orphan sweeps and start-up reconciliation.

:class:`UploadMaintenance` runs from the reaper (:mod:`app.uploads.reaper`), the
``ferry cleanup`` task and the app's start-up, never from a request. It keeps two
invariants whatever crashed before: offsets never run ahead of stored bytes (invariant 2:
staging files are truncated or offsets rewound to agree), and nothing leaks (invariant 5:
expired uploads are retired, orphaned staging files, multipart uploads and partial
objects are removed).
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

import anyio.to_thread
from sqlalchemy import or_, select, update

from app.core.clock import utcnow
from app.db.models import File, Upload, UploadState
from app.uploads.collaborator import ServiceCollaborator

if TYPE_CHECKING:
    from app.uploads.concatenation import Concatenator
    from app.uploads.service import UploadService

logger = logging.getLogger(__name__)

_IDS_PER_QUERY = 500
"""Ids in one ``IN (...)`` (SQLite caps the parameters of a statement)."""


class UploadMaintenance(ServiceCollaborator):
    """Expiry, sweeps and start-up reconciliation of :class:`UploadService`'s uploads.

    The staging area, locks and partial store are the service's, fixed at construction;
    the backend is read through the service each time.
    """

    def __init__(self, uploads: UploadService, concatenator: Concatenator) -> None:
        super().__init__(uploads)
        self._concatenator = concatenator

    async def expire_due(self, limit: int = 500) -> int:
        """expiration: retire unfinished uploads (and unused partials) past their expiry."""
        now = utcnow()
        async with self._sessions() as session:
            due = (
                await session.scalars(
                    select(Upload)
                    .where(
                        Upload.expires_at <= now,
                        or_(
                            Upload.state == UploadState.ACTIVE,
                            (Upload.state == UploadState.COMPLETED) & Upload.is_partial,
                        ),
                    )
                    .limit(limit)
                )
            ).all()
        expired = 0
        for upload in due:
            token = await self.locks.acquire(upload.id, state=upload.state)
            if token is None:
                continue  # being written right now: its lease renewal keeps it alive
            await self._uploads._retire(upload, token, UploadState.EXPIRED)
            expired += 1
        if expired < limit:
            await self._abort_backend_orphans()
        return expired

    async def _abort_backend_orphans(self) -> None:
        """Invariant 5 for S3: abort multipart uploads that no live upload owns, and delete
        partial objects whose partial upload is gone."""
        abort_orphans = getattr(self.backend, "abort_orphaned_uploads", None)
        if abort_orphans is None:
            return
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(Upload.id, Upload.state, Upload.is_partial).where(
                        or_(
                            Upload.state == UploadState.ACTIVE,
                            (Upload.state == UploadState.COMPLETED) & Upload.is_partial,
                        )
                    )
                )
            ).all()
        live = {row.id for row in rows if row.state == UploadState.ACTIVE}
        live_partials = {row.id for row in rows if row.is_partial}
        try:
            await abort_orphans(live)
            delete_partials = getattr(self.backend, "delete_orphaned_partials", None)
            if delete_partials is not None:
                await delete_partials(live_partials)
        except Exception:
            logger.exception("aborting orphaned multipart uploads failed; retrying next pass")

    async def reconcile(self) -> dict[str, int]:
        """Invariant 2 at start-up: staging files, offsets and leases agree again."""
        report = {"released_locks": await self.locks.release_stale_of_this_node()}
        truncated = rewound = orphans = finished = adopted = 0
        async with self._sessions() as session:
            live = (
                await session.scalars(
                    select(Upload).where(
                        or_(
                            Upload.state == UploadState.ACTIVE,
                            (Upload.state == UploadState.COMPLETED) & Upload.is_partial,
                        )
                    )
                )
            ).all()
        staged_ids = set(await anyio.to_thread.run_sync(self.staging.list_ids))
        for upload in live:
            staged_ids.discard(upload.id)
            if upload.is_final:
                continue
            if upload.state == UploadState.COMPLETED and self.partials is not None:
                # A completed partial lives in the partial store, not in staging; one
                # staged whole by a version that concatenated locally is stored now.
                if await self.staging.size(upload.id) == upload.length:
                    try:
                        await self._concatenator.store_partial(upload)
                    except Exception:
                        logger.exception("could not store partial %s at start-up", upload.id)
                continue
            size = await self.staging.size(upload.id)
            if size is None:
                if upload.is_complete and upload.state == UploadState.ACTIVE:
                    continue  # possibly stored already; finishing below sorts it out
                if await self._adopt_stored_bytes(upload):
                    adopted += 1
                    continue
                await self.staging.create(upload.id)
                size = 0
            if size > upload.offset:
                await self.staging.truncate(upload.id, upload.offset)
                truncated += 1
            elif size < upload.offset:
                logger.error(
                    "upload %s: staging holds %d bytes but %d were committed; rewinding",
                    upload.id,
                    size,
                    upload.offset,
                )
                await self._rewind(upload, size)
                rewound += 1
        await self._remove_orphans(staged_ids)
        orphans = len(staged_ids)
        for upload in live:
            if upload.state == UploadState.ACTIVE and self._uploads._needs_finishing(upload):
                try:
                    result = await self._uploads._finish_when_free(upload)
                except Exception:
                    logger.exception("could not finish upload %s at start-up", upload.id)
                    continue
                finished += result.state == UploadState.COMPLETED
        report.update(
            truncated=truncated,
            rewound=rewound,
            orphans=orphans,
            adopted=adopted,
            finished=finished,
        )
        return report

    async def _remove_orphans(self, staged_ids: set[uuid.UUID]) -> None:
        """Remove staging files that no live upload owns.

        One whose upload never got a row (a creation-with-upload cut short by a crash, see
        ``UploadService._born_with_its_body``) may have a stored copy already: without a
        file row, that copy is discarded too.
        """
        ids = list(staged_ids)
        filed: set[uuid.UUID] = set()
        async with self._sessions() as session:
            for start in range(0, len(ids), _IDS_PER_QUERY):
                batch = ids[start : start + _IDS_PER_QUERY]
                filed.update(await session.scalars(select(File.id).where(File.id.in_(batch))))
        for orphan in ids:
            if orphan not in filed:
                await self.backend.discard_upload(orphan)
            await self.staging.remove(orphan)

    async def _adopt_stored_bytes(self, upload: Upload) -> bool:
        """A completion that crashed between storing its bytes and committing its row.

        The whole upload is in storage (the staging file was moved there), so its offset
        moves to the end and the finishing pass files it. The bytes were never acknowledged;
        keeping them only saves the client a resend.
        """
        if upload.state != UploadState.ACTIVE or upload.length is None:
            return False
        found = await self.backend.find_stored(upload.id, "other")
        if found is None or found.size != upload.length:
            return False
        await self._rewind(upload, upload.length)
        return True

    async def _rewind(self, upload: Upload, size: int) -> None:
        """Set the committed offset to what storage really holds (start-up only)."""
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(Upload)
                .where(Upload.id == upload.id)
                .values(offset=size)
                .execution_options(synchronize_session=False)
            )
        upload.offset = size
