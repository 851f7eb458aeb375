"""The S3 parts ledger: which multipart upload belongs to an upload and which parts S3 has.

Two tables, written only by :class:`~app.storage.s3.S3Backend` and its collaborators (the
part shipper, the ledger reconciler, the completer and the cleaner):

* ``s3_multipart_uploads`` — one row per upload that has started a multipart upload: the
  object key, S3's ``UploadId`` and the part plan chosen for it (so a restart cuts the
  same parts again);
* ``s3_parts`` — one row per part S3 acknowledged: number, size, ETag and CRC32C;
* ``s3_segments`` — acknowledged bytes past the last whole part, each PATCH's share kept
  as an object of its own (as tusd keeps an incomplete part), until a whole part holds them.

Which rows count is decided by the upload's committed offset: parts and segments that end
past it belong to a request that was never acknowledged and are replaced or dropped.

A row is written only after S3 answered, so the ledger may lag S3 (a part uploaded just
before a crash) but never runs ahead of it; start-up reconciliation with ListParts closes
the gap. Rows are plain SQLAlchemy Core tables on the shared metadata.

A final upload being assembled from partial objects (:mod:`app.storage.s3_concat`) has a
``s3_multipart_uploads`` row too, so termination, expiry and a restart can abort it and
the orphan sweep leaves it alone; its copied parts are not recorded (a restart redoes the
assembly).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from advanced_alchemy.base import orm_registry
from advanced_alchemy.types import GUID, DateTimeUTC
from sqlalchemy import BigInteger, Column, Integer, PrimaryKeyConstraint, String, Table

from app.core.received_crc import ReceivedCrc32c, crc32c_combine
from app.storage.parts import PartPlan
from app.storage.staged_parts import crc32c_base64

multipart_uploads = Table(
    "s3_multipart_uploads",
    orm_registry.metadata,
    Column("upload_id", GUID(length=16), primary_key=True),
    Column("object_key", String(1024), nullable=False),
    Column("s3_upload_id", String(1024), nullable=False),
    Column("base_part_size", BigInteger, nullable=False),
    Column("growth_step", Integer, nullable=False),
    Column("max_parts", Integer, nullable=False),
    Column("created_at", DateTimeUTC(timezone=True), nullable=False),
)

parts = Table(
    "s3_parts",
    orm_registry.metadata,
    Column("upload_id", GUID(length=16), nullable=False),
    Column("part_number", Integer, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("etag", String(255), nullable=False),
    Column("checksum_crc32c", String(16), nullable=False),
    Column("created_at", DateTimeUTC(timezone=True), nullable=False),
    PrimaryKeyConstraint("upload_id", "part_number", name="pk_s3_parts"),
)


segments = Table(
    "s3_segments",
    orm_registry.metadata,
    Column("upload_id", GUID(length=16), nullable=False),
    Column("start_offset", BigInteger, nullable=False),
    Column("end_offset", BigInteger, nullable=False),
    Column("object_key", String(1024), nullable=False),
    Column("checksum_crc32c", String(16), nullable=False),
    Column("created_at", DateTimeUTC(timezone=True), nullable=False),
    PrimaryKeyConstraint("upload_id", "start_offset", name="pk_s3_segments"),
)


@dataclass(frozen=True, slots=True)
class Segment:
    """One ``s3_segments`` row: bytes ``[start, end)`` of an upload, kept at ``key``."""

    start: int
    end: int
    key: str
    crc32c: str


@dataclass(frozen=True, slots=True)
class Multipart:
    """One ``s3_multipart_uploads`` row: the object key, S3's ``UploadId`` and the plan."""

    key: str
    s3_upload_id: str
    plan: PartPlan


@dataclass(frozen=True, slots=True)
class PartRecord:
    """One part S3 acknowledged, as CompleteMultipartUpload needs it."""

    number: int
    size: int
    etag: str
    crc32c: str | None
    """``None`` for a copied part whose server did not report a checksum."""


@dataclass(frozen=True, slots=True)
class ReceivedRanges:
    """CRC32Cs of acknowledged bytes as they were received, for the checksum S3 checks a
    part or segment against: the recorded segments' for what earlier requests carried, the
    body's own (:class:`~app.core.received_crc.ReceivedCrc32c`) for the rest. A staged
    byte that changed since it arrived then makes S3 refuse it, instead of storing it."""

    chain: list[Segment]
    """The segments holding the acknowledged bytes past the last whole part."""
    body: ReceivedCrc32c | None

    def crc_of(self, start: int, end: int) -> str | None:
        """Base64 CRC32C of ``[start, end)``; ``None`` when it cannot be told (read it
        from staging then)."""
        crc, at = 0, start
        for segment in self.chain:
            if segment.end <= at:
                continue
            if segment.start != at or segment.end > end:
                break
            value = int.from_bytes(base64.b64decode(segment.crc32c), "big")
            crc, at = crc32c_combine(crc, value, segment.end - at), segment.end
        if at < end:
            body = None if self.body is None else self.body.crc_of(at, end)
            if body is None:
                return None
            crc = crc32c_combine(crc, body, end - at)
        return crc32c_base64(crc)
