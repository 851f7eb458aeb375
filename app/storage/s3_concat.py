"""Final uploads (tus concatenation) assembled inside S3 from partial objects.

One multipart upload per final, its parts cut by
:func:`~app.storage.concat_plan.plan_concatenation`:

* a *copied* part is one UploadPartCopy of a byte range of a partial object: no byte of
  it passes through Ferry; up to ``s3_part_concurrency`` copies run at once;
* an *uploaded* part gathers pieces too small to be parts of their own: they stream from
  their partial objects (ranged GetObject, 1 MiB blocks) into one spool file, which is
  then sent with UploadPart and a CRC32C like a staged part. One part is spooled at a time.

A final of no bytes, or of one uploaded part, is a single PutObject instead.

The multipart upload has a ledger row from its start, so termination, expiry or the next
attempt after a crash aborts it, and the orphan sweep leaves a live one alone; a failed
assembly aborts it at once. Nothing is resumed: an interrupted assembly is redone from the
start (copies cost S3 little, uploaded pieces are small).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio.to_thread
import google_crc32c

from app.errors import ServiceUnavailable
from app.storage.backend import StoredObject
from app.storage.concat_plan import ConcatPart, SourceRange, plan_concatenation
from app.storage.s3_ledger import Multipart, PartRecord
from app.storage.staged_parts import StagedPartBody, crc32c_base64

if TYPE_CHECKING:
    from app.storage.s3 import S3Backend


class FinalAssembly:
    """Builds one final upload's object at ``key`` from ``sources`` (partial objects)."""

    def __init__(
        self,
        backend: S3Backend,
        final_id: uuid.UUID,
        key: str,
        sources: Sequence[StoredObject],
        spool_path: Path,
    ) -> None:
        self.backend = backend
        self.final_id = final_id
        self.key = key
        self.sources = list(sources)
        self.spool_path = spool_path

    async def run(self, content_type: str) -> StoredObject:
        """Assemble the object; its size is checked against the sources' total."""
        settings = self.backend.settings
        total = sum(source.size for source in self.sources)
        plan = plan_concatenation(
            [source.size for source in self.sources],
            settings.s3_min_part_size,
            settings.s3_max_parts,
        )
        if not plan or (len(plan) == 1 and not plan[0].copy):
            crc = await self._spool(plan[0].ranges if plan else ())
            return await self.backend.put_file(self.key, self.spool_path, total, content_type, crc)
        multipart = await self.backend.begin_assembly(self.final_id, self.key, content_type, total)
        try:
            records = await self._send_parts(multipart, plan)
            return await self.backend.finish_assembly(self.final_id, multipart, records, total)
        except BaseException:
            await self.backend.abandon_assembly(self.final_id)
            raise

    async def _send_parts(self, multipart: Multipart, plan: list[ConcatPart]) -> list[PartRecord]:
        """Copies run in the background (bounded); uploaded parts go one by one meanwhile."""
        records: dict[int, PartRecord] = {}
        slots = asyncio.Semaphore(self.backend.settings.s3_part_concurrency)
        copies: list[asyncio.Task[None]] = []
        try:
            for part in plan:
                if part.copy:
                    await slots.acquire()
                    _raise_first_failure(copies)
                    copies.append(asyncio.create_task(self._copy(multipart, part, slots, records)))
                else:
                    records[part.number] = await self._upload(multipart, part)
                    _raise_first_failure(copies)
            await asyncio.gather(*copies)
        finally:
            for task in copies:
                task.cancel()
            await asyncio.gather(*copies, return_exceptions=True)
        return [records[part.number] for part in plan]

    async def _copy(
        self,
        multipart: Multipart,
        part: ConcatPart,
        slots: asyncio.Semaphore,
        records: dict[int, PartRecord],
    ) -> None:
        try:
            (piece,) = part.ranges
            source = self.sources[piece.source]
            whole = piece.start == 0 and piece.size == source.size
            # S3 copies a range only out of sources above 5 MiB; the plan keeps to that.
            ranged = {} if whole else {"CopySourceRange": f"bytes={piece.start}-{piece.end - 1}"}
            response = await self.backend.client.upload_part_copy(
                Bucket=self.backend.bucket,
                Key=multipart.key,
                UploadId=multipart.s3_upload_id,
                PartNumber=part.number,
                CopySource={"Bucket": self.backend.bucket, "Key": source.key},
                **ranged,  # type: ignore[arg-type]
            )
        finally:
            slots.release()
        result = response.get("CopyPartResult", {})
        etag = result.get("ETag")
        if not etag:
            # a 200 whose body was an error (botocore usually turns those into errors)
            raise ServiceUnavailable("UploadPartCopy answered without an ETag")
        records[part.number] = PartRecord(
            part.number, part.size, etag, result.get("ChecksumCRC32C")
        )

    async def _upload(self, multipart: Multipart, part: ConcatPart) -> PartRecord:
        async with self.backend.part_slots:
            crc = await self._spool(part.ranges)
            with StagedPartBody(self.spool_path, 0, part.size) as body:
                response = await self.backend.client.upload_part(
                    Bucket=self.backend.bucket,
                    Key=multipart.key,
                    UploadId=multipart.s3_upload_id,
                    PartNumber=part.number,
                    Body=body,  # type: ignore[arg-type]
                    ContentLength=part.size,
                    ChecksumCRC32C=crc,
                )
        return PartRecord(part.number, part.size, response["ETag"], crc)

    async def _spool(self, ranges: Sequence[SourceRange]) -> str:
        """Stream ``ranges`` of the partial objects into the spool file; its CRC32C."""
        spool = await anyio.to_thread.run_sync(_Spool, self.spool_path)
        try:
            for piece in ranges:
                source = self.sources[piece.source]
                received = 0
                async for block in self.backend.open_range(source.key, piece.start, piece.size):
                    await anyio.to_thread.run_sync(spool.append, block)
                    received += len(block)
                if received != piece.size:
                    raise ServiceUnavailable(
                        f"{source.key} ended after {piece.start + received} bytes, "
                        f"expected {piece.end}"
                    )
        finally:
            await anyio.to_thread.run_sync(spool.close)
        return crc32c_base64(spool.crc32c)


class _Spool:
    """A scratch file written from the start, with a running CRC32C (worker threads)."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.crc32c = 0

    def append(self, block: bytes) -> None:
        view = memoryview(block)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self.crc32c = int(google_crc32c.extend(self.crc32c, block))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _raise_first_failure(tasks: list[asyncio.Task[None]]) -> None:
    """Stop early when a copy already failed (its error is the assembly's)."""
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
