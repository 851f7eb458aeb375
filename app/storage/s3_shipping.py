"""Acknowledged means in S3: a PATCH's bytes are shipped before its offset is committed.

Local staging is a buffer, never the only copy of an acknowledged byte. After a body is
staged, :meth:`PartShipper.ship` sends every whole part (as cut by :mod:`app.storage.parts`)
that the new bytes complete, and keeps what lies past the last whole part as a *segment*:
an object of its own holding just this request's share (tusd keeps an "incomplete part"
the same way). A segment is recorded in the ledger once S3 has it; the parts are recorded
by the very transaction in which the upload service then commits the offset (one
transaction per request, and a part is in the ledger exactly when it is acknowledged).
Only then does the service answer. A body that completes the upload sends its last part
(or, below one part, the whole object) the same way.

Any process can continue any upload: :meth:`PartShipper.restore` makes the staging file
hold the acknowledged bytes past the last whole part again, from this process's own staging
when it committed the current offset itself, else from the segments in S3. The ledger rows
that count are those that end at or before the committed offset; anything past it belongs
to a request that was never acknowledged and is replaced or dropped.

Parts are numbered by the plan, never by arrival, so a part sent again replaces the earlier
one. Part bodies are not SHA-256 signed (``UNSIGNED-PAYLOAD``, ~4x less CPU than payload
signing); every part and segment carries a CRC32C instead, which S3 checks.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from botocore.exceptions import ClientError
from sqlalchemy import and_, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from app.core.received_crc import ReceivedCrc32c
from app.db.uploads import LeaseFence
from app.errors import FerryError, ServiceUnavailable
from app.storage.backend import StoredObject
from app.storage.parts import PartPlan, PartSpan, PartTooLarge, plan_for_deferred, plan_for_length
from app.storage.s3_ahead import PartsAhead
from app.storage.s3_collaborator import (
    TRANSIENT_ERRORS,
    S3Collaborator,
    error_code,
    misconfiguration_of,
    storage_failure,
)
from app.storage.s3_ledger import (
    Multipart,
    PartRecord,
    ReceivedRanges,
    Segment,
    multipart_uploads,
    parts,
    segments,
)
from app.storage.sniff import SNIFF_SIZE, category_for, sniff_content_type
from app.storage.staged_parts import (
    StagedPartBody,
    StagedRangeReader,
    crc32c_of_range,
    reclaim_range,
)

if TYPE_CHECKING:
    from app.storage.s3 import S3Backend

logger = logging.getLogger(__name__)

CHANGED_SINCE_RECEIVED = frozenset({"BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch"})
"""S3's refusals of a body whose CRC32C (taken from the bytes as received) does not match
the staged bytes sent."""
PRESIGNED_PART_SECONDS = 15 * 60
"""Lifetime of the presigned URL of one UploadPart (used at once, retried at most once)."""
SEGMENTS_FOLDER = "segments"
"""Segments are kept at ``{prefix}segments/{uid}/{start}-{end}-{token}``."""
_OCTETS = "application/octet-stream"


@dataclass(slots=True)
class Ledger:
    """What the database records of one upload's way into S3."""

    multipart: Multipart | None = None
    parts: dict[int, PartRecord] = field(default_factory=dict)
    segments: list[Segment] = field(default_factory=list)

    def acknowledged(self, offset: int) -> tuple[list[PartRecord], list[Segment]]:
        """The parts (from 1, contiguous) and the segment chain that hold ``[0, offset)``.

        Raises :class:`ServiceUnavailable` when they do not reach ``offset``: bytes that
        were acknowledged are missing, and nothing may be built on them.
        """
        held, end = self.held_parts(offset)
        chain: list[Segment] = []
        by_start = {segment.start: segment for segment in self.segments}
        while end < offset and (segment := by_start.get(end)) is not None:
            if segment.end > offset:
                break
            chain.append(segment)
            end = segment.end
        if end != offset:
            raise ServiceUnavailable(
                f"S3 holds {end} of the {offset} acknowledged bytes; the upload cannot go on"
            )
        return held, chain

    def held_parts(self, offset: int) -> tuple[list[PartRecord], int]:
        """The recorded parts (from 1, contiguous) within ``[0, offset)``, and their end."""
        held: list[PartRecord] = []
        end = 0
        if self.multipart is not None:
            plan = self.multipart.plan
            number = 1
            while (record := self.parts.get(number)) is not None:
                span = plan.span(number)
                whole = record.size == span.size and span.end <= offset
                # (An upload's last part is shorter, and ends exactly at its length.)
                last = record.size < span.size and span.start + record.size == offset
                if not (whole or last):
                    break
                held.append(record)
                end = span.start + record.size
                number += 1
                if last:
                    break
        return held, end


