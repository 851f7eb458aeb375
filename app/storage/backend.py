"""The small interface every storage backend offers to the upload service.

Backends own bytes and nothing else: they never see HTTP, headers or the database. The
upload service stages bytes locally and calls a backend to move finished files into place,
to serve byte ranges, and to free what an abandoned upload left behind.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Protocol, cast

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
        self,
        upload_id: uuid.UUID,
        staged_path: Path,
        durable_offset: int,
        length: int | None,
        *,
        partial: bool = False,
    ) -> None:
        """A PATCH made ``[0, durable_offset)`` durable in staging; backends may ship parts.

        ``partial``: the bytes belong to a partial upload (tus concatenation), which only a
        :class:`PartialStore` is ever told about; it ships them to the partial's own place.
        """

    async def store(
        self,
        upload_id: uuid.UUID,
        staged_path: Path,
        size: int,
        category: str,
        content_type: str,
        *,
        keep_staged: bool = False,
    ) -> StoredObject:
        """Move a complete staged file into permanent storage; idempotent after a crash.

        ``keep_staged``: leave the staging file too; the caller removes it once the file's
        row is committed. Until then it is the trace by which start-up reconciliation finds
        (and discards) a stored copy that no row names.
        """

    async def find_stored(self, upload_id: uuid.UUID, category: str) -> StoredObject | None:
        """The stored object of an upload whose staging file is gone, if it was stored."""

    async def discard_upload(self, upload_id: uuid.UUID) -> None:
        """Free whatever an unfinished upload holds in the backend (S3: abort multipart)."""

    def open_range(self, key: str, start: int, length: int) -> AsyncIterator[bytes]:
        """Stream ``length`` bytes of a stored file from ``start``, in bounded blocks."""
        ...

    async def delete(self, key: str) -> None:
        """Delete a stored file; a missing one is not an error."""


class PartialStore(Protocol):
    """A backend that keeps completed partial uploads and builds final uploads from them.

    Without this capability the upload service keeps partials whole in staging and
    concatenates them there. With it (S3), partials ship like any upload and a final is
    assembled inside the backend (UploadPartCopy), so its bytes need not pass through
    Ferry again. A partial's object is never a file: it has no file row and is deleted
    when the partial is terminated or expires.
    """

    stores_partials: bool

    async def store_partial(self, upload_id: uuid.UUID, staged_path: Path, size: int) -> None:
        """Keep a complete partial upload (its staging file is dropped); idempotent."""

    def partial_object(self, upload_id: uuid.UUID, size: int) -> StoredObject:
        """Where a stored partial upload of ``size`` bytes lives (readable by ``open_range``)."""
        ...

    async def concatenate(
        self,
        final_id: uuid.UUID,
        sources: Sequence[StoredObject],
        spool_path: Path,
        category: str,
        content_type: str,
    ) -> StoredObject:
        """Store ``sources`` end to end as the final upload's object; size-checked.

        ``spool_path`` is scratch space for pieces too small to be copied on their own.
        Redoes an assembly a crash interrupted (aborting what it left) and leaves nothing
        open when it fails.
        """
        ...

    async def discard_partial(self, upload_id: uuid.UUID) -> None:
        """Delete a stored partial upload; a missing one is not an error."""


def partial_store_of(backend: StorageBackend) -> PartialStore | None:
    """The backend as a :class:`PartialStore`, if it has that capability."""
    if getattr(backend, "stores_partials", False):
        return cast(PartialStore, backend)
    return None
