"""Payloads of the JSON file API (``/api/files``): msgspec structs, also the OpenAPI schema."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec

from app.core.metadata import decode_metadata
from app.db.models import File

#: Fields a listing may be sorted by (prefix ``-`` for descending).
SortField = Literal["created", "-created", "name", "-name", "size", "-size", "updated", "-updated"]

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]


class FileOut(msgspec.Struct, kw_only=True):
    """One stored file as the API shows it."""

    uid: uuid.UUID
    """The file UID (also its tus upload id)."""
    name: str
    size: int
    sha256: str
    """Hex SHA-256 of the stored bytes, computed by the server."""
    content_type: str
    """Sniffed from the file's magic bytes, not taken from the client."""
    category: str
    """``images``, ``media``, ``text`` or ``other``."""
    created: datetime
    updated: datetime
    url: str
    """Download URL (``GET`` with ``Range`` support)."""
    metadata: dict[str, str | None] = msgspec.field(default_factory=dict)
    """Upload metadata as text (tus ``Upload-Metadata`` values decoded)."""


class FilePage(msgspec.Struct, kw_only=True):
    """One page of a listing; ``next_offset`` is ``None`` on the last page."""

    items: list[FileOut]
    total: int
    limit: int
    offset: int
    next_offset: int | None


class FileUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``PATCH`` body: a new name and/or metadata keys to set (``null`` removes a key)."""

    name: Name | None = None
    metadata: dict[str, str | None] | None = None


class UploadedFiles(msgspec.Struct, kw_only=True):
    """Answer of a multipart ``POST /api/files``: every file of the form, in order."""

    files: list[FileOut]


def file_out(stored: File, base_url: str) -> FileOut:
    """Shape a ``File`` row for the API."""
    return FileOut(
        uid=stored.id,
        name=stored.name,
        size=stored.size,
        sha256=stored.sha256,
        content_type=stored.content_type,
        category=stored.category,
        created=stored.created_at,
        updated=stored.updated_at,
        url=f"{base_url.rstrip('/')}/files/{stored.id}",
        metadata=decode_metadata(dict(stored.file_metadata or {})),
    )
