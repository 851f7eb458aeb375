"""S3 backend: staged bytes are shipped as multipart parts in the background.

A PATCH is acknowledged once its bytes are durable in the staging file; S3 is not on that
path. After each commit :meth:`S3Backend.staged_bytes_durable` schedules every *whole*
part (as cut by :mod:`app.storage.parts`) that is now staged; parts go to S3 from the
staging file with bounded concurrency, each is recorded in the ledger
(:mod:`app.storage.s3_ledger`) once S3 acknowledged it, and then its staging space is
reclaimed. On completion only the last part and CompleteMultipartUpload remain; uploads
smaller than one part become a single PutObject.

Part bodies are not SHA-256 signed (``UNSIGNED-PAYLOAD``, which costs ~4x less CPU than
payload signing); each part carries a CRC32C instead, so S3 rejects a corrupted part.

Crash safety: parts are numbered by the plan, never by arrival, so re-sending a part
after a crash replaces it instead of duplicating it. Before an upload's first part in a
process, the ledger is reconciled with ListParts; a part recorded but missing in S3 is
sent again from staging (or the upload is reported lost if its bytes were reclaimed).

Concatenation: a partial upload ships the same way into ``{prefix}partials/{uid}`` (not a
file); a final upload is assembled from those objects inside S3 by
:mod:`app.storage.s3_concat`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import anyio.to_thread
from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import PayloadTooLarge, ServiceUnavailable
from app.filenames import content_disposition
from app.storage.backend import StoredObject
from app.storage.concat_plan import part_floor
from app.storage.part_upload import PartUploader
from app.storage.parts import (
    PartPlan,
    PartSpan,
    PartTooLarge,
    check_upload_length,
    plan_for_deferred,
    plan_for_length,
)
from app.storage.s3_client import direct_part_uploader, s3_client, s3_session
from app.storage.s3_concat import FinalAssembly
from app.storage.s3_ledger import Multipart, PartRecord, multipart_uploads, parts
from app.storage.sniff import SNIFF_SIZE, Category, category_for, sniff_content_type
from app.storage.staged_parts import (
    StagedPartBody,
    StagedRangeReader,
    crc32c_of_range,
    reclaim_range,
)

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

    from app.settings import Settings

logger = logging.getLogger(__name__)

#: Errors of one S3 call that are worth retrying later (S3 or the network is unwell).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    BotoCoreError,
    ClientError,
    aiohttp.ClientError,
    OSError,
    asyncio.TimeoutError,
)
#: Errors a background task waits out: S3 trouble, or the database holding the ledger.
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, SQLAlchemyError)
DOWNLOAD_BLOCK_SIZE = 1024 * 1024
_OCTETS = "application/octet-stream"
PARTIALS_FOLDER = "partials"
"""Partial uploads (tus concatenation) are kept at ``{prefix}partials/{uid}``."""
ABORT_PATIENCE = 15.0
"""Seconds a failed assembly waits for its abort; past that, the next attempt aborts it."""
PRESIGNED_PART_SECONDS = 15 * 60
"""Lifetime of the presigned URL of one UploadPart (used at once, retried at most once)."""
ORPHAN_GRACE = timedelta(minutes=10)
"""A multipart upload no ledger row names is aborted only when older than this (it may be
one whose ledger row is being written right now)."""


class PartsLost(Exception):
    """S3 lost parts whose staged bytes were already reclaimed; the upload cannot finish."""


@dataclass(eq=False)
class _Shipment:
    """What this process knows about one upload's way into S3."""

    upload_id: uuid.UUID
    staged_path: Path
    partial: bool = False
    """A partial upload's bytes: they go to its partial object, not to a file key."""
    durable_offset: int = 0
    length: int | None = None
    multipart: Multipart | None = None
    recorded: dict[int, PartRecord] = field(default_factory=dict)
    in_flight: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    scheduled_upto: int = 0
    loaded: bool = False
    lost: bool = False
    finished: StoredObject | None = None
    """The object, when the multipart upload turned out to be completed already."""
    last_error: BaseException | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pump: asyncio.Task[None] | None = None
    slots: asyncio.Semaphore | None = None

    @property
    def shipped_bytes(self) -> int:
        return sum(record.size for record in self.recorded.values())


