"""Loading an upload's parts ledger and reconciling it with what S3 holds (ListParts).

A process knows nothing of the parts an earlier one sent. Before it sends an upload's
first part, or completes it, :class:`LedgerReconciler` loads the upload's ledger rows
(:mod:`app.storage.s3_ledger`) and checks them against ListParts, once per process and
upload: a part recorded but missing in S3 is sent again from staging, a multipart upload
that turns out to be completed already needs nothing more, and one that vanished is
started again, unless the bytes of a recorded part were already reclaimed from staging:
then the upload cannot be finished (:class:`PartsLost`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import anyio.to_thread
from botocore.exceptions import ClientError
from sqlalchemy import delete, select

from app.storage.parts import PartPlan, PartSpan
from app.storage.s3_collaborator import S3Collaborator, Shipment, error_code
from app.storage.s3_ledger import Multipart, PartRecord, multipart_uploads, parts
from app.storage.sniff import SNIFF_SIZE


class PartsLost(Exception):
    """S3 lost parts whose staged bytes were already reclaimed; the upload cannot finish."""


class LedgerReconciler(S3Collaborator):
    """Brings a shipment in line with its ledger rows and with S3 (the shipment's lock held)."""

    async def ensure_loaded(self, shipment: Shipment) -> None:
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
            found = await self.head(multipart.key)
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
        self, shipment: Shipment, records: Iterable[PartRecord], plan: PartPlan
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
                if error_code(exc) in {"NoSuchUpload", "404"}:
                    return None
                raise
            for part in page.get("Parts", []):
                found[part["PartNumber"]] = (part["Size"], part["ETag"])
            if not page.get("IsTruncated"):
                return found
            marker = page["NextPartNumberMarker"]


def _same_etag(left: str, right: str) -> bool:
    """ETags compare without their quotes (servers differ in quoting them)."""
    return left.strip('"') == right.strip('"')


def _ranges_hold_data(path: Path, spans: list[PartSpan]) -> bool:
    """Whether none of ``spans`` was reclaimed (a punched range starts with a hole)."""
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
