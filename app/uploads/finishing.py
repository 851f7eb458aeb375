"""Finishing: an upload whose bytes are all there becomes a file (or a completed partial).

:class:`UploadFinisher` runs with the upload's lease held and kept alive (storing can wait
on S3 for the last parts). Its road depends on what the upload is:

* a partial upload is stored in the partial store (if the storage has one) and completed,
  never filed; final uploads waiting for it are finished next;
* a final upload with a partial store is assembled there, read back and filed;
* any other upload (a final concatenated in staging included) is stored and filed
  (:class:`~app.uploads.filing.UploadFiler`), the file row committed with its completion.

The content rules are checked before anything is stored (:class:`ContentGate`).
"""

from __future__ import annotations

import logging

import anyio

from app.core.received_crc import ReceivedCrc32c
from app.db.models import Upload, UploadState
from app.db.uploads import Claim, UploadRepository
from app.errors import FerryError
from app.storage.backend import Storage
from app.storage.staging import StagingArea
from app.uploads.concatenation import Concatenator
from app.uploads.filing import UploadFiler, file_row
from app.uploads.quota import ByteQuota
from app.uploads.validation import ContentGate
from app.uploads.visibility import visible

logger = logging.getLogger(__name__)


class UploadFinisher:
    """Turns fully staged (or fully assembled) uploads into files; lease held."""

    def __init__(
        self,
        repository: UploadRepository,
        storage: Storage,
        staging: StagingArea,
        filer: UploadFiler,
        concatenator: Concatenator,
        gate: ContentGate,
        quota: ByteQuota,
    ) -> None:
        self._repository = repository
        self._storage = storage
        self._staging = staging
        self._filer = filer
        self._concatenator = concatenator
        self._gate = gate
        self._quota = quota

    async def finish_when_free(self, upload: Upload) -> Upload:
        """Claim and finish an upload whose bytes are all there (or a final one).

        Returns ``upload`` as it was when someone else holds it (writing or finishing).
        """
        claim = await self._repository.claim_and_load(upload.id, state=UploadState.ACTIVE)
        if claim is None:
            return upload
        try:
            visible(claim.upload, None)
            ready = await self._is_ready(claim)
        except BaseException:
            await self._repository.release(claim)
            raise
        if not ready:
            await self._repository.release(claim)
            return claim.upload
        return await self.finish(claim)

    async def _is_ready(self, claim: Claim) -> bool:
        upload = claim.upload
        if not upload.is_final:
            return upload.is_complete
        if upload.length is None and not await self._count_final(claim):
            return False
        if self._storage.partials is not None:
            return await self._concatenator.finished_partials(upload) is not None
        return await self._concatenator.assemble_in_staging(claim)

    async def _count_final(self, claim: Claim) -> bool:
        """A final upload of deferred-length partials: once they are all finished, its
        length is known and counted against its owner's quota (413 while it does not fit;
        a HEAD asks again). ``False`` while some partial is unfinished."""
        final = claim.upload
        partials = await self._concatenator.finished_partials(final)
        if partials is None:
            return False
        length = sum(partial.length or 0 for partial in partials)
        await self._repository.set_length(
            final, length, reserve=self._quota.growth(final.owner, length)
        )
        return True

    async def finish(
        self,
        claim: Claim,
        *,
        head: bytes | None = None,
        uncommitted_from: int | None = None,
        carried_whole: ReceivedCrc32c | None = None,
    ) -> Upload:
        """Complete a claimed upload whose bytes are all there.

        ``head``: its first bytes as the completing body saw them. ``uncommitted_from``:
        the body that completed it left its offset to the filing transaction; the database
        still holds this value, and a failed filing commits the durable offset instead (a
        HEAD then retries the completion). ``carried_whole``: that body carried the whole
        upload, and nothing of it was acknowledged before (storage puts it from staging in
        one go, checked against these CRCs of the bytes as they arrived, see
        :meth:`~app.storage.backend.StorageBackend.store`).
        """
        upload = claim.upload
        try:
            async with self._repository.kept_alive(claim):
                await self._complete(claim, head, carried_whole)
        except BaseException:
            if uncommitted_from is not None:
                await self._keep_durable_offset(claim, uncommitted_from)
            await self._repository.release(claim)
            raise
        if upload.is_partial:
            await self._finish_finals_waiting_for(upload)
        return upload

    async def _complete(
        self, claim: Claim, head: bytes | None, carried_whole: ReceivedCrc32c | None
    ) -> None:
        upload = claim.upload
        if upload.is_partial:
            # concatenation: a partial is not processed on its own; its bytes stay (staged,
            # or in the partial store) until a final upload uses them or it expires.
            if self._storage.partials is not None:
                await self._concatenator.store_partial(upload)
            await self._repository.complete_partial(claim)
            return
        first_row = not claim.saved
        if upload.is_final and self._storage.partials is not None:
            partials = await self._concatenator.stored_partials(upload)
            await self._gate.admit(claim, partials.content, partials.size)
            filed = await self._concatenator.assemble_in_store(upload, partials)
        else:
            content = await self._filer.staged_content(upload, head)
            if content is None:
                filed = await self._filer.adopt_stored(upload)
            else:
                await self._gate.admit(claim, content, upload.length or 0)
                filed = await self._filer.store_staged(
                    upload, content, keep_staged=first_row, carried_whole=carried_whole
                )
        backend_name = self._storage.backend.name
        await self._repository.complete_and_file(claim, file_row(upload, filed, backend_name))
        if first_row:
            # The staged name was kept until the rows existed (``keep_staged``).
            await self._staging.remove(upload.id)

    async def _keep_durable_offset(self, claim: Claim, committed: int) -> None:
        """Keep the durable bytes of a completion whose filing failed."""
        upload = claim.upload
        with anyio.CancelScope(shield=True):
            try:
                await self._repository.commit_offset(
                    claim,
                    upload.offset,
                    release=False,
                    committed=committed,
                    sha256_state=upload.sha256_state,
                )
            except FerryError:
                pass  # the upload was retired (refused by validation)
            except Exception:
                logger.warning(
                    "upload %s: could not commit offset %d after a failed completion; "
                    "the client resends from %d",
                    upload.id,
                    upload.offset,
                    committed,
                    exc_info=True,
                )

    async def _finish_finals_waiting_for(self, partial: Upload) -> None:
        for final in await self._repository.finals_naming(partial.id):
            try:
                await self.finish_when_free(final)
            except FerryError as refusal:
                # Refused (its content, its owner's quota): a HEAD on it says why.
                logger.info("final upload %s was not finished: %s", final.id, refusal)
            except Exception:
                logger.exception("could not finish final upload %s", final.id)
