"""What storage backends offer, as small capability Protocols checked by mypy.

Backends own bytes and nothing else: they never see HTTP, headers or the upload state
machine. Every backend is a :class:`StorageBackend` (store a finished file, read ranges,
free what an upload left). Anything more is a capability it declares in
:meth:`StorageBackend.capabilities` (the way tusd composes a store from capability
interfaces): S3 ships staged bytes as parts (:class:`StagedByteShipping`), keeps partial
uploads and assembles finals (:class:`PartialStore`), sweeps orphaned objects
(:class:`OrphanSweeping`) and presigns downloads (:class:`DownloadPresigning`). The
composition root resolves them once into a :class:`Storage`; nothing looks them up by name.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import msgspec

from app.core.received_crc import ReceivedCrc32c
from app.db.uploads import LeaseFence, Reservation


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

    async def store(
        self,
        upload_id: uuid.UUID,
        staged_path: Path,
        size: int,
        category: str,
        content_type: str,
        *,
        keep_staged: bool = False,
        carried_whole: ReceivedCrc32c | None = None,
    ) -> StoredObject:
        """Move a complete staged file into permanent storage; idempotent after a crash.

        ``keep_staged``: leave the staging file too; the caller removes it once the file's
        row is committed. Until then it is the trace by which start-up reconciliation finds
        (and discards) a stored copy that no row names.

        ``carried_whole``: the request finishing it carried the whole upload from offset 0,
        so nothing of it was acknowledged, stored or recorded before: the staged file is all
        there is. It holds the CRCs of the bytes as they arrived, so a backend that sends
        them on can have them checked against those rather than against what staging holds
        by then.
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

    def capabilities(self) -> Capabilities:
        """What this backend can do beyond storing and reading files."""
        ...


class ShipmentAhead(Protocol):
    """What a :class:`StagedByteShipping` backend sends while one body still streams."""

    async def staged(self, end: int) -> None:
        """The staging file holds the body up to ``end``. May wait, while the backend has
        too much staged and not yet sent: the caller stops reading the body meanwhile."""

    async def settle(self) -> None:
        """Send nothing more and wait for what is in flight; never raises for a failed
        send (:meth:`StagedByteShipping.ship_acknowledged` sends it again)."""


class StagedByteShipping(Protocol):
    """A backend that must hold bytes before they are acknowledged (S3: parts and
    segments), so that staging is only a buffer and any process can continue an upload.

    Such a backend's staging files may lack bytes (another process received them): the
    service asks it to :meth:`restore_staged` before appending, and hashes a finished
    upload from the running hash or the stored object, never from staging.
    """

    async def restore_staged(
        self, upload_id: uuid.UUID, staged_path: Path, offset: int, fence: LeaseFence
    ) -> None:
        """Make staging hold what appending at ``offset`` needs (the acknowledged bytes past
        the last whole part)."""

    async def ship_acknowledged(
        self,
        upload_id: uuid.UUID,
        staged_path: Path,
        committed: int,
        durable: int,
        length: int | None,
        *,
        partial: bool = False,
        fence: LeaseFence,
        ahead: ShipmentAhead | None = None,
        received: ReceivedCrc32c | None = None,
    ) -> Reservation | None:
        """Hold ``[committed, durable)`` of the staged bytes before they are acknowledged.

        ``partial``: the bytes belong to a partial upload (tus concatenation), which only a
        :class:`PartialStore` is ever told about; it keeps them in the partial's own place.
        ``fence`` runs in every transaction that records them, so a writer whose lease
        lapsed meanwhile records (and undoes) nothing. What is returned records the rest
        and must run in the transaction that commits ``durable`` (the same guarantee: the
        lease holds, or nothing of it stays). ``ahead``: what :meth:`ship_ahead` sent of
        this body (settled). ``received``: the body's CRC32Cs as it arrived (fed while it
        was staged), so that bytes changed in staging since are refused, not stored.
        """

    def ship_ahead(
        self,
        upload_id: uuid.UUID,
        staged_path: Path,
        committed: int,
        length: int | None,
        *,
        partial: bool = False,
        fence: LeaseFence,
        received: ReceivedCrc32c | None = None,
    ) -> ShipmentAhead:
        """Start holding the body appended at ``committed`` while it streams, so that the
        answer does not wait for all of it to be sent after its last byte."""
        ...

    def check_length(self, length: int) -> None:
        """413 for a length the backend cannot hold (S3: more than max parts x 5 GiB)."""

    def is_one_object(self, length: int) -> bool:
        """Whether an upload of ``length`` bytes is stored as one object, put whole by the
        body that completes it (S3: at most one part; never a multipart upload)."""
        ...


class PartialStore(Protocol):
    """A backend that keeps completed partial uploads and builds final uploads from them.

    Without this capability the upload service keeps partials whole in staging and
    concatenates them there. With it (S3), partials ship like any upload and a final is
    assembled inside the backend (UploadPartCopy), so its bytes need not pass through
    Ferry again. A partial's object is never a file: it has no file row and is deleted
    when the partial is terminated or expires.
    """

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


class OrphanSweeping(Protocol):
    """A backend that can find and free objects no live upload owns."""

    async def abort_orphaned_uploads(self, live_upload_ids: set[uuid.UUID]) -> int:
        """Abort multipart uploads that no live upload owns."""
        ...

    async def delete_orphaned_partials(self, live_partial_ids: set[uuid.UUID]) -> int:
        """Delete partial objects whose partial upload is no longer live."""
        ...


class DownloadPresigning(Protocol):
    """A backend that can hand out time-limited URLs for direct downloads."""

    async def presigned_get_url(
        self, key: str, expires_seconds: int, filename: str | None, content_type: str | None
    ) -> str:
        """A URL that downloads ``key`` straight from the store."""
        ...


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend declares it can do beyond :class:`StorageBackend`."""

    shipping: StagedByteShipping | None = None
    partials: PartialStore | None = None
    sweeping: OrphanSweeping | None = None
    presigning: DownloadPresigning | None = None


@dataclass(frozen=True, slots=True)
class Storage:
    """A backend with its capabilities resolved once (and instrumented, in the app)."""

    backend: StorageBackend
    shipping: StagedByteShipping | None = None
    partials: PartialStore | None = None
    """Set when the backend keeps partial uploads and assembles finals itself (S3);
    otherwise partials stay staged whole and finals are concatenated in staging."""
    sweeping: OrphanSweeping | None = None
    presigning: DownloadPresigning | None = None

    @classmethod
    def of(cls, backend: StorageBackend) -> Storage:
        """``backend`` with the capabilities it declares."""
        declared = backend.capabilities()
        return cls(
            backend=backend,
            shipping=declared.shipping,
            partials=declared.partials,
            sweeping=declared.sweeping,
            presigning=declared.presigning,
        )

    @property
    def reclaims_staging(self) -> bool:
        """Whether staged bytes are reclaimed once shipped (hash from the store then)."""
        return self.shipping is not None
