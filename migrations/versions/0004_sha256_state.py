"""The running SHA-256 state of each upload, saved with every acknowledged offset, its
sniffed content type, the S3 segments ledger (acknowledged bytes past the last whole part,
kept as objects), the creation rate buckets every node shares, and ``ferry_meta`` (which
data directory a local store's files live in).

Revision ID: 0004_sha256_state
Revises: 0002_s3_parts, 0003_auth_ops
"""

from __future__ import annotations

from collections.abc import Sequence

import advanced_alchemy.types
import sqlalchemy as sa
from alembic import op

revision: str = "0004_sha256_state"
down_revision: str | Sequence[str] | None = ("0002_s3_parts", "0003_auth_ops")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GUID = advanced_alchemy.types.guid.GUID(length=16)
DATETIME = advanced_alchemy.types.datetime.DateTimeUTC(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("sha256_state", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("content_type", sa.String(length=255), nullable=True))
    op.create_table(
        "s3_segments",
        sa.Column("upload_id", GUID, nullable=False),
        sa.Column("start_offset", sa.BigInteger(), nullable=False),
        sa.Column("end_offset", sa.BigInteger(), nullable=False),
        sa.Column("object_key", sa.String(length=1024), nullable=False),
        sa.Column("checksum_crc32c", sa.String(length=16), nullable=False),
        sa.Column("created_at", DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("upload_id", "start_offset", name="pk_s3_segments"),
    )

    op.create_table(
        "creation_rates",
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("owner", name="pk_creation_rates"),
    )

    op.create_table(
        "ferry_meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_ferry_meta"),
    )


def downgrade() -> None:
    op.drop_table("ferry_meta")
    op.drop_table("creation_rates")
    op.drop_table("s3_segments")
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("content_type")
        batch.drop_column("sha256_state")
