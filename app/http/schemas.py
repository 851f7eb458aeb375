"""Payloads of the JSON endpoints (``/api/files``, ``/files/{uid}/info``): msgspec structs,
also the OpenAPI schema.

Every endpoint that describes a file uses the same field names for the same facts: ``uid``,
``created`` and ``url`` (the download URL), from :class:`FileSummary`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from app.core.metadata import decode_metadata
from app.db.models import File
from app.errors import ErrorCode

#: Fields a listing may be sorted by (prefix ``-`` for descending).
SortField = Literal["created", "-created", "name", "-name", "size", "-size", "updated", "-updated"]

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]


class ApiError(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The body of every error under ``/api``: a stable code, words, and the culprit."""

    error: ErrorCode
    """Stable, machine-readable code: branch on this, never on ``detail``."""
    detail: str
    """What went wrong, in words for a person."""
    parameter: str | None = None
    """The query parameter, path segment, header or body field at fault, when one is."""


class FileSummary(msgspec.Struct, kw_only=True):
    """The facts of one stored file that every endpoint describing a file shows."""

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
    url: str
    """Download URL (``GET`` with ``Range`` support)."""


class FileOut(FileSummary, kw_only=True):
    """One stored file as the file API shows it."""

    updated: datetime
    metadata: dict[str, str | None] = msgspec.field(default_factory=dict)
    """Upload metadata as text (tus ``Upload-Metadata`` values decoded)."""


class FileInfo(FileSummary, kw_only=True):
    """``GET /files/{uid}/info``: what the player page shows about a file."""

    player_url: str
    """The player page of this file."""


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


def download_url(stored: File, base_url: str) -> str:
    """The absolute URL that downloads ``stored``."""
    return f"{base_url.rstrip('/')}/files/{stored.id}"


def file_out(stored: File, base_url: str) -> FileOut:
    """Shape a ``File`` row for the file API."""
    return FileOut(
        **_summary_fields(stored, base_url),
        updated=stored.updated_at,
        metadata=decode_metadata(dict(stored.file_metadata or {})),
    )


def file_info_out(stored: File, base_url: str) -> FileInfo:
    """Shape a ``File`` row for the player page."""
    return FileInfo(
        **_summary_fields(stored, base_url),
        player_url=f"{base_url.rstrip('/')}/player/{stored.id}",
    )


def _summary_fields(stored: File, base_url: str) -> dict[str, Any]:
    return {
        "uid": stored.id,
        "name": stored.name,
        "size": stored.size,
        "sha256": stored.sha256,
        "content_type": stored.content_type,
        "category": stored.category,
        "created": stored.created_at,
        "url": download_url(stored, base_url),
    }
