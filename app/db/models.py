"""SQL models: uploads (tus resources) and files (completed, verified uploads).

An upload's id is random (UUID v4) and becomes the file UID when it completes, so the
upload URL is also the download URL. Rows are never the source of bytes; they record what
the staging area and the storage backend hold.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from advanced_alchemy.base import UUIDAuditBase
from advanced_alchemy.types import DateTimeUTC, JsonB
from sqlalchemy import BigInteger, Boolean, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column


class UploadState(enum.StrEnum):
    """Life cycle of an upload; only ``ACTIVE`` uploads accept bytes."""

    ACTIVE = "active"
    COMPLETED = "completed"
    TERMINATED = "terminated"
    EXPIRED = "expired"


class Upload(UUIDAuditBase):
    """A tus upload resource and its one-writer lease."""

    __tablename__ = "uploads"
    __table_args__ = (
        Index("ix_uploads_state_expires_at", "state", "expires_at"),
        Index("ix_uploads_owner", "owner"),
    )

    owner: Mapped[str | None] = mapped_column(String(200), default=None)
    state: Mapped[str] = mapped_column(String(16), default=UploadState.ACTIVE)
    length: Mapped[int | None] = mapped_column(BigInteger, default=None)
    """``Upload-Length``; ``None`` while deferred (or while a final upload's is unknown)."""
    offset: Mapped[int] = mapped_column("upload_offset", BigInteger, default=0)
    """Bytes durably staged and acknowledged; never ahead of the staging file."""
    upload_metadata: Mapped[dict[str, Any]] = mapped_column(JsonB, default=dict)
    """``Upload-Metadata`` as sent: key → base64 value (or ``None``)."""
    is_partial: Mapped[bool] = mapped_column(Boolean, default=False)
    concat_parts: Mapped[list[str] | None] = mapped_column(JsonB, default=None)
    """For a final upload: the ids of its partial uploads, in order."""
    storage: Mapped[str] = mapped_column(String(16), default="local")
    """Backend that will hold the finished file (``local`` or ``s3``)."""
    expires_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    lock_token: Mapped[str | None] = mapped_column(String(64), default=None)
    lock_holder: Mapped[str | None] = mapped_column(String(200), default=None)
    """Node that holds the lock, so a restarted node can release its own stale leases."""
    lock_expires_at: Mapped[datetime | None] = mapped_column(
        DateTimeUTC(timezone=True), default=None
    )
    sha256_state: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    """The running SHA-256 of ``[0, offset)``, saved with the offset (``ResumableSha256``),
    so any process can go on hashing where the last acknowledgement left off."""
    content_type: Mapped[str | None] = mapped_column(String(255), default=None)
    """Sniffed from the first bytes once they are acknowledged (no process needs them again)."""

    @property
    def is_final(self) -> bool:
        """A final upload of the concatenation extension."""
        return self.concat_parts is not None

    @property
    def is_complete(self) -> bool:
        """All declared bytes are staged."""
        return self.length is not None and self.offset == self.length

    def is_leased(self, now: datetime) -> bool:
        """Whether a writer holds the one-writer lease at ``now`` (read only; the lease is
        taken and given back by the upload repository)."""
        return self.lock_expires_at is not None and self.lock_expires_at > now

    def is_past_expiry(self, now: datetime) -> bool:
        """An unfinished upload (or an unused partial) whose expiry has passed."""
        lives_on = self.state == UploadState.ACTIVE or self.is_partial
        return lives_on and self.expires_at is not None and self.expires_at <= now


class File(UUIDAuditBase):
    """A completed, verified file; its id is the id of the upload that produced it."""

    __tablename__ = "files"
    __table_args__ = (
        Index("ix_files_owner_created_at", "owner", "created_at"),
        Index("ix_files_category", "category"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, sort_order=-100)
    owner: Mapped[str | None] = mapped_column(String(200), default=None)
    name: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(255))
    category: Mapped[str] = mapped_column(String(16))
    storage: Mapped[str] = mapped_column(String(16))
    storage_key: Mapped[str] = mapped_column(String(1024))
    """Where the backend keeps the bytes: a path below the files dir, or an S3 key."""
    etag: Mapped[str | None] = mapped_column(String(255), default=None)
    """The backend's own entity tag (S3 ETag), when it has one."""
    file_metadata: Mapped[dict[str, Any]] = mapped_column(JsonB, default=dict)