class PartShipper(S3Collaborator):
    """Ships acknowledged bytes (parts and segments) and restores staging from them."""

    def __init__(self, backend: S3Backend) -> None:
        super().__init__(backend)
        self.staged_upto: dict[uuid.UUID, int] = {}
        """Uploads whose staging file this process knows to hold the acknowledged bytes
        past the last whole part, up to the offset it committed itself."""
        self._ledger_reads: dict[uuid.UUID, asyncio.Task[Ledger]] = {}
        """Ledgers read while a request's body streams, for its :meth:`ship` (started by
        :meth:`restore` when staging needs nothing): three SELECTs (~4 ms on PostgreSQL)
        that no longer delay the answer. The lease the request holds keeps them current:
        no other writer records anything meanwhile."""

    def forget_staged(self, upload_id: uuid.UUID) -> None:
        """Drop what this process keeps of an upload between its requests."""
        self.staged_upto.pop(upload_id, None)
        self._drop_ledger_read(upload_id)

    def _drop_ledger_read(self, upload_id: uuid.UUID) -> None:
        if (read := self._ledger_reads.pop(upload_id, None)) is not None:
            read.cancel()

    def _read_ledger_ahead(self, upload_id: uuid.UUID) -> None:
        self._drop_ledger_read(upload_id)
        read = asyncio.get_running_loop().create_task(self.load(upload_id))
        # A request that fails before shipping never collects it: its error is not news.
        read.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._ledger_reads[upload_id] = read

    # ------------------------------------------------------------------ the ledger

    async def load(self, upload_id: uuid.UUID) -> Ledger:
        """The upload's multipart row, parts and segments, as the database has them."""
        async with self.sessions() as session:
            row = (
                await session.execute(
                    select(multipart_uploads).where(multipart_uploads.c.upload_id == upload_id)
                )
            ).first()
            part_rows = (
                (await session.execute(select(parts).where(parts.c.upload_id == upload_id))).all()
                if row is not None
                else []
            )
            segment_rows = (
                await session.execute(select(segments).where(segments.c.upload_id == upload_id))
            ).all()
        ledger = Ledger(
            segments=[
                Segment(r.start_offset, r.end_offset, r.object_key, r.checksum_crc32c)
                for r in segment_rows
            ]
        )
        if row is not None:
            plan = PartPlan(
                base_size=row.base_part_size, max_parts=row.max_parts, growth_step=row.growth_step
            )
            ledger.multipart = Multipart(row.object_key, row.s3_upload_id, plan)
            ledger.parts = {
                r.part_number: PartRecord(r.part_number, r.size, r.etag, r.checksum_crc32c)
                for r in part_rows
            }
        return ledger

    def plan_for(self, ledger: Ledger, length: int | None) -> PartPlan:
        """How the upload's bytes are cut: its multipart upload's plan, or a new one."""
        if ledger.multipart is not None:
            return ledger.multipart.plan
        settings = self.settings
        if length is not None:
            return plan_for_length(length, settings.s3_min_part_size, settings.s3_max_parts)
        return plan_for_deferred(
            settings.s3_min_part_size, settings.s3_max_parts, settings.max_size
        )

    def is_single(self, ledger: Ledger, length: int | None) -> bool:
        """An upload that fits in one part: one PutObject, never a multipart upload."""
        if ledger.multipart is not None or length is None:
            return False
        try:
            return length <= self.plan_for(ledger, length).size_of(1)
        except PartTooLarge:
            return False

    # ------------------------------------------------------------------ restoring

    async def restore(
        self, upload_id: uuid.UUID, staged_path: Path, offset: int, fence: LeaseFence
    ) -> None:
        """Make staging hold the acknowledged bytes past the last whole part.

        Nothing to do when this process committed ``offset`` itself; otherwise the
        segments are read back from S3 (another process, or this one before a restart,
        acknowledged them).
        """
        if self.staged_upto.get(upload_id) == offset and await _size_of(staged_path) == offset:
            self._read_ledger_ahead(upload_id)
            return
        self.forget_staged(upload_id)
        ledger = await self.read_ledger(upload_id)
        try:
            held, chain = ledger.acknowledged(offset)
        except ServiceUnavailable:
            await self._adopt_staged(upload_id, staged_path, ledger, offset, fence)
            return
        start = _end_of(ledger, held)
        await anyio.to_thread.run_sync(_truncate, staged_path, start)
        try:
            for segment in chain:
                await self._download(segment, staged_path)
        except TRANSIENT_ERRORS as exc:
            raise _unavailable(f"reading back upload {upload_id} from S3", exc) from exc
        await anyio.to_thread.run_sync(_truncate, staged_path, offset)
        self.staged_upto[upload_id] = offset

    async def _adopt_staged(
        self,
        upload_id: uuid.UUID,
        staged_path: Path,
        ledger: Ledger,
        offset: int,
        fence: LeaseFence,
    ) -> None:
        """An upload that an earlier version acknowledged from staging alone (before
        acknowledged meant in S3): its staged bytes past the recorded parts become a
        segment now, if this node holds them; otherwise the upload cannot go on."""
        _held, start = ledger.held_parts(offset)
        if await _size_of(staged_path) != offset or start >= offset:
            logger.error(
                "upload %s: S3 and this node's staging lack acknowledged bytes [%d, %d)",
                upload_id,
                start,
                offset,
            )
            raise ServiceUnavailable(f"upload {upload_id} lost acknowledged bytes in S3")
        try:
            await self._put_segment(upload_id, staged_path, start, offset, fence)
        except TRANSIENT_ERRORS as exc:
            raise _unavailable(f"keeping upload {upload_id}'s staged bytes", exc) from exc
        self.staged_upto[upload_id] = offset

    async def _download(self, segment: Segment, staged_path: Path) -> None:
        response = await self.client.get_object(Bucket=self.bucket, Key=segment.key)
        async with response["Body"] as body:
            position = segment.start
            while block := await body.read(1024 * 1024):
                await anyio.to_thread.run_sync(_write_at, staged_path, position, block)
                position += len(block)
        if position != segment.end:
            raise ServiceUnavailable(f"segment {segment.key} is short in S3")

    async def read_ledger(self, upload_id: uuid.UUID) -> Ledger:
        """The ledger as the database has it (read ahead while the body streamed, if it
        was); 503 when it cannot be read."""
        read = self._ledger_reads.pop(upload_id, None)
        try:
            return await (read if read is not None else self.load(upload_id))
        except TRANSIENT_ERRORS as exc:
            raise _unavailable(f"loading the ledger of {upload_id}", exc) from exc

    # ------------------------------------------------------------------ shipping

    async def ship(
        self,
        upload_id: uuid.UUID,
        staged_path: Path,
        committed: int,
        durable: int,
        length: int | None,
        *,
        partial: bool,
        fence: LeaseFence,
        ahead: PartsAhead | None = None,
        received: ReceivedCrc32c | None = None,
    ) -> PartRecording | None:
        """Put ``[committed, durable)`` into S3 before it is acknowledged.

        Whole parts the new bytes complete are sent (the upload's last part too when they
        complete it); what lies past the last whole part becomes a segment. An upload of
        one part is put whole by the body that completes it. Raises 503 when S3 does not
        take them in bounded time: then nothing is acknowledged.

        Returns the parts' ledger rows, for the transaction that commits the offset to
        write: a part is recorded when it is acknowledged, one transaction instead of two
        per request (a part never recorded is sent again by whoever goes on). ``ahead``:
        the parts this request sent while its body streamed (settled), which are not sent
        again. ``received``: the body's CRC32Cs as it arrived, which the parts and segment
        are sent with where they cover them.
        """
        if ahead is not None and ahead.ledger is not None:
            ledger = ahead.ledger
        else:
            ledger = await self.read_ledger(upload_id)
        self.forget_staged(upload_id)
        held, chain = ledger.acknowledged(committed)
        crcs = ReceivedRanges(chain, received)
        if any(segment.end <= _end_of(ledger, held) for segment in ledger.segments):
            # Whole parts hold these bytes now (since an earlier, acknowledged request).
            await self.drop_segments(upload_id, below=_end_of(ledger, held))
        sent = list(ahead.sent) if ahead is not None else []
        try:
            if self.is_single(ledger, length):
                if durable == length:
                    await self._put_whole(
                        upload_id, staged_path, durable, ledger, fence, partial, crcs
                    )
                else:
                    await self._put_segment(upload_id, staged_path, committed, durable, fence, crcs)
            else:
                sent_upto = await self._send_parts(
                    upload_id,
                    staged_path,
                    ledger,
                    held,
                    durable,
                    length,
                    partial=partial,
                    fence=fence,
                    sent=sent,
                    crcs=crcs,
                )
                if sent_upto < durable:
                    start = max(committed, sent_upto)
                    await self._put_segment(upload_id, staged_path, start, durable, fence, crcs)
        except TRANSIENT_ERRORS as exc:
            raise _unavailable(f"shipping upload {upload_id}", exc) from exc
        self.staged_upto[upload_id] = durable
        return PartRecording(upload_id, sent) if sent else None

    async def _send_parts(
        self,
        upload_id: uuid.UUID,
        staged_path: Path,
        ledger: Ledger,
        held: list[PartRecord],
        durable: int,
        length: int | None,
        *,
        partial: bool,
        fence: LeaseFence,
        sent: list[PartRecord],
        crcs: ReceivedRanges,
    ) -> int:
        """Send the parts ``[0, durable)`` completes past the held ones and those in
        ``sent`` already (which keeps only parts of these), adding their records to
        ``sent``; returns their end."""
        plan = self.plan_for(ledger, length)
        wanted = plan.whole_parts_within(durable)
        spans = [plan.span(n) for n in range(len(held) + 1, wanted + 1)]
        if length is not None and durable == length and plan.start_of(wanted + 1) < length:
            last = plan.start_of(wanted + 1)
            spans.append(PartSpan(number=wanted + 1, start=last, size=length - last))
        if not spans:
            return _end_of(ledger, held)
        sizes = {span.number: span.size for span in spans}
        sent[:] = [record for record in sent if sizes.get(record.number) == record.size]
        already = {record.number for record in sent}
        end = spans[-1].end
        spans = [span for span in spans if span.number not in already]
        if not spans:
            return end
        if ledger.multipart is None:
            ledger.multipart = await self.begin_multipart(
                upload_id, staged_path, plan, partial, fence
            )
        multipart = ledger.multipart
        slots = asyncio.Semaphore(self.settings.s3_part_concurrency)
        await asyncio.gather(
            *(self._send_one(staged_path, multipart, span, slots, sent, crcs) for span in spans)
        )
        return end

    async def _send_one(
        self,
        staged_path: Path,
        multipart: Multipart,
        span: PartSpan,
        slots: asyncio.Semaphore,
        sent: list[PartRecord],
        crcs: ReceivedRanges,
    ) -> None:
        async with slots:
            crc = crcs.crc_of(span.start, span.end)
            sent.append(await self.send_part(staged_path, multipart, span, crc))

    async def send_part(
        self, staged_path: Path, multipart: Multipart, span: PartSpan, crc: str | None = None
    ) -> PartRecord:
        """UploadPart of one span of the staging file (retried); its record, unwritten.
        ``crc``: the span's CRC32C as received (else it is read from staging)."""
        async with self._backend.part_slots:
            if crc is None:
                crc = await anyio.to_thread.run_sync(
                    crc32c_of_range, staged_path, span.start, span.size
                )
            checked = crc
            etag = await self._with_retries(
                lambda: self._send_part(staged_path, multipart, span, checked)
            )
        # The part is in S3: its staged bytes (but the head, kept for sniffing) are not
        # needed any more. (Should the offset not be committed, a later request restores
        # what it needs from the segments, since staged_upto is not this request's end.)
        await anyio.to_thread.run_sync(reclaim_range, staged_path, span.start, span.end)
        return PartRecord(span.number, span.size, etag, crc)

    async def _with_retries(self, attempt: Any) -> Any:
        """Attempts with jittered backoff until S3 answers, for at most twice
        ``FERRY_S3_TIMEOUT_SECONDS`` and 5 s (then the request gets 503 and nothing is
        acknowledged)."""
        loop = asyncio.get_running_loop()
        # one timed-out attempt plus its retries may pass before S3 takes the bytes
        give_up_at = loop.time() + 2 * self.settings.s3_timeout_seconds + 5
        pause = 0.25
        while True:
            try:
                with anyio.fail_after(self.settings.s3_timeout_seconds):
                    return await attempt()
            except (*TRANSIENT_ERRORS, TimeoutError) as exc:  # type: ignore[misc]
                final = {"NoSuchUpload", *CHANGED_SINCE_RECEIVED}  # no retry mends these
                gone = isinstance(exc, ClientError) and error_code(exc) in final
                if gone or misconfiguration_of(exc) or loop.time() + pause > give_up_at:
                    raise
                logger.warning("S3 call failed (%r); retrying in %.2fs", exc, pause)
            await asyncio.sleep(pause * (0.5 + random.random()))  # noqa: S311 - jitter
            pause = min(pause * 2, self._backend.retry_pause_max)

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

    async def _put_segment(
        self,
        upload_id: uuid.UUID,
        staged_path: Path,
        start: int,
        end: int,
        fence: LeaseFence,
        crcs: ReceivedRanges | None = None,
    ) -> None:
        """Keep ``[start, end)`` as a segment object, recorded in the ledger."""
        key = f"{self.prefix}{SEGMENTS_FOLDER}/{upload_id}/{start}-{end}-{secrets.token_hex(4)}"
        crc = crcs.crc_of(start, end) if crcs is not None else None
        if crc is None:
            crc = await anyio.to_thread.run_sync(crc32c_of_range, staged_path, start, end - start)
        await self._with_retries(
            lambda: self.put_range(key, staged_path, start, end - start, _OCTETS, crc)
        )
        async with self.sessions() as session, session.begin():
            await fence(session)  # a writer whose lease lapsed records (and deletes) nothing
            # Rows past the committed offset (``start``) were never acknowledged.
            await session.execute(
                delete(segments).where(
                    segments.c.upload_id == upload_id, segments.c.start_offset >= start
                )
            )
            await session.execute(
                insert(segments).values(
                    upload_id=upload_id,
                    start_offset=start,
                    end_offset=end,
                    object_key=key,
                    checksum_crc32c=crc,
                    created_at=datetime.now(UTC),
                )
            )

    async def _put_whole(
        self,
        upload_id: uuid.UUID,
        staged_path: Path,
        size: int,
        ledger: Ledger,
        fence: LeaseFence,
        partial: bool,
        crcs: ReceivedRanges,
    ) -> None:
        """One PutObject of a one-part upload at its final key, recorded as its only
        segment (the completion then needs no other request to S3)."""
        head = await anyio.to_thread.run_sync(_read_head, staged_path)
        content_type = sniff_content_type(head)
        key = self._final_key(upload_id, category_for(content_type).value, partial=partial)
        crc = await self._put_with_retries(
            key, staged_path, size, content_type, crcs.crc_of(0, size)
        )
        if ledger.segments:
            await self.drop_segments(upload_id)
        async with self.sessions() as session, session.begin():
            await fence(session)
            if ledger.segments:
                await session.execute(delete(segments).where(segments.c.upload_id == upload_id))
            await session.execute(
                insert(segments).values(
                    upload_id=upload_id,
                    start_offset=0,
                    end_offset=size,
                    object_key=key,
                    checksum_crc32c=crc,
                    created_at=datetime.now(UTC),
                )
            )

    async def put_whole(
        self, key: str, staged_path: Path, size: int, content_type: str, received: ReceivedCrc32c
    ) -> StoredObject:
        """One PutObject of a whole staged upload at its final key, recorded nowhere: the
        caller files it in the transaction that first inserts its row (503 when S3 does not
        take it in bounded time). ``received``: the CRCs of its bytes as they arrived, which
        S3 checks the staged bytes against."""
        as_received = ReceivedRanges([], received).crc_of(0, size)
        try:
            await self._put_with_retries(key, staged_path, size, content_type, as_received)
        except TRANSIENT_ERRORS as exc:
            raise _unavailable(f"storing {key}", exc) from exc
        return StoredObject(key=key, size=size)

    async def _put_with_retries(
        self, key: str, staged_path: Path, size: int, content_type: str, crc: str | None = None
    ) -> str:
        """PutObject of the first ``size`` staged bytes, CRC32C-checked by S3 (against
        ``crc`` when the bytes' CRC as received is known); the CRC."""
        if crc is None:
            crc = await anyio.to_thread.run_sync(crc32c_of_range, staged_path, 0, size)
        checked = crc
        await self._with_retries(
            lambda: self.put_range(key, staged_path, 0, size, content_type, checked)
        )
        return crc

    def _final_key(self, upload_id: uuid.UUID, category: str, *, partial: bool) -> str:
        if partial:
            return self._backend.partial_key(upload_id)
        return self._backend.key_for(upload_id, category)

    async def put_range(
        self, key: str, path: Path, start: int, size: int, content_type: str, crc: str
    ) -> None:
        """One PutObject of ``[start, start + size)`` of a local file, streamed."""
        with StagedRangeReader(path, start, size) as body:
            await self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,  # type: ignore[arg-type]
                ContentLength=size,
                ContentType=content_type,
                ChecksumCRC32C=crc,
            )

    async def begin_multipart(
        self,
        upload_id: uuid.UUID,
        staged_path: Path,
        plan: PartPlan,
        partial: bool,
        fence: LeaseFence,
    ) -> Multipart:
        """Start the upload's multipart upload at the key its sniffed category gives."""
        head = await anyio.to_thread.run_sync(_read_head, staged_path)
        content_type = sniff_content_type(head)
        # The service sniffs the same head with the same function, so the category (and
        # the key) chosen now is the one it will ask store() for.
        key = self._final_key(upload_id, category_for(content_type).value, partial=partial)
        return await self.begin_registered(upload_id, key, content_type, plan, fence)

    async def begin_registered(
        self,
        upload_id: uuid.UUID,
        key: str,
        content_type: str,
        plan: PartPlan,
        fence: LeaseFence | None = None,
    ) -> Multipart:
        """CreateMultipartUpload, then the ledger row that owns it (and its plan)."""
        response = await self.client.create_multipart_upload(
            Bucket=self.bucket, Key=key, ContentType=content_type, ChecksumAlgorithm="CRC32C"
        )
        multipart = Multipart(key=key, s3_upload_id=response["UploadId"], plan=plan)
        async with self.sessions() as session, session.begin():
            if fence is not None:
                await fence(session)
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

    # ------------------------------------------------------------------ segments' end

    async def forget(self, upload_id: uuid.UUID, ledger: Ledger) -> None:
        """After completion: delete the segment objects and every ledger row in one
        transaction (the completed object stays)."""
        self.forget_staged(upload_id)
        # (What fails to go now, the orphan sweep deletes once the upload is not live.)
        await self._delete_segment_objects(segment.key for segment in ledger.segments)
        if ledger.multipart is None and not ledger.segments:
            return
        async with self.sessions() as session, session.begin():
            await session.execute(delete(segments).where(segments.c.upload_id == upload_id))
            await session.execute(delete(parts).where(parts.c.upload_id == upload_id))
            await session.execute(
                delete(multipart_uploads).where(multipart_uploads.c.upload_id == upload_id)
            )

    async def drop_segments(
        self, upload_id: uuid.UUID, *, below: int | None = None, unrecorded: bool = False
    ) -> None:
        """Delete segment objects and rows (all, or those ending at or before ``below``).

        ``unrecorded``: the upload is done with segments for good (completed or discarded),
        so every object under its segment folder goes too, listed: also those no row names,
        put by a writer that died before recording them.
        """
        condition = segments.c.upload_id == upload_id
        if below is not None:
            condition = and_(condition, segments.c.end_offset <= below)
        async with self.sessions() as session:
            rows = (await session.execute(select(segments.c.object_key).where(condition))).all()
        if not await self._delete_segment_objects(row.object_key for row in rows):
            return  # the rows stay, so a later pass (or the sweep) retries
        async with self.sessions() as session, session.begin():
            await session.execute(delete(segments).where(condition))
        if unrecorded:
            await self._drop_unrecorded_segments(upload_id)

    async def _delete_segment_objects(self, keys: Iterable[str]) -> bool:
        """Delete segment objects (a one-part upload's final object, which a segment row
        may name too, stays); ``False`` at the first that S3 refuses."""
        for key in keys:
            if not key.startswith(f"{self.prefix}{SEGMENTS_FOLDER}/"):
                continue
            try:
                await self.client.delete_object(Bucket=self.bucket, Key=key)
            except TRANSIENT_ERRORS as exc:
                logger.warning("deleting segment %s failed (%r)", key, exc)
                return False
        return True

    async def _drop_unrecorded_segments(self, upload_id: uuid.UUID) -> None:
        """Delete what is left under ``{prefix}segments/{upload_id}/`` (the orphan sweep
        retries if S3 fails now)."""
        folder = f"{self.prefix}{SEGMENTS_FOLDER}/{upload_id}/"
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=folder):
                for item in page.get("Contents", []):
                    await self.client.delete_object(Bucket=self.bucket, Key=item["Key"])
        except TRANSIENT_ERRORS as exc:
            logger.warning("deleting the segments of %s failed (%r)", upload_id, exc)


