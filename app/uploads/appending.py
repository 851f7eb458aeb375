"""The write path of a tus upload: one body in, one durable offset committed.

:class:`~app.uploads.service.UploadService` owns the upload's states and hands every
PATCH (and the body of a creation-with-upload POST) to :class:`UploadAppender`. It lives
apart because it is where the first three invariants are kept, in this order of effects:

* the upload is claimed under the one-writer lease, checked against its offset and length;
* the body streams into the staging file while the lease is kept alive;
* the new offset is committed only after the staged bytes are fdatasync'ed (invariant 1),
  as a compare-and-set on the lock token and the old offset (invariants 2 and 3);
* a body that completes a local upload leaves its offset to the filing transaction
  (:mod:`app.uploads.filing`), which commits it together with the file row.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from sqlalchemy import update

from app.core.checksums import ChunkDigest, ChunkVerifier
from app.core.clock import utcnow
from app.db.models import Upload, UploadState
from app.errors import (
    BadRequest,
    ClientDisconnected,
    FerryError,
    Forbidden,
    Gone,
    OffsetMismatch,
    PayloadTooLarge,
    UploadLocked,
)
from app.storage.sniff import SNIFF_SIZE
from app.uploads.collaborator import ServiceCollaborator, not_yet_inserted
from app.uploads.locking import LeaseState

if TYPE_CHECKING:
    from app.uploads.filing import UploadFiler
    from app.uploads.service import AppendRequest, UploadService

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Received:
    """How one body ended."""

    durable_end: int
    disconnected: bool = False
    too_large: bool = False
    lease_lost: bool = False
    head: bytes = b""
    """The upload's first bytes, when this body started at offset 0."""


@dataclass(frozen=True, slots=True)
class Appended:
    """What one body did to its upload."""

    upload: Upload
    lock_released: bool
    uncommitted_from: int | None = None
    """Set when the body completed the upload but its offset is not committed yet: the
    filing transaction commits it together with the file row (one transaction fewer per
    small upload). The value is the offset the database still holds."""
    head: bytes = b""


