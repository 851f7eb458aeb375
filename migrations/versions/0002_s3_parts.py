"""S3 parts ledger: multipart uploads and the parts S3 acknowledged.

Revision ID: 0002_s3_parts
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import advanced_alchemy.types
import sqlalchemy as sa
from alembic import op

revision: str = "0002_s3_parts"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "s3_multipart_uploads",
        sa.Column("upload_id", advanced_alchemy.types.guid.GUID(length=16), nullable=False),
        sa.Column("object_key", sa.String(length=1024), nullable=False),
        sa.Column("s3_upload_id", sa.String(length=1024), nullable=False),
        sa.Column("base_part_size", sa.BigInteger(), nullable=False),
        sa.Column("growth_step", sa.Integer(), nullable=False),
        sa.Column("max_parts", sa.Integer(), nullable=False),
        sa.Column(
            "created_at", advanced_alchemy.types.datetime.DateTimeUTC(timezone=True), nullable=False
        ),
        sa.PrimaryKeyConstraint("upload_id", name=op.f("pk_s3_multipart_uploads")),
    )
    op.create_table(
        "s3_parts",
        sa.Column("upload_id", advanced_alchemy.types.guid.GUID(length=16), nullable=False),
        sa.Column("part_number", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("etag", sa.String(length=255), nullable=False),
        sa.Column("checksum_crc32c", sa.String(length=16), nullable=False),
        sa.Column(
            "created_at", advanced_alchemy.types.datetime.DateTimeUTC(timezone=True), nullable=False
        ),
        sa.PrimaryKeyConstraint("upload_id", "part_number", name="pk_s3_parts"),
    )


def downgrade() -> None:
    op.drop_table("s3_parts")
    op.drop_table("s3_multipart_uploads")
