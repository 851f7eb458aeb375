"""The S3 parts ledger: which multipart upload belongs to an upload and which parts S3 has.

Two tables, written only by :class:`~app.storage.s3.S3Backend`:

* ``s3_multipart_uploads`` — one row per upload that has started a multipart upload: the
  object key, S3's ``UploadId`` and the part plan chosen for it (so a restart cuts the
  same parts again);
* ``s3_parts`` — one row per part S3 acknowledged: number, size, ETag and CRC32C.

A row is written only after S3 answered, so the ledger may lag S3 (a part uploaded just
before a crash) but never runs ahead of it; start-up reconciliation with ListParts closes
the gap. Rows are plain SQLAlchemy Core tables on the shared metadata.
"""

from __future__ import annotations

from advanced_alchemy.base import orm_registry
from advanced_alchemy.types import GUID, DateTimeUTC
from sqlalchemy import BigInteger, Column, Integer, PrimaryKeyConstraint, String, Table

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