class UploadAppender(ServiceCollaborator):
    """Streams bodies into staging and commits durable offsets for :class:`UploadService`.

    The staging area, hashes, locks and settings are the service's, fixed at construction;
    the backend is read through the service each time.
    """

    def __init__(self, uploads: UploadService, filer: UploadFiler) -> None:
        super().__init__(uploads)
        self._filer = filer

    async def append(
        self, request: AppendRequest, body: AsyncIterator[bytes], *, fresh: Upload | None = None
    ) -> Upload:
        """Write one body at the upload's offset and commit the new, durable offset.

        Raises :class:`ClientDisconnected` after committing what arrived when the client
        went away (nothing is committed if a checksum was promised and cannot be checked).
        """
        token: str | None
        if fresh is not None and fresh.lock_token is not None:
            # Created by this same request with the lock already held (creation-with-upload).
            upload, token = fresh, fresh.lock_token
        else:
            upload, token = await self._claim_for_append(request)
        try:
            length, room = self._append_bounds(upload, request)
            if upload.state == UploadState.COMPLETED or (
                room == 0 and length is not None and length == upload.length
            ):
                # Nothing to write or record. A deferred length declared equal to the offset
                # (an empty final PATCH) must go on, to record the length and finish.
                if token is not None:
                    await self.locks.release(upload.id, token)
                return upload
            check_staging_room = getattr(self.backend, "check_staging_room", None)
            if check_staging_room is not None:
                check_staging_room()  # S3 down or slow: 503 once staging holds the budget
        except BaseException as failure:
            if token is not None:
                await self._let_go(upload, token, failure)
            raise
        if token is None:
            token = await self._lock_for_append(upload, request.offset)
        try:
            if length != upload.length:
                await self.set_length(upload, length)
            appended = await self._receive_and_commit(upload, token, request, body, room)
        except BaseException as failure:
            await self._let_go(upload, token, failure)
            raise
        upload = appended.upload
        if upload.is_complete and upload.state == UploadState.ACTIVE:
            upload = await self._uploads._finish(upload, token, appended)
        elif not appended.lock_released:
            await self.locks.release(upload.id, token)
        return upload

    async def _let_go(self, upload: Upload, token: str, failure: BaseException) -> None:
        """Give the lock back after a failure.

        An upload whose row was not inserted yet is inserted, empty, when the client is told
        where it is (a 4xx carries its Location); otherwise it leaves no trace.
        """
        with anyio.CancelScope(shield=True):
            if not not_yet_inserted(upload):
                await self.locks.release(upload.id, token)
                return
            await self.staging.truncate(upload.id, 0)
            if isinstance(failure, FerryError) and upload.state == UploadState.ACTIVE:
                try:
                    await self._commit_offset(upload, token, 0, release_lock=True)
                    return
                except Exception:
                    logger.warning("upload %s: could not be recorded", upload.id, exc_info=True)
            await self.staging.remove(upload.id)

    def _append_bounds(self, upload: Upload, request: AppendRequest) -> tuple[int | None, int]:
        """The upload's length after this request and the bytes it may still take."""
        if upload.is_final:
            raise Forbidden("PATCH is not allowed on a final upload of a concatenation")
        if request.offset != upload.offset:
            raise OffsetMismatch(
                f"Upload-Offset {request.offset} does not match the current offset {upload.offset}"
            )
        length = self._length_after(upload, request.declared_length)
        room = (self.settings.max_size if length is None else length) - upload.offset
        if request.content_length is not None and request.content_length > room:
            raise PayloadTooLarge(
                f"the body of {request.content_length} bytes goes past the upload's end "
                f"({room} bytes left)"
            )
        return length, room

    def _length_after(self, upload: Upload, declared: int | None) -> int | None:
        if declared is None:
            return upload.length
        if upload.length is not None:
            if declared != upload.length:
                raise BadRequest(
                    f"Upload-Length {declared} differs from the upload's length {upload.length}"
                )
            return upload.length
        if declared < upload.offset:
            raise BadRequest(f"Upload-Length {declared} is less than the offset {upload.offset}")
        if declared > self.settings.max_size:
            raise PayloadTooLarge(
                f"Upload-Length {declared} exceeds the maximum size {self.settings.max_size}"
            )
        self._uploads._check_backend_admits(declared)
        return declared

    async def _claim_for_append(self, request: AppendRequest) -> tuple[Upload, str | None]:
        """The common case in one statement: lock a free, active upload at this offset.

        Anything else (locked, wrong offset, finished, gone, someone else's) takes the
        slower road that reads the row first and answers with the precise error.
        """
        claimed = await self.locks.acquire_and_load(
            request.upload_id, state=UploadState.ACTIVE, offset=request.offset
        )
        if claimed is None:
            return await self._uploads.get(request.upload_id, request.owner), None
        token, upload = claimed
        try:
            self._uploads._visible(upload, request.owner)
        except BaseException:
            await self.locks.release(upload.id, token)
            raise
        return upload, token

    async def _lock_for_append(self, upload: Upload, offset: int) -> str:
        token = await self.locks.acquire(
            upload.id, state=UploadState.ACTIVE, offset=offset, length=upload.length
        )
        if token is not None:
            return token
        current = await self._uploads.get(upload.id)
        if current.offset != offset:
            raise OffsetMismatch(
                f"Upload-Offset {offset} does not match the current offset {current.offset}"
            )
        raise UploadLocked("another request is writing to this upload; retry shortly")

    async def set_length(self, upload: Upload, length: int | None) -> None:
        """Fix a deferred length (creation-defer-length) once it is known."""
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(Upload)
                .where(Upload.id == upload.id, Upload.length.is_(None))
                .values(length=length)
                .execution_options(synchronize_session=False)
            )
        upload.length = length

    async def _receive_and_commit(
        self,
        upload: Upload,
        token: str,
        request: AppendRequest,
        body: AsyncIterator[bytes],
        room: int,
    ) -> Appended:
        """Stream, verify and commit one body.

        The lock is released with the commit unless finishing or validation follows. A
        body that completes a local upload leaves the commit to the filing transaction.
        """
        running = self.hashes.resume_at(upload.id, upload.offset)
        verifier = ChunkVerifier(request.checksum, request.checksum_trailer)
        digests: list[ChunkDigest] = [*verifier.digests, *([running] if running else [])]
        received = await self._stream_to_staging(upload, token, body, room, digests)

        if received.lease_lost:
            # Someone else holds the upload now; leave the file to them.
            raise UploadLocked("the upload's lock expired while this request was writing")
        discard_reason: Exception | None = None
        if received.too_large:
            discard_reason = PayloadTooLarge("the body goes past the upload's end")
        elif verifier.active:
            discard_reason = verifier.failure(disconnected=received.disconnected)
        if discard_reason is not None:
            await self.staging.truncate(upload.id, upload.offset)
            if not_yet_inserted(upload):
                # The error carries the upload's Location: the client may resume there.
                await self._commit_offset(upload, token, upload.offset, release_lock=True)
            raise discard_reason

        new_offset = received.durable_end
        old_offset = upload.offset
        completes = upload.length is not None and new_offset == upload.length
        if completes and not received.disconnected and self._files_in_one_commit(upload):
            # The rename into place and the file row follow at once; the offset is
            # committed with the row. A crash in between leaves the stored bytes, which
            # start-up reconciliation adopts (or termination removes).
            upload.offset = new_offset
            if running is not None:
                self.hashes.record(upload.id, new_offset, running)
            return Appended(upload, False, uncommitted_from=old_offset, head=received.head)
        checks_policy = old_offset < SNIFF_SIZE <= new_offset and not completes
        release = not completes and not checks_policy
        await self._commit_offset(upload, token, new_offset, release_lock=release)
        if running is not None:
            self.hashes.record(upload.id, new_offset, running)
        else:
            self.hashes.forget(upload.id)
        if not upload.is_partial or self.partials is not None:
            # Without a partial store, a partial upload's bytes stay staged whole until a
            # final upload concatenates them locally: nothing may ship (and reclaim) them.
            await self.backend.staged_bytes_durable(
                upload.id,
                self.staging.path_for(upload.id),
                new_offset,
                upload.length,
                partial=upload.is_partial,
            )
        if checks_policy:
            # Validation as early as the magic bytes allow: a refused 50 GB upload stops
            # after its first chunk instead of at completion.
            await self._filer.enforce_content_policy(upload, token, upload.length)
        if received.disconnected:
            raise ClientDisconnected(f"client disconnected; {new_offset} bytes are stored")
        return Appended(upload, release, head=received.head)

    def _files_in_one_commit(self, upload: Upload) -> bool:
        """Whether completing ``upload`` may commit its offset with its file row.

        Not for partial uploads (they are not filed) nor for backends that ship staged
        bytes as they become durable (S3 must see each committed offset first).
        """
        return not upload.is_partial and not getattr(self.backend, "reclaims_staging", False)

    async def _stream_to_staging(
        self,
        upload: Upload,
        token: str,
        body: AsyncIterator[bytes],
        room: int,
        digests: list[ChunkDigest],
    ) -> _Received:
        writer = await self.staging.open_writer(upload.id, upload.offset, digests, SNIFF_SIZE)
        outcome = _Received(durable_end=upload.offset)
        # An upload with no row yet has no lease to keep: nobody else knows its id.
        keep_lease = (
            contextlib.nullcontext(LeaseState())
            if not_yet_inserted(upload)
            else self.locks.kept_alive(upload.id, token)
        )
        try:
            async with keep_lease as lease:
                taken = 0
                try:
                    async for piece in body:
                        if lease.lost:
                            outcome.lease_lost = True
                            break
                        taken += len(piece)
                        if taken > room:
                            outcome.too_large = True
                            break
                        await writer.write(piece)
                except ClientDisconnected:
                    outcome.disconnected = True
                if not outcome.lease_lost:
                    # Invariant 1: only fdatasync'ed bytes may be acknowledged.
                    outcome.durable_end = await writer.sync()
        finally:
            await writer.close()
        outcome.head = bytes(writer.head)
        return outcome

    async def _commit_offset(
        self,
        upload: Upload,
        token: str,
        new_offset: int,
        *,
        release_lock: bool = False,
        committed: int | None = None,
    ) -> None:
        """Record the durable offset; one statement also gives the lock back when asked.

        ``committed`` is the offset the database holds when ``upload.offset`` already
        moved on in memory (a completion whose filing failed).
        """
        expires_at = utcnow() + self.ttl
        lock_values: dict[str, Any] = (
            {"lock_token": None, "lock_holder": None, "lock_expires_at": None}
            if release_lock
            else {}
        )
        if not_yet_inserted(upload):
            await self._insert_with_offset(upload, new_offset, expires_at, lock_values)
            return
        async with self._sessions() as session, session.begin():
            result: Any = await session.execute(
                update(Upload)
                .where(
                    Upload.id == upload.id,
                    Upload.lock_token == token,
                    Upload.offset == (upload.offset if committed is None else committed),
                )
                .values(
                    offset=new_offset, expires_at=expires_at, updated_at=utcnow(), **lock_values
                )
                .execution_options(synchronize_session=False)
            )
        if result.rowcount != 1:
            raise UploadLocked("the upload's lock was lost before the offset could be committed")
        upload.offset = new_offset
        upload.expires_at = expires_at

    async def _insert_with_offset(
        self, upload: Upload, offset: int, expires_at: Any, lock_values: dict[str, Any]
    ) -> None:
        """The first commit of a creation-with-upload inserts its row (see
        ``UploadService._born_with_its_body``)."""
        if upload.state in (UploadState.TERMINATED, UploadState.EXPIRED):
            raise Gone("the upload was refused before it was stored")
        upload.state = UploadState.ACTIVE  # a filing that failed may have set COMPLETED
        upload.offset = offset
        upload.expires_at = expires_at
        for name, value in lock_values.items():
            setattr(upload, name, value)
        async with self._sessions() as session, session.begin():
            session.add(upload)

    async def commit_after_failed_filing(self, upload: Upload, token: str, committed: int) -> None:
        """Keep the durable bytes of a completion whose filing failed (a HEAD retries it)."""
        with anyio.CancelScope(shield=True):
            try:
                await self._commit_offset(upload, token, upload.offset, committed=committed)
            except FerryError:
                pass  # the upload was retired (refused by validation) or its lock was lost
            except Exception:
                logger.warning(
                    "upload %s: could not commit offset %d after a failed completion; "
                    "the client resends from %d",
                    upload.id,
                    upload.offset,
                    committed,
                    exc_info=True,
                )
