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
from dataclasses import asdict, dataclass

import anyio.to_thread

from app.core.clock import utcnow
from app.db.models import Upload, UploadState
from app.db.uploads import UploadRepository
from app.storage.backend import Storage
from app.storage.staging import StagingArea
from app.uploads.concatenation import Concatenator
from app.uploads.finishing import UploadFinisher
from app.uploads.retiring import UploadRetirer

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class ReconcileReport:
    """What start-up reconciliation found and did."""

    released_locks: int = 0
    truncated: int = 0
    rewound: int = 0
    orphans: int = 0
    adopted: int = 0
    finished: int = 0


class UploadMaintenance:
    """Expiry, sweeps and start-up reconciliation."""

    def __init__(
        self,
        repository: UploadRepository,
        storage: Storage,
        staging: StagingArea,
        retirer: UploadRetirer,
        finisher: UploadFinisher,
        concatenator: Concatenator,
    ) -> None:
        self._repository = repository
        self._storage = storage
        self._staging = staging
        self._retirer = retirer
        self._finisher = finisher
        self._concatenator = concatenator

    async def expire_due(self, limit: int = 500) -> int:
        """expiration: retire unfinished uploads (and unused partials) past their expiry."""
        expired = 0
        for upload in await self._repository.due_for_expiry(utcnow(), limit):
            claim = await self._repository.claim(upload, state=upload.state)
            if claim is None:
                continue  # being written right now: its lease renewal keeps it alive
            await self._retirer.retire(claim, UploadState.EXPIRED)
            expired += 1
        if expired < limit:
            await self._sweep_backend_orphans()
        return expired

    async def _sweep_backend_orphans(self) -> None:
        """Invariant 5 for S3: abort multipart uploads that no live upload owns, and delete
        partial objects whose partial upload is gone."""
        sweeping = self._storage.sweeping
        if sweeping is None:
            return
        live = await self._repository.live_ids()
        try:
            await sweeping.abort_orphaned_uploads(live.active)
            await sweeping.delete_orphaned_partials(live.partials)
        except Exception:
            logger.exception("aborting orphaned multipart uploads failed; retrying next pass")

    async def reconcile(self) -> dict[str, int]:
        """Invariant 2 at start-up: staging files, offsets and leases agree again."""
        report = ReconcileReport(released_locks=await self._repository.release_stale_of_this_node())
        live = await self._repository.live()
        staged_ids = set(await anyio.to_thread.run_sync(self._staging.list_ids))
        for upload in live:
            staged_ids.discard(upload.id)
            if not upload.is_final:
                await self._reconcile_staging(upload, report)
        await self._remove_orphans(staged_ids)
        report.orphans = len(staged_ids)
        for upload in live:
            if upload.state == UploadState.ACTIVE and (upload.is_final or upload.is_complete):
                try:
                    result = await self._finisher.finish_when_free(upload)
                except Exception:
                    logger.exception("could not finish upload %s at start-up", upload.id)
                    continue
                report.finished += result.state == UploadState.COMPLETED
        return asdict(report)

    async def _reconcile_staging(self, upload: Upload, report: ReconcileReport) -> None:
        """Make one upload's staging file agree with its committed offset."""
        if upload.state == UploadState.COMPLETED and self._storage.partials is not None:
            # A completed partial lives in the partial store, not in staging; one staged
            # whole by a version that concatenated locally is stored now.
            if await self._staging.size(upload.id) == upload.length:
                try:
                    await self._concatenator.store_partial(upload)
                except Exception:
                    logger.exception("could not store partial %s at start-up", upload.id)
            return
        if self._storage.shipping is not None:
            # Storage holds every acknowledged byte (S3): staging is this node's cache and
            # never decides an offset (another node may have gone on meanwhile).
            return
        if upload.is_leased(utcnow()):
            # Another node sharing this data directory is writing it right now.
            return
        size = await self._staging.size(upload.id)
        if size is None:
            if upload.is_complete and upload.state == UploadState.ACTIVE:
                return  # possibly stored already; finishing sorts it out
            if await self._adopt_stored_bytes(upload):
                report.adopted += 1
                return
            await self._staging.create(upload.id)
            size = 0
        if size > upload.offset:
            await self._staging.truncate(upload.id, upload.offset)
            report.truncated += 1
        elif size < upload.offset:
            logger.error(
                "upload %s: staging holds %d bytes but %d were committed; rewinding",
                upload.id,
                size,
                upload.offset,
            )
            await self._repository.rewind(upload, size)
            report.rewound += 1

    async def _remove_orphans(self, staged_ids: set[uuid.UUID]) -> None:
        """Remove staging files that no live upload owns.

        One whose upload never got a row (a creation-with-upload cut short by a crash) may
        have a stored copy already: without a file row, that copy is discarded too.
        """
        filed = await self._repository.filed_ids(staged_ids)
        for orphan in staged_ids:
            if orphan not in filed:
                await self._storage.backend.discard_upload(orphan)
            await self._staging.remove(orphan)

    async def _adopt_stored_bytes(self, upload: Upload) -> bool:
        """A completion that crashed between storing its bytes and committing its row.

        The whole upload is in storage (the staging file was moved there), so its offset
        moves to the end and the finishing pass files it. The bytes were never acknowledged;
        keeping them only saves the client a resend.
        """
        if upload.state != UploadState.ACTIVE or upload.length is None:
            return False
        found = await self._storage.backend.find_stored(upload.id, "other")
        if found is None or found.size != upload.length:
            return False
        await self._repository.rewind(upload, upload.length)
        return True
