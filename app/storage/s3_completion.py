"""Completing S3 objects: a finished upload's file, a partial's object, a final's assembly.

On completion only the last part and CompleteMultipartUpload remain: :class:`ObjectCompleter`
waits for the parts the shipper (:mod:`app.storage.s3_shipping`) has under way, sends the
rest, completes the multipart upload and checks the object's size with a HEAD before the
ledger rows and the staging file go. Uploads smaller than one part become a single
PutObject. A completion whose answer a crash or a reset lost is recognised by that HEAD,
so completing again is harmless.

Concatenation: a partial upload ships the same way into ``{prefix}partials/{uid}`` (not a
file); a final upload is assembled from those objects inside S3 by
:mod:`app.storage.s3_concat`, which starts, completes and abandons its multipart upload
through the backend's ``*_assembly`` methods (delegated here).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
from botocore.exceptions import ClientError

from app.errors import PayloadTooLarge, ServiceUnavailable
from app.storage.backend import StoredObject
from app.storage.concat_plan import part_floor
from app.storage.parts import PartPlan, PartTooLarge
from app.storage.s3_collaborator import (
    TRANSIENT_ERRORS,
    S3Collaborator,
    Shipment,
    error_code,
    misconfiguration_of,
    storage_failure,
)
from app.storage.s3_ledger import Multipart, PartRecord
from app.storage.s3_reconcile import PartsLost
from app.storage.sniff import Category
from app.storage.staged_parts import StagedRangeReader, crc32c_of_range

if TYPE_CHECKING:
    from app.storage.s3 import S3Backend
    from app.storage.s3_cleanup import ObjectCleaner
    from app.storage.s3_concat import FinalAssembly
    from app.storage.s3_reconcile import LedgerReconciler
    from app.storage.s3_shipping import PartShipper

logger = logging.getLogger(__name__)

_OCTETS = "application/octet-stream"
ABORT_PATIENCE = 15.0
"""Seconds a failed assembly waits for its abort; past that, the next attempt aborts it."""


class ObjectCompleter(S3Collaborator):
    """Turns shipped parts (or one PutObject) into the verified object of an upload."""

    def __init__(
        self,
        backend: S3Backend,
        shipper: PartShipper,
        reconciler: LedgerReconciler,
        cleaner: ObjectCleaner,
    ) -> None:
        super().__init__(backend)
        self._shipper = shipper
        self._reconciler = reconciler
        self._cleaner = cleaner

    async def store(
        self, shipment: Shipment, size: int, category: str, content_type: str
    ) -> StoredObject:
        """Send what is left, complete the object and verify it; the upload's ledger rows
        and in-memory state go (its staging file is the caller's to drop)."""
        upload_id = shipment.upload_id
        shipment.durable_offset = size
        shipment.length = size
        try:
            stored = await self._store(shipment, size, category, content_type)
        except PartsLost as exc:
            raise ServiceUnavailable(
                f"upload {upload_id}: the object store lost parts that are no longer staged"
            ) from exc
        except TRANSIENT_ERRORS as exc:
            logger.warning("upload %s: storing in S3 failed: %r", upload_id, exc)
            raise storage_failure(exc) from exc
        await self._cleaner.forget(upload_id)
        return stored

    async def _store(
        self, shipment: Shipment, size: int, category: str, content_type: str
    ) -> StoredObject:
        async with shipment.lock:
            await self._reconciler.ensure_loaded(shipment)
            if shipment.finished is not None and shipment.finished.size == size:
                return shipment.finished
            plan = self._shipper.plan_of(shipment)
            if shipment.multipart is None and size <= plan.size_of(1):
                return await self._put_single(shipment, size, category, content_type)
            if shipment.multipart is None:
                await self._shipper.begin_multipart(shipment, plan)
            wanted = plan.parts_for(size)
            self._shipper.schedule_parts(shipment, [p.number for p in wanted], plan)
        await self._wait_for_parts(shipment, len(wanted))
        multipart = shipment.multipart
        assert multipart is not None
        for span in wanted:
            record = shipment.recorded.get(span.number)
            if record is None or record.size != span.size:
                raise ServiceUnavailable(
                    f"part {span.number} of upload {shipment.upload_id} is missing"
                )
        return await self._complete(multipart, [shipment.recorded[p.number] for p in wanted], size)

    async def _wait_for_parts(self, shipment: Shipment, count: int) -> None:
        """Wait for the scheduled parts; 503 after ``s3_timeout_seconds`` without progress,
        500 at once when S3 refuses Ferry's settings (no retry of a part can succeed)."""
        loop = asyncio.get_running_loop()
        # one timed-out attempt plus its retry may pass before a part lands
        patience = 2.0 * self.settings.s3_timeout_seconds + 5.0
        last_progress, recorded = loop.time(), len(shipment.recorded)
        while pending := [t for t in shipment.in_flight.values() if not t.done()]:
            await asyncio.wait(pending, timeout=1.0)
            failure = shipment.last_error
            if failure is not None and misconfiguration_of(failure):
                raise storage_failure(failure)
            if len(shipment.recorded) != recorded:
                last_progress, recorded = loop.time(), len(shipment.recorded)
            elif loop.time() - last_progress > patience:
                raise ServiceUnavailable(
                    "object storage is not accepting parts; retry later",
                    headers={"Retry-After": "10"},
                )
        if not shipment.loaded:
            # A part found the multipart upload gone: reconcile now, send again next time.
            async with shipment.lock:
                await self._reconciler.ensure_loaded(shipment)
            raise ServiceUnavailable("the multipart upload was lost; retry to send it again")
        if len(shipment.recorded) < count:
            raise ServiceUnavailable("object storage is unavailable; retry later")

    async def _put_single(
        self, shipment: Shipment, size: int, category: str, content_type: str
    ) -> StoredObject:
        key = self.object_key(shipment, category)
        return await self.put_from_file(key, shipment.staged_path, size, content_type)

    async def put_from_file(
        self, key: str, path: Path, size: int, content_type: str, crc: str | None = None
    ) -> StoredObject:
        """One PutObject of the first ``size`` bytes of a local file, streamed."""
        if crc is None:
            crc = await anyio.to_thread.run_sync(crc32c_of_range, path, 0, size)
        with StagedRangeReader(path, 0, size) as body:
            response = await self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,  # type: ignore[arg-type]
                ContentLength=size,
                ContentType=content_type,
                ChecksumCRC32C=crc,
            )
        return StoredObject(key=key, size=size, etag=response.get("ETag"))

    async def _complete(
        self, multipart: Multipart, records: list[PartRecord], size: int
    ) -> StoredObject:
        """CompleteMultipartUpload; an unseen earlier success is found with a HEAD."""
        upload = {
            "Parts": [
                {"PartNumber": r.number, "ETag": r.etag}
                | ({"ChecksumCRC32C": r.crc32c} if r.crc32c else {})
                for r in records
            ]
        }
        try:
            response = await self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=multipart.key,
                UploadId=multipart.s3_upload_id,
                MultipartUpload=upload,  # type: ignore[arg-type]
            )
        except ClientError as exc:
            if error_code(exc) != "NoSuchUpload":
                raise
            # Completed before (the answer was lost to a crash or a reset): the object
            # must be there, whole.
            found = await self.head(multipart.key)
            if found is None or found.size != size:
                raise
            return found
        if "ETag" not in response:
            # a 200 whose body was an error (botocore usually turns those into errors)
            raise ServiceUnavailable("CompleteMultipartUpload answered without an ETag")
        found = await self.head(multipart.key)
        if found is None or found.size != size:
            raise ServiceUnavailable(
                f"object {multipart.key} has {found and found.size} bytes, expected {size}"
            )
        return found

    async def find_stored(self, upload_id: uuid.UUID, category: str) -> StoredObject | None:
        """An upload's object stored before a crash hid that from the database."""
        candidates = [category, *(c.value for c in Category if c.value != category)]
        for candidate in candidates:
            found = await self.head(self._backend.key_for(upload_id, candidate))
            if found is not None:
                await self._cleaner.forget(upload_id)
                return found
        return None

    # ------------------------------------------------------------------ concatenation

    async def store_partial(self, upload_id: uuid.UUID, staged_path: Path, size: int) -> None:
        """Ship what is left of a complete partial upload into its partial object."""
        if await anyio.Path(staged_path).exists():
            shipment = self.shipment(upload_id, staged_path)
            shipment.partial = True
            await self.store(shipment, size, Category.OTHER.value, _OCTETS)
            await anyio.Path(staged_path).unlink(missing_ok=True)
            return
        # The staging file goes only after the object is complete: a crash came between.
        try:
            found = await self.head(self._backend.partial_key(upload_id))
        except TRANSIENT_ERRORS as exc:
            raise storage_failure(exc) from exc
        if found is None or found.size != size:
            raise ServiceUnavailable(f"partial upload {upload_id} lost its staged bytes")
        await self._cleaner.forget(upload_id)

    async def concatenate(self, assembly: FinalAssembly, content_type: str) -> StoredObject:
        """Run a final upload's assembly; its spool file goes whatever the outcome.

        Parts are copied with UploadPartCopy where S3's part rules allow it and uploaded
        from the spool file where they do not (:mod:`app.storage.concat_plan`).
        """
        final_id = assembly.final_id
        try:
            # An assembly a crash interrupted is aborted first; this one starts over.
            await self._cleaner.discard_upload(final_id)
            return await assembly.run(content_type)
        except PartTooLarge as exc:
            raise PayloadTooLarge(str(exc)) from None
        except TRANSIENT_ERRORS as exc:
            logger.warning("final upload %s: assembly in S3 failed: %r", final_id, exc)
            raise storage_failure(exc) from exc
        finally:
            await anyio.Path(assembly.spool_path).unlink(missing_ok=True)

    async def begin_assembly(
        self, final_id: uuid.UUID, key: str, content_type: str, total: int
    ) -> Multipart:
        """Start (and record in the ledger) the multipart upload a final is built in."""
        settings = self.settings
        floor = part_floor(total, settings.s3_min_part_size, settings.s3_max_parts)
        plan = PartPlan(base_size=floor, max_parts=settings.s3_max_parts)
        return await self._shipper.begin_registered(final_id, key, content_type, plan)

    async def finish_assembly(
        self, final_id: uuid.UUID, multipart: Multipart, records: list[PartRecord], size: int
    ) -> StoredObject:
        """CompleteMultipartUpload (size checked by a HEAD); the ledger row is dropped."""
        stored = await self._complete(multipart, records, size)
        await self._cleaner.forget(final_id)
        return stored

    async def abandon_assembly(self, final_id: uuid.UUID) -> None:
        """Abort a failed assembly, waiting a bounded time (else the next attempt does)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(ABORT_PATIENCE):
            await self._cleaner.discard_upload(final_id)
