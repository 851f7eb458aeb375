"""API keys as stored: only a hash of the secret, never the secret itself."""

from __future__ import annotations

from datetime import datetime

from advanced_alchemy.base import UUIDAuditBase
from advanced_alchemy.types import DateTimeUTC
from sqlalchemy import Boolean, Index, String
from sqlalchemy.orm import Mapped, mapped_column


class ApiKey(UUIDAuditBase):
    """One API key: its owner, admin flag, the SHA-256 of the secret and when it was revoked."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_key_hash", "key_hash", unique=True),)

    owner: Mapped[str] = mapped_column(String(200))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    prefix: Mapped[str] = mapped_column(String(32))
    """The key's public first characters, shown by ``ferry keys list`` to tell keys apart."""
    key_hash: Mapped[str] = mapped_column(String(64))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