@dataclass(frozen=True, slots=True)
class PartRecording:
    """Ledger rows of parts just put into S3, written by the transaction that acknowledges
    them (:meth:`PartShipper.ship`). Run again by a retried group commit, it writes the
    same rows: a part sent again replaces the row of its number."""

    upload_id: uuid.UUID
    records: list[PartRecord]

    def __call__(self, session: Session) -> None:
        numbers = [record.number for record in self.records]
        session.execute(
            delete(parts).where(
                parts.c.upload_id == self.upload_id, parts.c.part_number.in_(numbers)
            )
        )
        now = datetime.now(UTC)
        session.execute(
            insert(parts),
            [
                {
                    "upload_id": self.upload_id,
                    "part_number": record.number,
                    "size": record.size,
                    "etag": record.etag,
                    "checksum_crc32c": record.crc32c,
                    "created_at": now,
                }
                for record in self.records
            ],
        )


async def unfenced(_session: AsyncSession) -> None:
    """No lease to check: the caller's own transaction is conditional on it (completion)."""


def _end_of(ledger: Ledger, held: list[PartRecord]) -> int:
    """Where the held whole parts end."""
    if not held or ledger.multipart is None:
        return 0
    return ledger.multipart.plan.start_of(held[-1].number) + held[-1].size


