"""S3 backend: acknowledged bytes are in S3, so any process can continue any upload.

A PATCH is answered only once its bytes are in S3 and recorded in the ledger
(:mod:`app.storage.s3_ledger`): :meth:`S3Backend.ship_acknowledged` sends the whole parts
the new bytes complete and keeps the rest as a segment object
(:mod:`app.storage.s3_shipping`). Local staging is a buffer: a process that did not commit
the current offset itself reads the segments back first (:meth:`S3Backend.restore_staged`).
On completion only CompleteMultipartUpload remains (uploads smaller than one part were put
whole by the body that completed them), checked against the recorded parts before the
service files anything.

:class:`S3Backend` is the entry point the app, the upload service and the ops layer see:
it keeps the S3 client, the admission checks and the object keys, and delegates each
other concern to a collaborator it owns (:mod:`app.storage.s3_collaborator` holds what
they share):

* :mod:`app.storage.s3_shipping`: parts and segments, from staging into S3, and back;
* :mod:`app.storage.s3_completion`: the object of a finished upload, a partial upload's
  object, and a final upload's assembly (:mod:`app.storage.s3_concat`);
* :mod:`app.storage.s3_cleanup`: aborts, deletes and the orphan sweeps;
* :mod:`app.storage.s3_reading`: ranged downloads and presigned URLs.

Every public coroutine stays a method of :class:`S3Backend` (the ops layer times the
backend's own coroutine methods, :func:`~app.ops.metrics.instrumented`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from app.errors import PayloadTooLarge
from app.storage.backend import Capabilities, ShipmentAhead, StoredObject
from app.storage.parts import PartTooLarge, check_upload_length
from app.storage.s3_ahead import PartsAhead
from app.storage.s3_cleanup import ObjectCleaner
from app.storage.s3_client import direct_part_uploader, s3_client, s3_session
from app.storage.s3_collaborator import PARTIALS_FOLDER, TRANSIENT_ERRORS
from app.storage.s3_completion import ObjectCompleter
from app.storage.s3_concat import FinalAssembly
from app.storage.s3_reading import ObjectReader
from app.storage.s3_shipping import Ledger, PartShipper
from app.storage.sniff import Category

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
    from types_aiobotocore_s3 import S3Client

    from app.core.received_crc import ReceivedCrc32c
    from app.db.uploads import LeaseFence, Reservation
    from app.settings import Settings
    from app.storage.part_upload import PartUploader
    from app.storage.s3_ledger import Multipart, PartRecord

logger = logging.getLogger(__name__)


class S3Backend:
    """Stores finished files as S3 objects ``{prefix}{category}/{uid}``."""

    name = "s3"

    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.settings = settings
        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix
        self.sessions = sessions
        """The app's session factory: the parts ledger lives in the same database."""
        self._client: S3Client | None = None
        self._exit_stack = contextlib.AsyncExitStack()
        self._global_slots: asyncio.Semaphore | None = None
        self.part_uploader: PartUploader | None = None
        """Sends part bodies with sendfile; ``None`` (behind a proxy): through the client."""
        self.retry_pause_max = 30.0
        """Longest pause between attempts of a part or segment upload."""
        self._reader = ObjectReader(self)
        self._cleaner = ObjectCleaner(self)
        self._shipper = PartShipper(self)
        self._completer = ObjectCompleter(self, self._shipper, self._cleaner)

    # ------------------------------------------------------------------ life cycle

    def capabilities(self) -> Capabilities:
        """Every capability: acknowledged bytes ship as parts and segments (so staging
        is a buffer any process can rebuild), partial uploads are objects of their own and
        finals are assembled in S3, orphans are swept, downloads presigned."""
        return Capabilities(shipping=self, partials=self, sweeping=self, presigning=self)

    async def start(self) -> None:
        """Open the one S3 client of the process."""
        session = s3_session()
        self._client = await self._exit_stack.enter_async_context(s3_client(session, self.settings))
        self.part_uploader = direct_part_uploader(
            session, self._client.meta.endpoint_url, self.settings.s3_timeout_seconds
        )
        # S3 servers saturate with a few parts in flight; more only costs memory.
        self._global_slots = asyncio.Semaphore(self.settings.s3_part_concurrency * 2)

    async def close(self) -> None:
        """Close the client (every acknowledged byte is in S3 already)."""
        if self.part_uploader is not None:
            self.part_uploader.close()
        await self._exit_stack.aclose()
        self._client = None

    @property
    def client(self) -> S3Client:
        if self._client is None:
            raise RuntimeError("S3Backend.start() was not called")
        return self._client

    @property
    def part_slots(self) -> asyncio.Semaphore:
        """Bounds the parts this process sends at once, over all uploads."""
        if self._global_slots is None:
            raise RuntimeError("S3Backend.start() was not called")
        return self._global_slots

    async def is_usable(self) -> bool:
        """The bucket answers a HEAD."""
        try:
            with anyio.fail_after(5):
                await self.client.head_bucket(Bucket=self.bucket)
        except TRANSIENT_ERRORS:
            return False
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ admission

    def check_length(self, length: int) -> None:
        """413 for an upload no multipart upload could hold (``max_parts`` parts of 5 GiB)."""
        try:
            check_upload_length(length, self.settings.s3_max_parts)
        except PartTooLarge as exc:
            raise PayloadTooLarge(str(exc)) from None

    def is_one_object(self, length: int) -> bool:
        """At most one part: put whole by the body that completes it."""
        return self._shipper.is_single(Ledger(), length)

    # ------------------------------------------------------------------ keys

    def key_for(self, upload_id: uuid.UUID, category: str) -> str:
        """The object key of an upload's file."""
        return f"{self.prefix}{Category(category).value}/{upload_id}"

    def partial_key(self, upload_id: uuid.UUID) -> str:
        """The object key of a partial upload: deterministic, so a restart finds it."""
        return f"{self.prefix}{PARTIALS_FOLDER}/{upload_id}"

    def partial_object(self, upload_id: uuid.UUID, size: int) -> StoredObject:
        """Where a stored partial upload lives."""
        return StoredObject(key=self.partial_key(upload_id), size=size)

    # ------------------------------------------------------------------ shipping and storing

    async def restore_staged(
        self, upload_id: uuid.UUID, staged_path: Path, offset: int, fence: LeaseFence
    ) -> None:
        """Make staging hold the acknowledged bytes past the last whole part (from S3 when
        another process, or this one before a restart, acknowledged them)."""
        await self._shipper.restore(upload_id, staged_path, offset, fence)

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
        """Put ``[committed, durable)`` into S3 (parts, or a segment) before it is
        acknowledged, recording them only while ``fence`` holds (parts: by what is
        returned, in the committing transaction); 503 when S3 does not take them in
        bounded time."""
        assert ahead is None or isinstance(ahead, PartsAhead)
        return await self._shipper.ship(
            upload_id,
            staged_path,
            committed,
            durable,
            length,
            partial=partial,
            fence=fence,
            ahead=ahead,
            received=received,
        )

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
    ) -> PartsAhead:
        """Send whole parts as soon as they are staged (:mod:`app.storage.s3_ahead`)."""
        return PartsAhead(
            self._shipper,
            upload_id,
            staged_path,
            committed,
            length,
            partial=partial,
            fence=fence,
            received=received,
        )

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
        """Complete the object and verify it against the ledger; drop the staging file
        (unless ``keep_staged``).

        ``carried_whole``: the request finishing it carried the whole upload from offset 0;
        nothing was acknowledged before, so there is no ledger to read or forget: one
        PutObject from staging is the whole completion, with the CRC32C of the bytes as
        they arrived (S3 refuses them if staging changed since).
        """
        key = self.key_for(upload_id, category)
        if carried_whole is not None:
            stored = await self._shipper.put_whole(
                key, staged_path, size, content_type, carried_whole
            )
        else:
            stored = await self._completer.store(upload_id, staged_path, size, key, content_type)
        if not keep_staged:
            await anyio.Path(staged_path).unlink(missing_ok=True)
        return stored

    async def find_stored(self, upload_id: uuid.UUID, category: str) -> StoredObject | None:
        """An upload's object stored before a crash hid that from the database."""
        return await self._completer.find_stored(upload_id, category)

    # ------------------------------------------------------------------ concatenation

    async def store_partial(self, upload_id: uuid.UUID, staged_path: Path, size: int) -> None:
        """Ship what is left of a complete partial upload into its partial object."""
        await self._completer.store_partial(upload_id, staged_path, size)

    async def concatenate(
        self,
        final_id: uuid.UUID,
        sources: Sequence[StoredObject],
        spool_path: Path,
        category: str,
        content_type: str,
    ) -> StoredObject:
        """Assemble a final upload's object from partial objects inside S3 (a crash's
        leftover assembly is aborted first; ``spool_path`` is gone afterwards)."""
        key = self.key_for(final_id, category)
        assembly = FinalAssembly(self, final_id, key, sources, spool_path)
        return await self._completer.concatenate(assembly, content_type)

    async def begin_assembly(
        self, final_id: uuid.UUID, key: str, content_type: str, total: int
    ) -> Multipart:
        """Start (and record in the ledger) the multipart upload a final is built in."""
        return await self._completer.begin_assembly(final_id, key, content_type, total)

    async def finish_assembly(
        self, final_id: uuid.UUID, multipart: Multipart, records: list[PartRecord], size: int
    ) -> StoredObject:
        """CompleteMultipartUpload (size checked by a HEAD); the ledger row is dropped."""
        return await self._completer.finish_assembly(final_id, multipart, records, size)

    async def abandon_assembly(self, final_id: uuid.UUID) -> None:
        """Abort a failed assembly, waiting a bounded time (else the next attempt does)."""
        await self._completer.abandon_assembly(final_id)

    async def put_file(
        self, key: str, path: Path, size: int, content_type: str, crc32c: str
    ) -> StoredObject:
        """One PutObject of the first ``size`` bytes of a spool file."""
        return await self._completer.put_from_file(key, path, size, content_type, crc32c)

    # ------------------------------------------------------------------ cleanup

    async def discard_upload(self, upload_id: uuid.UUID) -> None:
        """Abort the upload's multipart upload (if any), delete its segments, forget it.

        A one-part upload is put at its final key by the body that completes it, before
        its file row exists: refused by the content rules, or cut off by a crash before
        the row, that object is named by nothing. It is deleted too (the upload is never
        filed when it is discarded), under every category's key, since what was sniffed is
        not recorded; the orphan sweep cannot find it.
        """
        self._shipper.forget_staged(upload_id)
        await self._shipper.drop_segments(upload_id, unrecorded=True)
        await self._cleaner.discard_upload(upload_id)
        try:
            for category in Category:
                await self._cleaner.delete(self.key_for(upload_id, category.value))
        except TRANSIENT_ERRORS as exc:
            logger.warning("upload %s: its unfiled object may be left (%r)", upload_id, exc)

    async def discard_partial(self, upload_id: uuid.UUID) -> None:
        """Delete a partial upload's object (the orphan sweep retries if S3 is down)."""
        await self._cleaner.discard_partial(upload_id)

    async def abort_orphaned_uploads(self, live_upload_ids: set[uuid.UUID]) -> int:
        """Abort multipart uploads under the prefix that no live upload owns."""
        return await self._cleaner.abort_orphaned_uploads(live_upload_ids)

    async def delete_orphaned_partials(self, live_partial_ids: set[uuid.UUID]) -> int:
        """Delete partial objects whose partial upload is no longer live."""
        return await self._cleaner.delete_orphaned_partials(live_partial_ids)

    async def delete(self, key: str) -> None:
        """Delete a stored object; a missing one is not an error."""
        await self._cleaner.delete(key)

    # ------------------------------------------------------------------ reading

    def open_range(self, key: str, start: int, length: int) -> AsyncIterator[bytes]:
        """Stream ``length`` bytes from ``start`` with one ranged GetObject (an async
        iterator, not a coroutine: the ops layer passes it through untimed)."""
        return self._reader.open_range(key, start, length)

    async def presigned_get_url(
        self, key: str, expires_seconds: int, filename: str | None, content_type: str | None
    ) -> str:
        """A time-limited URL that downloads ``key`` straight from S3."""
        return await self._reader.presigned_get_url(key, expires_seconds, filename, content_type)
