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

import base64
import logging
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import google_crc32c
from botocore.exceptions import ClientError

from app.errors import PayloadTooLarge, ServiceUnavailable
from app.storage.backend import StoredObject
from app.storage.concat_plan import part_floor
from app.storage.parts import PartPlan, PartTooLarge
from app.storage.s3_collaborator import (
    TRANSIENT_ERRORS,
    S3Collaborator,
    error_code,
    storage_failure,
)
from app.storage.s3_ledger import Multipart, PartRecord, ReceivedRanges
from app.storage.s3_shipping import unfenced
from app.storage.sniff import Category
from app.storage.staged_parts import StagedRangeReader, crc32c_base64, crc32c_of_range

if TYPE_CHECKING:
    from app.storage.s3 import S3Backend
    from app.storage.s3_cleanup import ObjectCleaner
    from app.storage.s3_concat import FinalAssembly
    from app.storage.s3_shipping import Ledger, PartShipper

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
        cleaner: ObjectCleaner,
    ) -> None:
        super().__init__(backend)
        self._shipper = shipper
        self._cleaner = cleaner

    async def store(
        self,
        upload_id: uuid.UUID,
        staged_path: Path,
        size: int,
        key: str,
        content_type: str,
    ) -> StoredObject:
        """Complete and verify the object of an upload whose ``size`` bytes are all
        acknowledged (so all in S3); its ledger rows and segments go afterwards.

        Verification before the caller files anything (invariant 4): the recorded parts
        must hold exactly ``[0, size)``, S3 must report the object at that length, and the
        checksum of the completed object must be the one of the recorded parts.
        """
        try:
            ledger = await self._shipper.load(upload_id)
            stored = await self._store(ledger, upload_id, staged_path, size, key, content_type)
            await self._shipper.forget(upload_id, ledger)
            if ledger.multipart is not None:
                # An upload of several parts took several requests, any of which may have
                # died after putting a segment it never recorded: its segment folder is
                # listed (one request; a one-part upload's leftovers go to the sweep).
                await self._shipper.drop_segments(upload_id, unrecorded=True)
        except TRANSIENT_ERRORS as exc:
            logger.warning("upload %s: storing in S3 failed: %r", upload_id, exc)
            raise storage_failure(exc) from exc
        return stored

    async def _store(
        self,
        ledger: Ledger,
        upload_id: uuid.UUID,
        staged_path: Path,
        size: int,
        key: str,
        content_type: str,
    ) -> StoredObject:
        try:
            held, chain = ledger.acknowledged(size)
        except ServiceUnavailable:
            # Stored before a crash hid that from the database: the ledger went with it.
            found = await self.head(ledger.multipart.key if ledger.multipart else key)
            if found is not None and found.size == size:
                return found
            staged_whole = ledger.multipart is None and not ledger.segments
            if staged_whole and await _size_of(staged_path) == size:
                # Staged whole by a version that shipped only at completion.
                return await self.put_from_file(key, staged_path, size, content_type)
            raise
        if ledger.multipart is not None and not chain:
            return await self._complete(ledger.multipart, held, size)
        if ledger.multipart is None and len(chain) == 1 and chain[0].key == key:
            # A one-part upload: the body that completed it put the object already.
            return StoredObject(key=key, size=size)
        if ledger.multipart is not None:
            logger.error(
                "upload %s: %d acknowledged bytes are in segments, not parts; completion refused",
                upload_id,
                size - sum(record.size for record in held),
            )
            raise ServiceUnavailable(f"upload {upload_id} cannot be verified in S3")
        # No object yet (an empty upload, or a category other than the one sniffed when
        # the object was put): one PutObject from the acknowledged bytes, checked against
        # their segments' CRCs as received.
        await self._shipper.restore(upload_id, staged_path, size, unfenced)
        crc = ReceivedRanges(chain, None).crc_of(0, size)
        return await self.put_from_file(key, staged_path, size, content_type, crc)

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
        reported = response.get("ChecksumCRC32C")
        expected = composite_crc32c(records)
        if reported and expected and reported != expected:
            logger.error(
                "object %s: S3 assembled checksum %s, the recorded parts make %s",
                multipart.key,
                reported,
                expected,
            )
            raise ServiceUnavailable(f"object {multipart.key} does not match its parts")
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
        """Complete a partial upload's object from its acknowledged parts; idempotent."""
        key = self._backend.partial_key(upload_id)
        try:
            found = await self.head(key)
        except TRANSIENT_ERRORS as exc:
            raise storage_failure(exc) from exc
        if found is not None and found.size == size:
            return  # completed before a crash hid that from the database
        await self.store(upload_id, staged_path, size, key, _OCTETS)
        await anyio.Path(staged_path).unlink(missing_ok=True)

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


def composite_crc32c(records: list[PartRecord]) -> str | None:
    """S3's checksum of a multipart object: the CRC32C of the parts' CRC32Cs, ``-N``."""
    if not records or any(record.crc32c is None for record in records):
        return None
    joined = b"".join(base64.b64decode(record.crc32c or "") for record in records)
    return f"{crc32c_base64(int(google_crc32c.value(joined)))}-{len(records)}"


async def _size_of(path: Path) -> int | None:
    try:
        return (await anyio.Path(path).stat()).st_size
    except FileNotFoundError:
        return None
