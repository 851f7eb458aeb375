"""Shipping staged bytes to S3 as multipart parts, in the background.

A PATCH is acknowledged once its bytes are durable in the staging file; S3 is not on that
path. After each commit :meth:`PartShipper.ship_durable` schedules every *whole*
part (as cut by :mod:`app.storage.parts`) that is now staged. Each part is sent from the
staging file with bounded concurrency (per upload and per process), retried with backoff
until S3 takes it, recorded in the ledger (:mod:`app.storage.s3_ledger`) and only then
reclaimed from staging. Parts are numbered by the plan, never by arrival, so a part sent
again after a crash replaces the earlier one.

Part bodies are not SHA-256 signed (``UNSIGNED-PAYLOAD``, which costs ~4x less CPU than
payload signing); each part carries a CRC32C instead, so S3 rejects a corrupted part.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from botocore.exceptions import ClientError
from sqlalchemy import delete, insert

from app.storage.parts import PartPlan, PartSpan, PartTooLarge, plan_for_deferred, plan_for_length
from app.storage.s3_collaborator import (
    MISCONFIGURATION_HINTS,
    RETRYABLE_ERRORS,
    S3Collaborator,
    Shipment,
    error_code,
    misconfiguration_of,
)
from app.storage.s3_ledger import Multipart, PartRecord, multipart_uploads, parts
from app.storage.s3_reconcile import PartsLost
from app.storage.sniff import SNIFF_SIZE, category_for, sniff_content_type
from app.storage.staged_parts import StagedPartBody, crc32c_of_range, reclaim_range

if TYPE_CHECKING:
    from app.storage.s3 import S3Backend
    from app.storage.s3_reconcile import LedgerReconciler

logger = logging.getLogger(__name__)

PRESIGNED_PART_SECONDS = 15 * 60
"""Lifetime of the presigned URL of one UploadPart (used at once, retried at most once)."""


class PartShipper(S3Collaborator):
    """Begins multipart uploads and sends their parts from staging, recording each one.

    The retry pause, the part uploader and the process-wide part slots are read through
    the backend each time (tests and ``start()`` set them after construction).
    """

    def __init__(self, backend: S3Backend, reconciler: LedgerReconciler) -> None:
        super().__init__(backend)
        self._reconciler = reconciler

    async def ship_durable(
        self, shipment: Shipment, durable_offset: int, length: int | None, *, partial: bool
    ) -> None:
        """Schedule every whole part inside ``[0, durable_offset)``; never waits for S3."""
        shipment.partial = shipment.partial or partial
        shipment.durable_offset = max(shipment.durable_offset, durable_offset)
        shipment.length = length
        if shipment.multipart is None and self._is_single_part(length):
            return  # store() sends it with one PutObject (and loads the ledger first)
        if shipment.pump is None or shipment.pump.done():
            shipment.pump = asyncio.create_task(self._pump(shipment))

    async def _pump(self, shipment: Shipment) -> None:
        """Schedule whole parts; while S3 refuses to start the upload, keep trying."""
        pause = 0.5
        while True:
            try:
                async with shipment.lock:
                    await self._reconciler.ensure_loaded(shipment)
                    await self._schedule_whole_parts(shipment)
                return
            except RETRYABLE_ERRORS as exc:
                shipment.last_error = exc
                _log_failure(exc, "upload %s: cannot start parts yet", shipment.upload_id)
            except PartsLost:
                logger.error("upload %s: S3 lost reclaimed parts", shipment.upload_id)
                return
            await asyncio.sleep(pause * (0.5 + random.random()))  # noqa: S311 - jitter
            pause = min(pause * 2, self._backend.retry_pause_max)

    async def _schedule_whole_parts(self, shipment: Shipment) -> None:
        """Start every whole part staged so far, beginning the multipart upload (lock held).

        A one-part upload waits for :meth:`S3Backend.store`, which sends it with one
        PutObject.
        """
        while shipment.finished is None:
            seen = shipment.durable_offset
            plan = self.plan_of(shipment)
            whole = plan.whole_parts_within(seen)
            single = shipment.length is not None and shipment.length <= plan.size_of(1)
            if whole == 0 or (single and shipment.multipart is None):
                return
            if shipment.multipart is None:
                await self.begin_multipart(shipment, plan)
            self.schedule_parts(shipment, range(shipment.scheduled_upto + 1, whole + 1), plan)
            shipment.scheduled_upto = max(shipment.scheduled_upto, whole)
            if shipment.durable_offset == seen:
                return

    def _is_single_part(self, length: int | None) -> bool:
        if length is None:
            return False
        settings = self.settings
        try:
            plan = plan_for_length(length, settings.s3_min_part_size, settings.s3_max_parts)
        except PartTooLarge:
            return False
        return length <= plan.size_of(1)

    def plan_of(self, shipment: Shipment) -> PartPlan:
        """How the shipment's bytes are cut into parts: its multipart upload's plan, if any."""
        if shipment.multipart is not None:
            return shipment.multipart.plan
        settings = self.settings
        if shipment.length is not None:
            return plan_for_length(
                shipment.length, settings.s3_min_part_size, settings.s3_max_parts
            )
        return plan_for_deferred(
            settings.s3_min_part_size, settings.s3_max_parts, settings.max_size
        )

    def schedule_parts(self, shipment: Shipment, numbers: Iterable[int], plan: PartPlan) -> None:
        """Send each of these parts in the background, unless recorded or under way."""
        for number in numbers:
            if number in shipment.recorded or number in shipment.in_flight:
                continue
            span = plan.span(number)
            if shipment.length is not None and span.end > shipment.length:
                span = PartSpan(number=number, start=span.start, size=shipment.length - span.start)
            task = asyncio.create_task(self._ship_until_done(shipment, span))
            shipment.in_flight[number] = task
            task.add_done_callback(_drop_from(shipment.in_flight, number))

    async def _ship_until_done(self, shipment: Shipment, span: PartSpan) -> None:
        """Send one part, retrying with backoff until S3 takes it (or it is cancelled)."""
        pause = 0.5
        while True:
            try:
                await self._ship_part(shipment, span)
                shipment.last_error = None
                return
            except ClientError as exc:
                if error_code(exc) == "NoSuchUpload":
                    shipment.loaded = False  # reconcile before the next attempt
                    shipment.last_error = exc
                    return
                shipment.last_error = exc
            except FileNotFoundError:
                return  # the staging file is gone: the upload was finished or removed
            except RETRYABLE_ERRORS as exc:
                # S3 or the database (the ledger) is unwell: S3 may hold the part already;
                # sending it again under the same number replaces it.
                shipment.last_error = exc
            _log_failure(
                shipment.last_error,
                "upload %s part %d failed; retrying in %.1fs",
                shipment.upload_id,
                span.number,
                pause,
            )
            await asyncio.sleep(pause * (0.5 + random.random()))  # noqa: S311 - jitter
            pause = min(pause * 2, self._backend.retry_pause_max)

    async def _ship_part(self, shipment: Shipment, span: PartSpan) -> None:
        multipart = shipment.multipart
        assert multipart is not None and shipment.slots is not None
        async with shipment.slots, self._backend.part_slots:
            crc = await anyio.to_thread.run_sync(
                crc32c_of_range, shipment.staged_path, span.start, span.size
            )
            etag = await self._send_part(shipment.staged_path, multipart, span, crc)
        record = PartRecord(span.number, span.size, etag, crc)
        await self._record_part(shipment.upload_id, record)
        shipment.recorded[span.number] = record
        await anyio.to_thread.run_sync(reclaim_range, shipment.staged_path, span.start, span.end)

    async def _send_part(
        self, staged_path: Path, multipart: Multipart, span: PartSpan, crc: str
    ) -> str:
        """UploadPart from the staging file; returns the ETag."""
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": multipart.key,
            "UploadId": multipart.s3_upload_id,
            "PartNumber": span.number,
            "ContentLength": span.size,
            "ChecksumCRC32C": crc,
        }
        part_uploader = self._backend.part_uploader
        if part_uploader is not None:
            url = await self.client.generate_presigned_url(
                "upload_part", Params=params, ExpiresIn=PRESIGNED_PART_SECONDS
            )
            return await part_uploader.put(
                url, {"x-amz-checksum-crc32c": crc}, staged_path, span.start, span.size
            )
        with StagedPartBody(staged_path, span.start, span.size) as body:
            response = await self.client.upload_part(Body=body, **params)  # type: ignore[arg-type]
        return response["ETag"]

    async def _record_part(self, upload_id: uuid.UUID, record: PartRecord) -> None:
        async with self.sessions() as session, session.begin():
            await session.execute(
                delete(parts).where(
                    parts.c.upload_id == upload_id, parts.c.part_number == record.number
                )
            )
            await session.execute(
                insert(parts).values(
                    upload_id=upload_id,
                    part_number=record.number,
                    size=record.size,
                    etag=record.etag,
                    checksum_crc32c=record.crc32c,
                    created_at=datetime.now(UTC),
                )
            )

    async def begin_multipart(self, shipment: Shipment, plan: PartPlan) -> None:
        """Start the shipment's multipart upload at the key its sniffed category gives."""
        head = await anyio.to_thread.run_sync(_read_head, shipment.staged_path)
        content_type = sniff_content_type(head)
        # The service sniffs the same head with the same function, so the category (and
        # the key) chosen now is the one it will ask store() for.
        key = self.object_key(shipment, category_for(content_type).value)
        shipment.multipart = await self.begin_registered(
            shipment.upload_id, key, content_type, plan
        )
        shipment.recorded.clear()

    async def begin_registered(
        self, upload_id: uuid.UUID, key: str, content_type: str, plan: PartPlan
    ) -> Multipart:
        """CreateMultipartUpload, then the ledger row that owns it (and its plan)."""
        response = await self.client.create_multipart_upload(
            Bucket=self.bucket, Key=key, ContentType=content_type, ChecksumAlgorithm="CRC32C"
        )
        multipart = Multipart(key=key, s3_upload_id=response["UploadId"], plan=plan)
        async with self.sessions() as session, session.begin():
            await session.execute(
                delete(multipart_uploads).where(multipart_uploads.c.upload_id == upload_id)
            )
            await session.execute(delete(parts).where(parts.c.upload_id == upload_id))
            await session.execute(
                insert(multipart_uploads).values(
                    upload_id=upload_id,
                    object_key=key,
                    s3_upload_id=multipart.s3_upload_id,
                    base_part_size=plan.base_size,
                    growth_step=plan.growth_step,
                    max_parts=plan.max_parts,
                    created_at=datetime.now(UTC),
                )
            )
        return multipart


def _log_failure(exc: BaseException | None, message: str, *args: object) -> None:
    """A warning for S3 being unwell; an error for S3 refusing Ferry's settings, which no
    retry fixes (the retries go on: a bucket policy may still change)."""
    code = misconfiguration_of(exc)
    if code is None:
        logger.warning(message + " (%r)", *args, exc)
        return
    logger.error(
        message + " (S3 refused it with %s: a configuration problem, check %s)",
        *args,
        code,
        MISCONFIGURATION_HINTS[code],
    )


def _drop_from(
    in_flight: dict[int, asyncio.Task[None]], number: int
) -> Callable[[asyncio.Task[None]], None]:
    """A done-callback that removes a finished part task from the in-flight map."""

    def drop(_task: asyncio.Task[None]) -> None:
        in_flight.pop(number, None)

    return drop


def _read_head(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(SNIFF_SIZE)
