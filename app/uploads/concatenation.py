"""tus concatenation: partial uploads, and final uploads assembled from them.

A partial upload is not filed on its own; its bytes wait (staged whole, or in the
backend's partial store) until a final upload names it. The road depends on the storage's
capabilities (``Storage.partials``, see docs/design.md):

* local: once every partial is complete, :meth:`Concatenator.assemble_in_staging` copies
  them end to end into the final's staging file (hashing on the way) and the final is filed
  like any upload;
* S3: each partial is stored as its own object when it completes
  (:meth:`Concatenator.store_partial`), and :meth:`Concatenator.assemble_in_store` has the
  store assemble the final and reads it back for the SHA-256.

The upload service keeps the states and the lease; this module owns the partials'
bookkeeping and the assembly, and returns values to it.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio.to_thread

from app.core.clock import utcnow
from app.core.sha256 import ResumableSha256
from app.db.models import Upload, UploadState
from app.db.uploads import Claim, UploadRepository
from app.errors import BadRequest, NotFound, ServiceUnavailable, storage_refusal
from app.storage.backend import PartialStore, Storage, StoredObject
from app.storage.sniff import SNIFF_SIZE
from app.storage.staging import StagingArea
from app.uploads.filing import Content, Filed, read_head, sha256_and_size

logger = logging.getLogger(__name__)

LIVE_STATES = (UploadState.ACTIVE, UploadState.COMPLETED)


@dataclass(frozen=True, slots=True)
class StoredPartials:
    """A final upload's partial objects in the partial store, and what they hold."""

    sources: list[StoredObject]
    size: int
    content: Content


class Concatenator:
    """Partial uploads and the assembly of final uploads."""

    def __init__(
        self,
        repository: UploadRepository,
        storage: Storage,
        staging: StagingArea,
        *,
        max_parts: int,
    ) -> None:
        self._repository = repository
        self._storage = storage
        self._staging = staging
        self._max_parts = max_parts

    async def load_partials(self, ids: list[uuid.UUID], owner: str | None) -> list[Upload]:
        """The partial uploads a final upload names, in order; 404/400 for unusable ones.

        A final names at most ``FERRY_MAX_CONCAT_PARTS`` partials, each once: naming one
        partial many times would turn a few stored bytes into a large file in no time.
        """
        if len(ids) > self._max_parts:
            raise BadRequest(
                f"Upload-Concat names {len(ids)} partial uploads; at most {self._max_parts} "
                "are allowed (FERRY_MAX_CONCAT_PARTS)"
            )
        seen: set[uuid.UUID] = set()
        for partial_id in ids:
            if partial_id in seen:
                raise BadRequest(
                    f"Upload-Concat names {partial_id} twice; a final upload may use each "
                    "partial upload once"
                )
            seen.add(partial_id)
        by_id = await self._repository.find_many(ids)
        now = utcnow()
        partials: list[Upload] = []
        for partial_id in ids:
            row = by_id.get(partial_id)
            if row is None or (owner is not None and row.owner != owner):
                # Another owner's partial answers like a missing one: 404, no oracle.
                raise NotFound(f"Upload-Concat names {partial_id}, which does not exist")
            if not (row.is_partial and row.state in LIVE_STATES and not row.is_past_expiry(now)):
                raise BadRequest(f"Upload-Concat names {partial_id}, which is not a partial upload")
            partials.append(row)
        return partials

    async def finished_partials(self, final: Upload) -> list[Upload] | None:
        """A final upload's partials in order, or ``None`` while one is unfinished."""
        part_ids = [uuid.UUID(p) for p in final.concat_parts or []]
        by_id = await self._repository.find_many(part_ids)
        partials = [by_id.get(p) for p in part_ids]
        if any(p is None or p.state != UploadState.COMPLETED for p in partials):
            return None
        return [p for p in partials if p is not None]

    async def assemble_in_staging(self, claim: Claim) -> bool:
        """Concatenate a final upload's partials into its staging file; lease held.

        Returns ``False`` while some partial is unfinished (concatenation-unfinished).
        """
        final = claim.upload
        if final.is_complete and final.offset > 0:
            return True  # assembled before a crash stopped it from being filed
        # (Only assembly sets a final's offset, so an empty final still gets its empty file.)
        partials = await self.finished_partials(final)
        if partials is None:
            return False
        paths = [self._staging.path_for(p.id) for p in partials]
        target = self._staging.path_for(final.id)
        running = ResumableSha256()
        size = await anyio.to_thread.run_sync(_concatenate_files, paths, target, running)
        await self._repository.record_assembly(claim, size, running.state())
        return True

    async def stored_partials(self, final: Upload) -> StoredPartials:
        """The partial objects of a final upload and what their first bytes say."""
        store = self._partial_store()
        partials = await self.finished_partials(final)
        if partials is None:
            raise ServiceUnavailable(f"a partial upload of {final.id} went away; retry later")
        sources = [store.partial_object(p.id, p.length or 0) for p in partials]
        head = await read_head(self._read_across(sources, SNIFF_SIZE))
        return StoredPartials(sources, sum(s.size for s in sources), Content.of(head))

    async def assemble_in_store(self, final: Upload, partials: StoredPartials) -> Filed:
        """Have the partial store assemble a final upload, then read it back.

        The SHA-256 comes from reading the assembled object, which also proves the store
        holds every byte (invariant 4). Lease held and kept alive by the caller.
        """
        store = self._partial_store()
        content = partials.content
        try:
            stored = await store.concatenate(
                final.id,
                partials.sources,
                self._staging.path_for(final.id),
                content.category,
                content.content_type,
            )
        except OSError as exc:
            logger.exception("assembling final upload %s failed", final.id)
            raise storage_refusal(exc, "storage is unavailable; retry later") from exc
        size = partials.size
        digest, read = "", stored.size
        if stored.size == size:
            reader = self._storage.backend.open_range(stored.key, 0, size)
            digest, read = await sha256_and_size(reader)
        if read != size:  # the store assembled something else: never record it as the file
            raise ServiceUnavailable(
                f"final upload {final.id}: the store holds {read} of {size} bytes; retry later"
            )
        return Filed(stored, digest, content)

    async def _read_across(self, sources: list[StoredObject], length: int) -> AsyncIterator[bytes]:
        """The first ``length`` bytes of ``sources`` read end to end."""
        for source in sources:
            if length <= 0:
                return
            take = min(length, source.size)
            async for block in self._storage.backend.open_range(source.key, 0, take):
                yield block
            length -= take

    async def store_partial(self, upload: Upload) -> None:
        """Move a completed partial into the partial store (S3: its own object)."""
        store = self._partial_store()
        try:
            await store.store_partial(
                upload.id, self._staging.path_for(upload.id), upload.length or 0
            )
        except OSError as exc:
            logger.exception("storing partial upload %s failed", upload.id)
            raise storage_refusal(exc, "storage is unavailable; retry later") from exc

    def _partial_store(self) -> PartialStore:
        if self._storage.partials is None:
            raise RuntimeError("the storage keeps no partial uploads")
        return self._storage.partials


def _concatenate_files(sources: list[Any], target: Any, running: ResumableSha256) -> int:
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
