"""The small interface every storage backend offers to the upload service.

Backends own bytes and nothing else: they never see HTTP, headers or the database. The
upload service stages bytes locally and calls a backend to move finished files into place,
to serve byte ranges, and to free what an abandoned upload left behind.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import msgspec


class StoredObject(msgspec.Struct, frozen=True):
    """Where a backend put a finished file."""

    key: str
    size: int
    etag: str | None = None


class StorageBackend(Protocol):
    """Capabilities the upload service and the download path need from storage."""

    name: str

    async def start(self) -> None:
        """Open clients and create directories or buckets (once, at start-up)."""

    async def close(self) -> None:
        """Release clients (once, at shutdown)."""

    async def is_usable(self) -> bool:
        """Health: the backend can store and read right now."""

    async def staged_bytes_durable(
        self, upload_id: uuid.UUID, staged_path: Path, durable_offset: int, length: int | None
    ) -> None:
        """A PATCH made ``[0, durable_offset)`` durable in staging; backends may ship parts."""

    async def store(
        self, upload_id: uuid.UUID, staged_path: Path, size: int, category: str, content_type: str
    ) -> StoredObject:
        """Move a complete staged file into permanent storage; idempotent after a crash."""

    async def find_stored(self, upload_id: uuid.UUID, category: str) -> StoredObject | None:
        """The stored object of an upload whose staging file is gone, if it was stored."""

    async def discard_upload(self, upload_id: uuid.UUID) -> None:
        """Free whatever an unfinished upload holds in the backend (S3: abort multipart)."""

    def open_range(self, key: str, start: int, length: int) -> AsyncIterator[bytes]:
        """Stream ``length`` bytes of a stored file from ``start``, in bounded blocks."""
        ...

    async def delete(self, key: str) -> None:
        """Delete a stored file; a missing one is not an error."""