def _unavailable(doing: str, exc: BaseException) -> FerryError:
    """503 (nothing was acknowledged), or 500 when S3 refuses Ferry's settings."""
    if misconfiguration_of(exc) is not None:
        return storage_failure(exc)
    if isinstance(exc, ClientError) and error_code(exc) in CHANGED_SINCE_RECEIVED:
        # The staged bytes are not those that arrived (a failing disk, a bug): nothing is
        # acknowledged, and the next request restores staging from S3.
        logger.error("%s: staged bytes differ from those received (S3: %r)", doing, exc)
        return ServiceUnavailable(
            "the staged bytes of this upload were damaged; nothing was acknowledged; retry",
            headers={"Retry-After": "1"},
        )
    logger.warning("%s failed: %r", doing, exc)
    return ServiceUnavailable(
        "object storage is unavailable; nothing was acknowledged; retry later",
        headers={"Retry-After": "5"},
    )


async def _size_of(path: Path) -> int | None:
    try:
        return (await anyio.Path(path).stat()).st_size
    except FileNotFoundError:
        return None


def _truncate(path: Path, size: int) -> None:
    with open(path, "ab") as handle:
        handle.truncate(size)


def _write_at(path: Path, position: int, block: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(position)
        handle.write(block)


def _read_head(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(SNIFF_SIZE)