class S3Backend:
    """Stores finished files as S3 objects ``{prefix}{category}/{uid}``."""

    name = "s3"
    reclaims_staging = True
    """Staged bytes of shipped parts are punched out: SHA-256 must come from S3 then."""
    stores_partials = True
    """Partial uploads ship like any upload; finals are assembled in S3 (a PartialStore)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix
        self._sessions: async_sessionmaker[AsyncSession] | None = None
        self._client: S3Client | None = None
        self._exit_stack = contextlib.AsyncExitStack()
        self._shipments: dict[uuid.UUID, _Shipment] = {}
        self._global_slots: asyncio.Semaphore | None = None
        self.part_uploader: PartUploader | None = None
        """Sends part bodies with sendfile; ``None`` (behind a proxy): through the client."""
        self.retry_pause_max = 30.0
        """Longest pause between attempts of a background part upload."""

    # ------------------------------------------------------------------ life cycle

    def bind_database(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        """Give the backend the app's session factory for its parts ledger."""
        self._sessions = sessions

    async def start(self) -> None:
        """Open the one S3 client of the process."""
        session = s3_session()
        self._client = await self._exit_stack.enter_async_context(s3_client(session, self.settings))
        self.part_uploader = direct_part_uploader(
            session, self._client.meta.endpoint_url, self.settings.s3_timeout_seconds
        )
        # S3 servers saturate with a few parts in flight; more only costs memory.
        self._global_slots = asyncio.Semaphore(self.settings.s3_part_concurrency * 2)

    async def close(self) -> None:
        """Stop background parts (their bytes stay staged) and close the client."""
        tasks = [t for s in self._shipments.values() for t in [*s.in_flight.values(), s.pump] if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._shipments.clear()
        if self.part_uploader is not None:
            self.part_uploader.close()
        await self._exit_stack.aclose()
        self._client = None

    @property
    def client(self) -> S3Client:
        if self._client is None:
            raise RuntimeError("S3Backend.start() was not called")
        return self._client

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        if self._sessions is None:
            raise RuntimeError("S3Backend.bind_database() was not called")
        return self._sessions

    async def is_usable(self) -> bool:
        """The bucket answers a HEAD."""
        try:
            with anyio.fail_after(5):
                await self.client.head_bucket(Bucket=self.bucket)
        except TRANSIENT_ERRORS:
            return False
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ admission

    def check_length(self, length: int) -> None:
        """413 for an upload no multipart upload could hold (``max_parts`` parts of 5 GiB)."""
        try:
            check_upload_length(length, self.settings.s3_max_parts)
        except PartTooLarge as exc:
            raise PayloadTooLarge(str(exc)) from None

    def pending_bytes(self) -> int:
        """Bytes staged and acknowledged but not yet in S3, over all uploads."""
        return sum(max(0, s.durable_offset - s.shipped_bytes) for s in self._shipments.values())

    def check_staging_room(self) -> None:
        """503 while S3 lags so far behind that staging holds more than the budget."""
        if self.pending_bytes() >= self.settings.s3_staging_budget:
            raise ServiceUnavailable(
                "object storage is behind; the staging budget is used up; retry later",
                headers={"Retry-After": "10"},
            )

    # ------------------------------------------------------------------ keys

    def key_for(self, upload_id: uuid.UUID, category: str) -> str:
        """The object key of an upload's file."""
        return f"{self.prefix}{Category(category).value}/{upload_id}"

    def partial_key(self, upload_id: uuid.UUID) -> str:
        """The object key of a partial upload: deterministic, so a restart finds it."""
        return f"{self.prefix}{PARTIALS_FOLDER}/{upload_id}"

    def _object_key(self, shipment: _Shipment, category: str) -> str:
        if shipment.partial:
            return self.partial_key(shipment.upload_id)
        return self.key_for(shipment.upload_id, category)

    def _upload_id_of_key(self, key: str) -> uuid.UUID | None:
        if not key.startswith(self.prefix):
            return None
        try:
            return uuid.UUID(key.rsplit("/", 1)[-1])
        except ValueError:
            return None

    # ------------------------------------------------------------------ background parts

    def _shipment(self, upload_id: uuid.UUID, staged_path: Path) -> _Shipment:
        shipment = self._shipments.get(upload_id)
        if shipment is None:
            shipment = _Shipment(upload_id=upload_id, staged_path=staged_path)
            shipment.slots = asyncio.Semaphore(self.settings.s3_part_concurrency)
            self._shipments[upload_id] = shipment
        return shipment

    async def staged_bytes_durable(
        self,
        upload_id: uuid.UUID,
        staged_path: Path,
        durable_offset: int,
        length: int | None,
        *,
        partial: bool = False,
    ) -> None:
        """Schedule every whole part inside ``[0, durable_offset)``; never waits for S3."""
        shipment = self._shipment(upload_id, staged_path)
        shipment.partial = shipment.partial or partial
        shipment.durable_offset = max(shipment.durable_offset, durable_offset)
        shipment.length = length
        if shipment.multipart is None and self._is_single_part(length):
            return  # store() sends it with one PutObject (and loads the ledger first)
        if shipment.pump is None or shipment.pump.done():
            shipment.pump = asyncio.create_task(self._pump(shipment))

    async def _pump(self, shipment: _Shipment) -> None:
        """Schedule whole parts; while S3 refuses to start the upload, keep trying."""
        pause = 0.5
        while True:
            try:
                async with shipment.lock:
                    await self._ensure_loaded(shipment)
                    await self._schedule_whole_parts(shipment)
                return
            except RETRYABLE_ERRORS as exc:
                shipment.last_error = exc
                logger.warning("upload %s: cannot start parts yet: %r", shipment.upload_id, exc)
            except PartsLost:
                logger.error("upload %s: S3 lost reclaimed parts", shipment.upload_id)
                return
            await asyncio.sleep(pause * (0.5 + random.random()))  # noqa: S311 - jitter
            pause = min(pause * 2, self.retry_pause_max)

    async def _schedule_whole_parts(self, shipment: _Shipment) -> None:
        """Start every whole part staged so far, beginning the multipart upload (lock held).

        A one-part upload waits for :meth:`store`, which sends it with one PutObject.
        """
        while shipment.finished is None:
            seen = shipment.durable_offset
            plan = self._plan_of(shipment)
            whole = plan.whole_parts_within(seen)
            single = shipment.length is not None and shipment.length <= plan.size_of(1)
            if whole == 0 or (single and shipment.multipart is None):
                return
            if shipment.multipart is None:
                await self._begin_multipart(shipment, plan)
            self._schedule_parts(shipment, range(shipment.scheduled_upto + 1, whole + 1), plan)
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

    def _plan_of(self, shipment: _Shipment) -> PartPlan:
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

    def _schedule_parts(self, shipment: _Shipment, numbers: Iterable[int], plan: PartPlan) -> None:
        for number in numbers:
            if number in shipment.recorded or number in shipment.in_flight:
                continue
            span = plan.span(number)
            if shipment.length is not None and span.end > shipment.length:
                span = PartSpan(number=number, start=span.start, size=shipment.length - span.start)
            task = asyncio.create_task(self._ship_until_done(shipment, span))
            shipment.in_flight[number] = task
            task.add_done_callback(_drop_from(shipment.in_flight, number))

    async def _ship_until_done(self, shipment: _Shipment, span: PartSpan) -> None:
        """Send one part, retrying with backoff until S3 takes it (or it is cancelled)."""
        pause = 0.5
        while True:
            try:
                await self._ship_part(shipment, span)
                shipment.last_error = None
                return
            except ClientError as exc:
                if _error_code(exc) == "NoSuchUpload":
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
            logger.warning(
                "upload %s part %d failed (%r); retrying in %.1fs",
                shipment.upload_id,
                span.number,
                shipment.last_error,
                pause,
            )
            await asyncio.sleep(pause * (0.5 + random.random()))  # noqa: S311 - jitter
            pause = min(pause * 2, self.retry_pause_max)

    async def _ship_part(self, shipment: _Shipment, span: PartSpan) -> None:
        multipart = shipment.multipart
        assert multipart is not None and shipment.slots is not None and self._global_slots
        async with shipment.slots, self._global_slots:
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
        if self.part_uploader is not None:
            url = await self.client.generate_presigned_url(
                "upload_part", Params=params, ExpiresIn=PRESIGNED_PART_SECONDS
            )
            return await self.part_uploader.put(
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

    async def _begin_multipart(self, shipment: _Shipment, plan: PartPlan) -> None:
        head = await anyio.to_thread.run_sync(_read_head, shipment.staged_path)
        content_type = sniff_content_type(head)
        # The service sniffs the same head with the same function, so the category (and
        # the key) chosen now is the one it will ask store() for.
        key = self._object_key(shipment, category_for(content_type).value)
        shipment.multipart = await self._begin_registered(
            shipment.upload_id, key, content_type, plan
        )
        shipment.recorded.clear()

    async def _begin_registered(
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

    async def _ensure_loaded(self, shipment: _Shipment) -> None:
        """Load the ledger and reconcile it with ListParts (once per process and upload)."""
        if shipment.loaded:
            return
        shipment.scheduled_upto = 0
        async with self.sessions() as session:
            row = (
                await session.execute(
                    select(multipart_uploads).where(
                        multipart_uploads.c.upload_id == shipment.upload_id
                    )
                )
            ).first()
            if row is None:  # parts rows only ever exist beside a multipart row
                shipment.multipart = None
                shipment.recorded = {}
                shipment.loaded = True
                return
            rows = (
                await session.execute(select(parts).where(parts.c.upload_id == shipment.upload_id))
            ).all()
        plan = PartPlan(
            base_size=row.base_part_size, max_parts=row.max_parts, growth_step=row.growth_step
        )
        multipart = Multipart(key=row.object_key, s3_upload_id=row.s3_upload_id, plan=plan)
        recorded = {
            r.part_number: PartRecord(r.part_number, r.size, r.etag, r.checksum_crc32c)
            for r in rows
        }
        in_s3 = await self._list_parts(multipart)
        if in_s3 is None:
            found = await self._head(multipart.key)
            if found is not None:
                # Completed before a crash hid the answer: nothing left to send.
                shipment.multipart = multipart
                shipment.finished = found
                shipment.loaded = True
                return
            # The multipart upload is gone (aborted outside Ferry): start again if every
            # recorded part is still staged, else the upload cannot be finished.
            if recorded and not await self._all_staged(shipment, recorded.values(), plan):
                shipment.lost = True
                raise PartsLost(str(shipment.upload_id))
            async with self.sessions() as session, session.begin():
                await session.execute(
                    delete(multipart_uploads).where(
                        multipart_uploads.c.upload_id == shipment.upload_id
                    )
                )
                await session.execute(delete(parts).where(parts.c.upload_id == shipment.upload_id))
            shipment.multipart = None
            shipment.recorded = {}
            shipment.loaded = True
            return
        kept: dict[int, PartRecord] = {}
        missing: list[PartRecord] = []
        for number, record in recorded.items():
            seen = in_s3.get(number)
            if seen is not None and seen[0] == record.size and _same_etag(seen[1], record.etag):
                kept[number] = record
            else:
                missing.append(record)
        if missing:
            if not await self._all_staged(shipment, missing, plan):
                shipment.lost = True
                raise PartsLost(str(shipment.upload_id))
            async with self.sessions() as session, session.begin():
                await session.execute(
                    delete(parts).where(
                        parts.c.upload_id == shipment.upload_id,
                        parts.c.part_number.in_([r.number for r in missing]),
                    )
                )
        # Parts S3 has but the ledger lacks (sent just before a crash) are simply sent
        # again from staging under the same number, which replaces them.
        shipment.multipart = multipart
        shipment.recorded = kept
        shipment.loaded = True

    async def _all_staged(
        self, shipment: _Shipment, records: Iterable[PartRecord], plan: PartPlan
    ) -> bool:
        spans = [plan.span(r.number) for r in records]
        return await anyio.to_thread.run_sync(_ranges_hold_data, shipment.staged_path, spans)

    async def _list_parts(self, multipart: Multipart) -> dict[int, tuple[int, str]] | None:
        """Part number → (size, ETag) as S3 knows them; ``None`` if the upload is gone."""
        found: dict[int, tuple[int, str]] = {}
        marker = 0
        while True:
            try:
                page = await self.client.list_parts(
                    Bucket=self.bucket,
                    Key=multipart.key,
                    UploadId=multipart.s3_upload_id,
                    PartNumberMarker=marker,
                )
            except ClientError as exc:
                if _error_code(exc) in {"NoSuchUpload", "404"}:
                    return None
                raise
            for part in page.get("Parts", []):
                found[part["PartNumber"]] = (part["Size"], part["ETag"])
            if not page.get("IsTruncated"):
                return found
            marker = page["NextPartNumberMarker"]

    # ------------------------------------------------------------------ completion

    async def store(
        self,
        upload_id: uuid.UUID,
        staged_path: Path,
        size: int,
        category: str,
        content_type: str,
        *,
        keep_staged: bool = False,
    ) -> StoredObject:
        """Send what is left, complete the object, verify it and drop the staging file
        (unless ``keep_staged``)."""
        shipment = self._shipment(upload_id, staged_path)
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
            raise ServiceUnavailable(
                "object storage is unavailable; retry later", headers={"Retry-After": "5"}
            ) from exc
        await self._forget(upload_id)
        if not keep_staged:
            await anyio.Path(staged_path).unlink(missing_ok=True)
        return stored

    async def _store(
        self, shipment: _Shipment, size: int, category: str, content_type: str
    ) -> StoredObject:
        async with shipment.lock:
            await self._ensure_loaded(shipment)
            if shipment.finished is not None and shipment.finished.size == size:
                return shipment.finished
            plan = self._plan_of(shipment)
            if shipment.multipart is None and size <= plan.size_of(1):
                return await self._put_single(shipment, size, category, content_type)
            if shipment.multipart is None:
                await self._begin_multipart(shipment, plan)
            wanted = plan.parts_for(size)
            self._schedule_parts(shipment, [p.number for p in wanted], plan)
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

    async def _wait_for_parts(self, shipment: _Shipment, count: int) -> None:
        """Wait for the scheduled parts; 503 after ``s3_timeout_seconds`` without progress."""
        loop = asyncio.get_running_loop()
        # one timed-out attempt plus its retry may pass before a part lands
        patience = 2.0 * self.settings.s3_timeout_seconds + 5.0
        last_progress, recorded = loop.time(), len(shipment.recorded)
        while pending := [t for t in shipment.in_flight.values() if not t.done()]:
            await asyncio.wait(pending, timeout=1.0)
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
                await self._ensure_loaded(shipment)
            raise ServiceUnavailable("the multipart upload was lost; retry to send it again")
        if len(shipment.recorded) < count:
            raise ServiceUnavailable("object storage is unavailable; retry later")

    async def _put_single(
        self, shipment: _Shipment, size: int, category: str, content_type: str
    ) -> StoredObject:
        key = self._object_key(shipment, category)
        return await self._put_from_file(key, shipment.staged_path, size, content_type)

    async def _put_from_file(
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
            if _error_code(exc) != "NoSuchUpload":
                raise
            # Completed before (the answer was lost to a crash or a reset): the object
            # must be there, whole.
            found = await self._head(multipart.key)
            if found is None or found.size != size:
                raise
            return found
        if "ETag" not in response:
            # a 200 whose body was an error (botocore usually turns those into errors)
            raise ServiceUnavailable("CompleteMultipartUpload answered without an ETag")
        found = await self._head(multipart.key)
        if found is None or found.size != size:
            raise ServiceUnavailable(
                f"object {multipart.key} has {found and found.size} bytes, expected {size}"
            )
        return found

    async def _head(self, key: str) -> StoredObject | None:
        try:
            response = await self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        return StoredObject(key=key, size=response["ContentLength"], etag=response.get("ETag"))

    async def find_stored(self, upload_id: uuid.UUID, category: str) -> StoredObject | None:
        """An upload's object stored before a crash hid that from the database."""
        candidates = [category, *(c.value for c in Category if c.value != category)]
        for candidate in candidates:
            found = await self._head(self.key_for(upload_id, candidate))
            if found is not None:
                await self._forget(upload_id)
                return found
        return None

    # ------------------------------------------------------------------ concatenation

    async def store_partial(self, upload_id: uuid.UUID, staged_path: Path, size: int) -> None:
        """Ship what is left of a complete partial upload into its partial object."""
        if await anyio.Path(staged_path).exists():
            self._shipment(upload_id, staged_path).partial = True
            await self.store(upload_id, staged_path, size, Category.OTHER.value, _OCTETS)
            return
        # The staging file goes only after the object is complete: a crash came between.
        try:
            found = await self._head(self.partial_key(upload_id))
        except TRANSIENT_ERRORS as exc:
            raise ServiceUnavailable(
                "object storage is unavailable; retry later", headers={"Retry-After": "5"}
            ) from exc
        if found is None or found.size != size:
            raise ServiceUnavailable(f"partial upload {upload_id} lost its staged bytes")
        await self._forget(upload_id)

    def partial_object(self, upload_id: uuid.UUID, size: int) -> StoredObject:
        """Where a stored partial upload lives."""
        return StoredObject(key=self.partial_key(upload_id), size=size)

    async def concatenate(
        self,
        final_id: uuid.UUID,
        sources: Sequence[StoredObject],
        spool_path: Path,
        category: str,
        content_type: str,
    ) -> StoredObject:
        """Assemble a final upload's object from partial objects inside S3.

        Parts are copied with UploadPartCopy where S3's part rules allow it and uploaded
        from ``spool_path`` where they do not (:mod:`app.storage.concat_plan`).
        """
        key = self.key_for(final_id, category)
        try:
            # An assembly a crash interrupted is aborted first; this one starts over.
            await self.discard_upload(final_id)
            return await FinalAssembly(self, final_id, key, sources, spool_path).run(content_type)
        except PartTooLarge as exc:
            raise PayloadTooLarge(str(exc)) from None
        except TRANSIENT_ERRORS as exc:
            logger.warning("final upload %s: assembly in S3 failed: %r", final_id, exc)
            raise ServiceUnavailable(
                "object storage is unavailable; retry later", headers={"Retry-After": "5"}
            ) from exc
        finally:
            await anyio.Path(spool_path).unlink(missing_ok=True)

    async def begin_assembly(
        self, final_id: uuid.UUID, key: str, content_type: str, total: int
    ) -> Multipart:
        """Start (and record in the ledger) the multipart upload a final is built in."""
        settings = self.settings
        floor = part_floor(total, settings.s3_min_part_size, settings.s3_max_parts)
        plan = PartPlan(base_size=floor, max_parts=settings.s3_max_parts)
        return await self._begin_registered(final_id, key, content_type, plan)

    async def finish_assembly(
        self, final_id: uuid.UUID, multipart: Multipart, records: list[PartRecord], size: int
    ) -> StoredObject:
        """CompleteMultipartUpload (size checked by a HEAD); the ledger row is dropped."""
        stored = await self._complete(multipart, records, size)
        await self._forget(final_id)
        return stored

    async def abandon_assembly(self, final_id: uuid.UUID) -> None:
        """Abort a failed assembly, waiting a bounded time (else the next attempt does)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(ABORT_PATIENCE):
            await self.discard_upload(final_id)

    async def put_file(
        self, key: str, path: Path, size: int, content_type: str, crc32c: str
    ) -> StoredObject:
        """One PutObject of the first ``size`` bytes of a spool file."""
        return await self._put_from_file(key, path, size, content_type, crc32c)

    @property
    def part_slots(self) -> asyncio.Semaphore:
        """Bounds the parts this process sends at once, over all uploads."""
        if self._global_slots is None:
            raise RuntimeError("S3Backend.start() was not called")
        return self._global_slots

    async def discard_partial(self, upload_id: uuid.UUID) -> None:
        """Delete a partial upload's object (the orphan sweep retries if S3 is down)."""
        try:
            await self.delete(self.partial_key(upload_id))
        except TRANSIENT_ERRORS as exc:
            logger.warning(
                "partial upload %s: delete failed (%r); the sweep retries", upload_id, exc
            )

    async def delete_orphaned_partials(self, live_partial_ids: set[uuid.UUID]) -> int:
        """Delete partial objects whose partial upload is no longer live."""
        deleted = 0
        now = datetime.now(UTC)
        paginator = self.client.get_paginator("list_objects_v2")
        prefix = f"{self.prefix}{PARTIALS_FOLDER}/"
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                owner = self._upload_id_of_key(item["Key"])
                if owner is not None and owner in live_partial_ids:
                    continue
                modified = item.get("LastModified")
                if modified is not None and now - modified < ORPHAN_GRACE:
                    continue  # its upload may have been created after the live set was read
                await self.delete(item["Key"])
                deleted += 1
        return deleted

    # ------------------------------------------------------------------ cleanup

    async def _forget(self, upload_id: uuid.UUID) -> None:
        """Drop the ledger rows and the in-memory state of an upload."""
        shipment = self._shipments.pop(upload_id, None)
        if shipment is not None:
            for task in list(shipment.in_flight.values()):
                task.cancel()
            if shipment.loaded and shipment.multipart is None:
                return  # known to have no ledger rows: spare a transaction per small file
        async with self.sessions() as session, session.begin():
            await session.execute(delete(parts).where(parts.c.upload_id == upload_id))
            await session.execute(
                delete(multipart_uploads).where(multipart_uploads.c.upload_id == upload_id)
            )

    async def discard_upload(self, upload_id: uuid.UUID) -> None:
        """Abort the upload's multipart upload (if any) and forget its parts."""
        shipment = self._shipments.pop(upload_id, None)
        if shipment is not None:
            tasks = [t for t in [*shipment.in_flight.values(), shipment.pump] if t]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        async with self.sessions() as session:
            row = (
                await session.execute(
                    select(multipart_uploads).where(multipart_uploads.c.upload_id == upload_id)
                )
            ).first()
        if row is not None:
            try:
                await self._abort(row.object_key, row.s3_upload_id)
            except TRANSIENT_ERRORS as exc:
                # the orphan sweep aborts it later: no live upload owns it any more
                logger.warning("upload %s: abort failed (%r); the sweep retries", upload_id, exc)
                return
        await self._forget(upload_id)

    async def _abort(self, key: str, s3_upload_id: str) -> None:
        try:
            await self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=s3_upload_id
            )
        except ClientError as exc:
            if _error_code(exc) not in {"NoSuchUpload", "404"}:
                raise

    async def abort_orphaned_uploads(self, live_upload_ids: set[uuid.UUID]) -> int:
        """Abort multipart uploads under the prefix that no live upload owns.

        Owned means: the upload is live and the ledger names this very ``UploadId``. One
        without a ledger row is left alone for :data:`ORPHAN_GRACE` (its row may be on the
        way). Ledger rows of uploads that are no longer live are removed too.
        """
        async with self.sessions() as session:
            owned = {
                (row.object_key, row.s3_upload_id): row.upload_id
                for row in (await session.execute(select(multipart_uploads))).all()
            }
        aborted = 0
        now = datetime.now(UTC)
        paginator = self.client.get_paginator("list_multipart_uploads")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Uploads", []):
                key, s3_upload_id = item["Key"], item["UploadId"]
                owner = self._upload_id_of_key(key)
                if owner is not None and owner in live_upload_ids:
                    if (key, s3_upload_id) in owned:
                        continue
                    initiated = item.get("Initiated")
                    if initiated is not None and now - initiated < ORPHAN_GRACE:
                        continue
                await self._abort(key, s3_upload_id)
                aborted += 1
        for (_key, _mp), upload_id in owned.items():
            if upload_id not in live_upload_ids:
                await self._forget(upload_id)
        if aborted:
            logger.info("aborted %d orphaned multipart uploads", aborted)
        return aborted

    async def delete(self, key: str) -> None:
        """Delete a stored object; a missing one is not an error."""
        await self.client.delete_object(Bucket=self.bucket, Key=key)

    # ------------------------------------------------------------------ reading

    async def open_range(self, key: str, start: int, length: int) -> AsyncIterator[bytes]:
        """Stream ``length`` bytes from ``start`` with one ranged GetObject.

        S3 failing is a 503 (:class:`ServiceUnavailable`), never an unexplained 500.
        """
        if length <= 0:
            return
        try:
            response = await self.client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={start}-{start + length - 1}"
            )
            body = response["Body"]
        except TRANSIENT_ERRORS as exc:
            logger.warning("reading %s from S3 failed: %r", key, exc)
            raise ServiceUnavailable(
                "object storage is unavailable; retry later", headers={"Retry-After": "5"}
            ) from exc
        try:
            remaining = length
            while remaining > 0:
                try:
                    block = await body.read(min(DOWNLOAD_BLOCK_SIZE, remaining))
                except TRANSIENT_ERRORS as exc:
                    raise ServiceUnavailable("object storage stopped answering") from exc
                if not block:
                    break
                remaining -= len(block)
                yield block
        finally:
            body.close()

    async def presigned_get_url(
        self, key: str, expires_seconds: int, filename: str | None, content_type: str | None
    ) -> str:
        """A time-limited URL that downloads ``key`` straight from S3."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if filename:
            params["ResponseContentDisposition"] = content_disposition("attachment", filename)
        if content_type:
            params["ResponseContentType"] = content_type
        return await self.client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=expires_seconds
        )


def _drop_from(
    in_flight: dict[int, asyncio.Task[None]], number: int
) -> Callable[[asyncio.Task[None]], None]:
    """A done-callback that removes a finished part task from the in-flight map."""

    def drop(_task: asyncio.Task[None]) -> None:
        in_flight.pop(number, None)

    return drop


def _same_etag(left: str, right: str) -> bool:
    """ETags compare without their quotes (servers differ in quoting them)."""
    return left.strip('"') == right.strip('"')


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _read_head(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(SNIFF_SIZE)


def _ranges_hold_data(path: Path, spans: list[PartSpan]) -> bool:
    """Whether none of ``spans`` was reclaimed (a punched range starts with a hole)."""
    import os

    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return not spans
    try:
        size = os.fstat(fd).st_size
        for span in spans:
            probe = max(span.start, SNIFF_SIZE)
            if probe >= span.end:
                continue
            if span.end > size:
                return False
            try:
                if os.lseek(fd, probe, os.SEEK_DATA) != probe:
                    return False
            except OSError:
                return False
    finally:
        os.close(fd)
    return True
