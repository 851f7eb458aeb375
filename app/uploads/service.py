"""The upload service: owns upload state, the one-writer lock and the path to a file.

Every change of an upload goes through here. The tus controller turns headers into the
typed requests below and this service decides; it never sees HTTP. Bytes are staged by
:class:`~app.storage.staging.StagingArea` and handed to a storage backend on completion.

The order of effects is what keeps the invariants:

* a new offset is committed only after the staged bytes are fdatasync'ed (invariant 1);
* the offset commit is a compare-and-set on the lock token and the old offset, so nothing
  is ever acknowledged twice or interleaved (invariants 2 and 3);
* a file row exists only once the bytes are stored and hashed (invariant 4).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import File, Upload, UploadState
from app.errors import (
    BadRequest,
    ClientDisconnected,
    FerryError,
    Forbidden,
    Gone,
    NotFound,
    OffsetMismatch,
    PayloadTooLarge,
    ServiceUnavailable,
    UploadLocked,
)
from app.filenames import safe_display_name
from app.storage.backend import StorageBackend, StoredObject, partial_store_of
from app.storage.sniff import SNIFF_SIZE, category_for, sniff_content_type
from app.storage.staging import StagingArea
from app.tus.protocol import ChecksumSpec, ChunkDigest, ChunkVerifier, decode_metadata_value
from app.uploads.hashing import RunningHashes
from app.uploads.locking import UploadLocks, utcnow
from app.uploads.validation import UploadPolicy

if TYPE_CHECKING:
    from hashlib import _Hash

    from app.settings import Settings

logger = logging.getLogger(__name__)

LIVE_STATES = (UploadState.ACTIVE, UploadState.COMPLETED)


@dataclass(frozen=True, slots=True)
class NewUpload:
    """What a creation request asks for, already parsed and validated by the tus layer."""

    length: int | None
    metadata: dict[str, str | None] = field(default_factory=dict)
    is_partial: bool = False
    partial_ids: list[uuid.UUID] | None = None
    """Set for a final upload: the partial uploads to concatenate, in order."""
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class AppendRequest:
    """One PATCH (or the body of a creation-with-upload POST)."""

    upload_id: uuid.UUID
    offset: int
    owner: str | None = None
    content_length: int | None = None
    checksum: ChecksumSpec | None = None
    checksum_trailer: Callable[[], str | None] | None = None
    """checksum-trailer: reads the ``Upload-Checksum`` trailer once the body has ended."""
    declared_length: int | None = None
    """``Upload-Length`` sent with the PATCH, to fix a deferred length."""


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
class _Appended:
    """What one body did to its upload."""

    upload: Upload
    lock_released: bool
    uncommitted_from: int | None = None
    """Set when the body completed the upload but its offset is not committed yet: the
    filing transaction commits it together with the file row (one transaction fewer per
    small upload). The value is the offset the database still holds."""
    head: bytes = b""


class UploadService:
    """Creates uploads, appends bytes under a lease, finishes, terminates and expires them."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        staging: StagingArea,
        backend: StorageBackend,
        settings: Settings,
        hashes: RunningHashes | None = None,
    ) -> None:
        self._sessions = sessions
        self.staging = staging
        self.backend = backend
        self.settings = settings
        self.hashes = hashes or RunningHashes()
        self.locks = UploadLocks(sessions, settings.resolved_node_id, settings.lock_lease_seconds)
        self.ttl = timedelta(seconds=settings.upload_ttl_seconds)
        bind_database = getattr(backend, "bind_database", None)
        if bind_database is not None:
            bind_database(sessions)  # S3: its parts ledger lives in the same database
        self.partials = partial_store_of(backend)
        """Set when the backend keeps partial uploads and assembles finals itself (S3);
        otherwise partials stay staged whole and finals are concatenated in staging."""
        self.policy = UploadPolicy.from_settings(settings)
        """Validation rules shared by every upload path (:mod:`app.uploads.validation`)."""
        self.admission: Callable[[NewUpload, int | None], Awaitable[NewUpload]] | None = None
        """Quotas, rate limit and pre-create hook (:mod:`app.ops.admission`); may refuse or
        change the metadata of a creation."""
        self.on_terminated: Callable[[AsyncSession, Upload], None] | None = None
        """Called inside the transaction that terminates an upload (webhook outbox)."""
        """Called after an upload was terminated (the post-terminate webhook)."""

    # ------------------------------------------------------------------ reading

    async def get(self, upload_id: uuid.UUID, owner: str | None = None) -> Upload:
        """A live upload visible to ``owner`` (``None``: any), else 404 or 410."""
        async with self._sessions() as session:
            upload = await session.get(Upload, upload_id)
        return self._visible(upload, owner)

    def _visible(self, upload: Upload | None, owner: str | None) -> Upload:
        # Another owner's upload answers exactly like a missing one: no existence oracle.
        if upload is None or (owner is not None and upload.owner != owner):
            raise NotFound("no such upload")
        if upload.state in (UploadState.TERMINATED, UploadState.EXPIRED) or self._is_past_expiry(
            upload
        ):
            raise Gone("upload was terminated or has expired")
        return upload

    def _is_past_expiry(self, upload: Upload) -> bool:
        lives_on = upload.state == UploadState.ACTIVE or upload.is_partial
        return lives_on and upload.expires_at is not None and upload.expires_at <= utcnow()

    async def get_for_status(self, upload_id: uuid.UUID, owner: str | None = None) -> Upload:
        """An upload for a tus HEAD; finishes one whose bytes are all staged but unfiled.

        That state follows a crash or a failed completion; a client that sees
        ``Upload-Offset == Upload-Length`` stops sending, so the server must finish it.
        """
        upload = await self.get(upload_id, owner)
        if upload.state == UploadState.ACTIVE and self._needs_finishing(upload):
            upload = await self._finish_when_free(upload)
        return upload

    def _needs_finishing(self, upload: Upload) -> bool:
        if upload.is_final:
            return True
        return upload.is_complete

    async def get_file(self, file_id: uuid.UUID, owner: str | None = None) -> File:
        """A completed file visible to ``owner``."""
        async with self._sessions() as session:
            stored = await session.get(File, file_id)
        if stored is None or (owner is not None and stored.owner != owner):
            raise NotFound("no such file")
        return stored

    # ------------------------------------------------------------------ creation

    async def create(self, request: NewUpload, *, with_data: bool = False) -> Upload:
        """Create an upload (tus creation), a partial one, or a final one (concatenation)."""
        partials: list[Upload] = []
        length = request.length
        if request.partial_ids is not None:
            partials = await self._load_partials(request.partial_ids, request.owner)
            lengths = [partial.length for partial in partials]
            length = None if None in lengths else sum(x for x in lengths if x is not None)
        if length is not None and length > self.settings.max_size:
            raise PayloadTooLarge(
                f"Upload-Length {length} exceeds the maximum size {self.settings.max_size}"
            )
        if length is not None:
            self._check_backend_admits(length)
        if self.admission is not None:
            request = await self.admission(request, length)
        upload = Upload(
            id=uuid.uuid4(),
            owner=request.owner,
            state=UploadState.ACTIVE,
            length=length,
            offset=0,
            upload_metadata=dict(request.metadata),
            is_partial=request.is_partial,
            concat_parts=None
            if request.partial_ids is None
            else [str(p) for p in request.partial_ids],
            storage=self.backend.name,
            expires_at=utcnow() + self.ttl,
        )
        if with_data and not upload.is_final and upload.length != 0:
            # creation-with-upload: the row is born locked for the body that follows, which
            # saves a lookup and a lock round trip (``append(..., fresh=upload)``).
            upload.lock_token = secrets.token_hex(16)
            upload.lock_holder = self.locks.node_id
            upload.lock_expires_at = utcnow() + self.locks.lease
        if not upload.is_final and upload.lock_token is None:
            # (A body that follows creates the file when it opens it for writing.)
            await self.staging.create(upload.id)
        async with self._sessions() as session, session.begin():
            session.add(upload)
        if upload.is_final or upload.length == 0:
            upload = await self._finish_when_free(upload)
        return upload

    async def _load_partials(self, ids: list[uuid.UUID], owner: str | None) -> list[Upload]:
        async with self._sessions() as session:
            rows = (await session.scalars(select(Upload).where(Upload.id.in_(set(ids))))).all()
        by_id = {row.id: row for row in rows}
        partials: list[Upload] = []
        for partial_id in ids:
            row = by_id.get(partial_id)
            if row is None or (owner is not None and row.owner != owner):
                # Another owner's partial answers like a missing one: 404, no oracle.
                raise NotFound(f"Upload-Concat names {partial_id}, which does not exist")
            usable = row.is_partial and row.state in LIVE_STATES and not self._is_past_expiry(row)
            if not usable or row is None:
                raise BadRequest(f"Upload-Concat names {partial_id}, which is not a partial upload")
            partials.append(row)
        return partials

    # ------------------------------------------------------------------ appending

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
        except BaseException:
            if token is not None:
                await self.locks.release(upload.id, token)
            raise
        if token is None:
            token = await self._lock_for_append(upload, request.offset)
        try:
            if length != upload.length:
                await self._set_length(upload, length)
            appended = await self._receive_and_commit(upload, token, request, body, room)
        except BaseException:
            await self.locks.release(upload.id, token)
            raise
        upload = appended.upload
        if upload.is_complete and upload.state == UploadState.ACTIVE:
            upload = await self._finish(upload, token, appended)
        elif not appended.lock_released:
            await self.locks.release(upload.id, token)
        return upload

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
        self._check_backend_admits(declared)
        return declared

    def _check_backend_admits(self, length: int) -> None:
        """413 for a length the backend cannot hold (S3: more than max parts x 5 GiB)."""
        check_length = getattr(self.backend, "check_length", None)
        if check_length is not None:
            check_length(length)

    async def _claim_for_append(self, request: AppendRequest) -> tuple[Upload, str | None]:
        """The common case in one statement: lock a free, active upload at this offset.

        Anything else (locked, wrong offset, finished, gone, someone else's) takes the
        slower road that reads the row first and answers with the precise error.
        """
        claimed = await self.locks.acquire_and_load(
            request.upload_id, state=UploadState.ACTIVE, offset=request.offset
        )
        if claimed is None:
            return await self.get(request.upload_id, request.owner), None
        token, upload = claimed
        try:
            self._visible(upload, request.owner)
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
        current = await self.get(upload.id)
        if current.offset != offset:
            raise OffsetMismatch(
                f"Upload-Offset {offset} does not match the current offset {current.offset}"
            )
        raise UploadLocked("another request is writing to this upload; retry shortly")

    async def _set_length(self, upload: Upload, length: int | None) -> None:
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
    ) -> _Appended:
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
            return _Appended(upload, False, uncommitted_from=old_offset, head=received.head)
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
            await self._enforce_content_policy(upload, token, upload.length)
        if received.disconnected:
            raise ClientDisconnected(f"client disconnected; {new_offset} bytes are stored")
        return _Appended(upload, release, head=received.head)

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
        try:
            async with self.locks.kept_alive(upload.id, token) as lease:
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

    # ------------------------------------------------------------------ finishing

    async def _finish_when_free(self, upload: Upload) -> Upload:
        """Take the lock and finish an upload whose bytes are all there (or a final one)."""
        token = await self.locks.acquire(upload.id, state=UploadState.ACTIVE)
        if token is None:
            return upload  # someone else is finishing or writing it
        try:
            refreshed = await self.get(upload.id)
        except BaseException:
            await self.locks.release(upload.id, token)
            raise
        if refreshed.is_final and not await self._assemble_final(refreshed, token):
            await self.locks.release(upload.id, token)
            return refreshed
        if not refreshed.is_final and not refreshed.is_complete:
            await self.locks.release(upload.id, token)
            return refreshed
        return await self._finish(refreshed, token)

    async def _finish(
        self, upload: Upload, token: str, appended: _Appended | None = None
    ) -> Upload:
        """Turn a fully staged upload into a file (or a completed partial); lock held."""
        try:
            # Storing can wait on S3 for the last parts; the lease must outlive that wait.
            async with self.locks.kept_alive(upload.id, token):
                if upload.is_partial:
                    if self.partials is not None:
                        await self._store_partial(upload)
                    await self._mark_partial_complete(upload, token)
                elif upload.is_final and self.partials is not None:
                    await self._file_concatenation(upload, token)
                else:
                    await self._file_upload(upload, token, appended)
        except BaseException:
            if appended is not None and appended.uncommitted_from is not None:
                await self._commit_after_failed_filing(upload, token, appended.uncommitted_from)
            await self.locks.release(upload.id, token)
            raise
        self.hashes.forget(upload.id)
        upload.state = UploadState.COMPLETED
        upload.lock_token = None
        if upload.is_partial:
            await self._assemble_finals_waiting_for(upload.id)
        return upload

    async def _commit_after_failed_filing(self, upload: Upload, token: str, committed: int) -> None:
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

    async def _store_partial(self, upload: Upload) -> None:
        assert self.partials is not None
        try:
            await self.partials.store_partial(
                upload.id, self.staging.path_for(upload.id), upload.length or 0
            )
        except OSError as exc:
            logger.exception("storing partial upload %s failed", upload.id)
            raise ServiceUnavailable("storage is unavailable; retry later") from exc

    async def _mark_partial_complete(self, upload: Upload, token: str) -> None:
        # concatenation: a partial is not processed on its own; its bytes stay (staged, or
        # in the partial store) until a final upload uses them or it expires.
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(Upload)
                .where(Upload.id == upload.id, Upload.lock_token == token)
                .values(
                    state=UploadState.COMPLETED,
                    lock_token=None,
                    lock_holder=None,
                    lock_expires_at=None,
                    expires_at=utcnow() + self.ttl,
                )
                .execution_options(synchronize_session=False)
            )

    async def _file_upload(
        self, upload: Upload, token: str, appended: _Appended | None = None
    ) -> None:
        size = upload.length or 0
        staged_path = self.staging.path_for(upload.id)
        just_staged = appended is not None and appended.uncommitted_from is not None
        if just_staged or await self.staging.size(upload.id) == size:
            if appended is not None and len(appended.head) == min(size, SNIFF_SIZE):
                head = appended.head
            else:
                head = await _read_head(self.staging.read_range(upload.id, 0, SNIFF_SIZE))
            content_type = sniff_content_type(head)
            category = category_for(content_type).value
            await self._enforce_content_policy(upload, token, size, head)
            sha256 = self.hashes.digest_at(upload.id, size)
            # A backend that reclaims staged bytes once they are stored (S3 punches out
            # shipped parts) cannot be hashed from staging: hash the stored object instead.
            reclaims_staging = getattr(self.backend, "reclaims_staging", False)
            if sha256 is None and not reclaims_staging:
                sha256 = await _sha256_of(self.staging.read_range(upload.id, 0, size))
            try:
                stored = await self.backend.store(
                    upload.id, staged_path, size, category, content_type
                )
            except OSError as exc:
                logger.exception("storing upload %s failed", upload.id)
                raise ServiceUnavailable("storage is unavailable; retry later") from exc
            if sha256 is None:
                sha256 = await _sha256_of(self.backend.open_range(stored.key, 0, size))
        else:
            # The bytes were moved into storage before a crash hid that from the database.
            found = await self.backend.find_stored(upload.id, "other")
            if found is None or found.size != size:
                raise ServiceUnavailable(f"upload {upload.id} lost its staged bytes")
            stored = found
            head = await _read_head(self.backend.open_range(stored.key, 0, SNIFF_SIZE))
            content_type = sniff_content_type(head)
            category = category_for(content_type).value
            sha256 = await _sha256_of(self.backend.open_range(stored.key, 0, size))
        await self._record_file(upload, token, stored, sha256, content_type, category)

    async def _record_file(
        self,
        upload: Upload,
        token: str,
        stored: StoredObject,
        sha256: str,
        content_type: str,
        category: str,
    ) -> None:
        name = safe_display_name(
            decode_metadata_value(upload.upload_metadata, "filename", "name"), str(upload.id)
        )
        async with self._sessions() as session, session.begin():
            session.add(
                File(
                    id=upload.id,
                    owner=upload.owner,
                    name=name,
                    size=stored.size,
                    sha256=sha256,
                    content_type=content_type,
                    category=category,
                    storage=self.backend.name,
                    storage_key=stored.key,
                    etag=stored.etag,
                    file_metadata=dict(upload.upload_metadata),
                )
            )
            await session.execute(
                update(Upload)
                .where(Upload.id == upload.id, Upload.lock_token == token)
                .values(
                    state=UploadState.COMPLETED,
                    length=stored.size,
                    offset=stored.size,
                    lock_token=None,
                    lock_holder=None,
                    lock_expires_at=None,
                    expires_at=None,
                )
                .execution_options(synchronize_session=False)
            )
        upload.expires_at = None
        upload.length = upload.offset = stored.size

    # ------------------------------------------------------------------ concatenation

    async def _assemble_final(self, final: Upload, token: str) -> bool:
        """Concatenate a final upload's partials into its staging file; lock held.

        Returns ``False`` while some partial is unfinished (concatenation-unfinished).
        With a partial store the final is assembled in the backend when it is filed.
        """
        if self.partials is not None:
            return await self._finished_partials(final) is not None
        if final.is_complete and final.offset > 0:
            return True  # assembled before a crash stopped it from being filed
        # (Only assembly sets a final's offset, so an empty final still gets its empty file.)
        partials = await self._finished_partials(final)
        if partials is None:
            return False
        paths = [self.staging.path_for(p.id) for p in partials]
        target = self.staging.path_for(final.id)
        running = hashlib.sha256()
        size = await anyio.to_thread.run_sync(_concatenate_files, paths, target, running)
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(Upload)
                .where(Upload.id == final.id, Upload.lock_token == token)
                .values(length=size, offset=size)
                .execution_options(synchronize_session=False)
            )
        final.length = size
        final.offset = size
        self.hashes.record(final.id, size, running)
        return True

    async def _finished_partials(self, final: Upload) -> list[Upload] | None:
        """A final upload's partials in order, or ``None`` while one is unfinished."""
        part_ids = [uuid.UUID(p) for p in final.concat_parts or []]
        async with self._sessions() as session:
            rows = (await session.scalars(select(Upload).where(Upload.id.in_(set(part_ids))))).all()
        by_id = {row.id: row for row in rows}
        partials = [by_id.get(p) for p in part_ids]
        if any(p is None or p.state != UploadState.COMPLETED for p in partials):
            return None
        return [p for p in partials if p is not None]

    async def _file_concatenation(self, final: Upload, token: str) -> None:
        """Assemble a final upload in the partial store, verify it, record the file.

        The head is read from the partial objects for sniffing and the content policy; the
        SHA-256 is computed by reading the assembled object back, which also proves S3
        holds every byte (invariant 4). Lock held and kept alive by the caller.
        """
        assert self.partials is not None
        partials = await self._finished_partials(final)
        if partials is None:
            raise ServiceUnavailable(f"a partial upload of {final.id} went away; retry later")
        sources = [self.partials.partial_object(p.id, p.length or 0) for p in partials]
        size = sum(source.size for source in sources)
        head = await _read_head(self._read_across(sources, SNIFF_SIZE))
        content_type = sniff_content_type(head)
        category = category_for(content_type).value
        await self._enforce_content_policy(final, token, size, head)
        try:
            stored = await self.partials.concatenate(
                final.id, sources, self.staging.path_for(final.id), category, content_type
            )
        except OSError as exc:
            logger.exception("assembling final upload %s failed", final.id)
            raise ServiceUnavailable("storage is unavailable; retry later") from exc
        digest, read = "", stored.size
        if stored.size == size:
            digest, read = await _sha256_and_size(self.backend.open_range(stored.key, 0, size))
        if read != size:  # S3 assembled something else: never record it as the file
            raise ServiceUnavailable(
                f"final upload {final.id}: the store holds {read} of {size} bytes; retry later"
            )
        await self._record_file(final, token, stored, digest, content_type, category)

    async def _read_across(self, sources: list[StoredObject], length: int) -> AsyncIterator[bytes]:
        """The first ``length`` bytes of ``sources`` read end to end."""
        for source in sources:
            if length <= 0:
                return
            take = min(length, source.size)
            async for block in self.backend.open_range(source.key, 0, take):
                yield block
            length -= take

    async def _assemble_finals_waiting_for(self, partial_id: uuid.UUID) -> None:
        async with self._sessions() as session:
            finals = (
                await session.scalars(
                    select(Upload).where(
                        Upload.state == UploadState.ACTIVE, Upload.concat_parts.is_not(None)
                    )
                )
            ).all()
        for final in finals:
            if str(partial_id) in (final.concat_parts or []):
                try:
                    await self._finish_when_free(final)
                except Exception:
                    logger.exception("could not finish final upload %s", final.id)

    async def _enforce_content_policy(
        self, upload: Upload, token: str, size: int | None, head: bytes | None = None
    ) -> None:
        """Validation by magic bytes; a refused upload is retired so nothing stays behind."""
        if not self.policy.checks_content:
            return
        if head is None:
            head = await _read_head(self.staging.read_range(upload.id, 0, SNIFF_SIZE))
        content_type = sniff_content_type(head)
        try:
            self.policy.check_content(content_type, category_for(content_type).value, size)
        except FerryError:
            await self._retire(upload, token, UploadState.TERMINATED)
            raise

    # ------------------------------------------------------------------ simple uploads

    async def create_and_fill(
        self,
        request: NewUpload,
        body: AsyncIterator[bytes],
        checksum: ChecksumSpec | None = None,
    ) -> File:
        """A simple (non-tus) upload in one go: create, stream ``body`` in, finish a file.

        ``request.length`` may be ``None`` (a chunked body or a multipart part): the length
        is then fixed to what arrived. Any failure (a refused type, a checksum mismatch, a
        client that went away) terminates the upload, so a failed simple upload leaves no
        staging file, no stored object and no live row.
        """
        upload = await self.create(request)
        try:
            if upload.state == UploadState.ACTIVE and upload.length != 0:
                upload = await self.append(
                    AppendRequest(
                        upload_id=upload.id,
                        offset=0,
                        owner=request.owner,
                        content_length=request.length,
                        checksum=checksum,
                    ),
                    body,
                )
            if upload.state == UploadState.ACTIVE and upload.length is None:
                await self._set_length(upload, upload.offset)
                upload = await self._finish_when_free(upload)
            return await self.get_file(upload.id, request.owner)
        except BaseException:
            # FerryError here: already retired (refused by validation), nothing to free.
            with anyio.CancelScope(shield=True), contextlib.suppress(FerryError):
                await self.terminate(upload.id)
            raise

    # ------------------------------------------------------------------ termination

    async def terminate(self, upload_id: uuid.UUID, owner: str | None = None) -> None:
        """termination: free everything the upload holds; later requests get 410."""
        upload = await self.get(upload_id, owner)
        token = await self.locks.acquire(upload.id)
        if token is None:
            raise UploadLocked("the upload is being written; stop that request first")
        await self._retire(upload, token, UploadState.TERMINATED, self.on_terminated)

    async def _retire(
        self,
        upload: Upload,
        token: str,
        state: UploadState,
        in_transaction: Callable[[AsyncSession, Upload], None] | None = None,
    ) -> None:
        # The row leaves the live states first, so no request can use the bytes while
        # they are removed; a crash in between leaves only files the reconciler deletes.
        async with self._sessions() as session, session.begin():
            stored = await session.get(File, upload.id)
            retired: Any = await session.execute(
                update(Upload)
                .where(Upload.id == upload.id, Upload.lock_token == token)
                .values(
                    state=state,
                    lock_token=None,
                    lock_holder=None,
                    lock_expires_at=None,
                    updated_at=utcnow(),
                )
                .execution_options(synchronize_session=False)
            )
            if stored is not None:
                await session.execute(delete(File).where(File.id == upload.id))
            if in_transaction is not None and retired.rowcount == 1:
                in_transaction(session, upload)
        self.hashes.forget(upload.id)
        await self.staging.remove(upload.id)
        await self.backend.discard_upload(upload.id)
        if upload.is_partial and self.partials is not None:
            await self.partials.discard_partial(upload.id)
        if stored is not None:
            await self.backend.delete(stored.storage_key)

    # ------------------------------------------------------------------ expiry

    async def expire_due(self, limit: int = 500) -> int:
        """expiration: retire unfinished uploads (and unused partials) past their expiry."""
        now = utcnow()
        async with self._sessions() as session:
            due = (
                await session.scalars(
                    select(Upload)
                    .where(
                        Upload.expires_at <= now,
                        or_(
                            Upload.state == UploadState.ACTIVE,
                            (Upload.state == UploadState.COMPLETED) & Upload.is_partial,
                        ),
                    )
                    .limit(limit)
                )
            ).all()
        expired = 0
        for upload in due:
            token = await self.locks.acquire(upload.id, state=upload.state)
            if token is None:
                continue  # being written right now: its lease renewal keeps it alive
            await self._retire(upload, token, UploadState.EXPIRED)
            expired += 1
        if expired < limit:
            await self._abort_backend_orphans()
        return expired

    async def _abort_backend_orphans(self) -> None:
        """Invariant 5 for S3: abort multipart uploads that no live upload owns, and delete
        partial objects whose partial upload is gone."""
        abort_orphans = getattr(self.backend, "abort_orphaned_uploads", None)
        if abort_orphans is None:
            return
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(Upload.id, Upload.state, Upload.is_partial).where(
                        or_(
                            Upload.state == UploadState.ACTIVE,
                            (Upload.state == UploadState.COMPLETED) & Upload.is_partial,
                        )
                    )
                )
            ).all()
        live = {row.id for row in rows if row.state == UploadState.ACTIVE}
        live_partials = {row.id for row in rows if row.is_partial}
        try:
            await abort_orphans(live)
            delete_partials = getattr(self.backend, "delete_orphaned_partials", None)
            if delete_partials is not None:
                await delete_partials(live_partials)
        except Exception:
            logger.exception("aborting orphaned multipart uploads failed; retrying next pass")

    # ------------------------------------------------------------------ start-up

    async def reconcile(self) -> dict[str, int]:
        """Invariant 2 at start-up: staging files, offsets and leases agree again."""
        report = {"released_locks": await self.locks.release_stale_of_this_node()}
        truncated = rewound = orphans = finished = adopted = 0
        async with self._sessions() as session:
            live = (
                await session.scalars(
                    select(Upload).where(
                        or_(
                            Upload.state == UploadState.ACTIVE,
                            (Upload.state == UploadState.COMPLETED) & Upload.is_partial,
                        )
                    )
                )
            ).all()
        staged_ids = set(await anyio.to_thread.run_sync(self.staging.list_ids))
        for upload in live:
            staged_ids.discard(upload.id)
            if upload.is_final:
                continue
            if upload.state == UploadState.COMPLETED and self.partials is not None:
                # A completed partial lives in the partial store, not in staging; one
                # staged whole by a version that concatenated locally is stored now.
                if await self.staging.size(upload.id) == upload.length:
                    try:
                        await self._store_partial(upload)
                    except Exception:
                        logger.exception("could not store partial %s at start-up", upload.id)
                continue
            size = await self.staging.size(upload.id)
            if size is None:
                if upload.is_complete and upload.state == UploadState.ACTIVE:
                    continue  # possibly stored already; finishing below sorts it out
                if await self._adopt_stored_bytes(upload):
                    adopted += 1
                    continue
                await self.staging.create(upload.id)
                size = 0
            if size > upload.offset:
                await self.staging.truncate(upload.id, upload.offset)
                truncated += 1
            elif size < upload.offset:
                logger.error(
                    "upload %s: staging holds %d bytes but %d were committed; rewinding",
                    upload.id,
                    size,
                    upload.offset,
                )
                await self._rewind(upload, size)
                rewound += 1
        for orphan in staged_ids:
            await self.staging.remove(orphan)
            orphans += 1
        for upload in live:
            if upload.state == UploadState.ACTIVE and self._needs_finishing(upload):
                try:
                    result = await self._finish_when_free(upload)
                except Exception:
                    logger.exception("could not finish upload %s at start-up", upload.id)
                    continue
                finished += result.state == UploadState.COMPLETED
        report.update(
            truncated=truncated,
            rewound=rewound,
            orphans=orphans,
            adopted=adopted,
            finished=finished,
        )
        return report

    async def _adopt_stored_bytes(self, upload: Upload) -> bool:
        """A completion that crashed between storing its bytes and committing its row.

        The whole upload is in storage (the staging file was moved there), so its offset
        moves to the end and the finishing pass files it. The bytes were never acknowledged;
        keeping them only saves the client a resend.
        """
        if upload.state != UploadState.ACTIVE or upload.length is None:
            return False
        found = await self.backend.find_stored(upload.id, "other")
        if found is None or found.size != upload.length:
            return False
        await self._rewind(upload, upload.length)
        return True

    async def _rewind(self, upload: Upload, size: int) -> None:
        """Set the committed offset to what storage really holds (start-up only)."""
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(Upload)
                .where(Upload.id == upload.id)
                .values(offset=size)
                .execution_options(synchronize_session=False)
            )
        upload.offset = size


def _concatenate_files(sources: list[Any], target: Any, running: _Hash) -> int:
    """Copy ``sources`` end to end into ``target``, hashing on the way (worker thread)."""
    total = 0
    with open(target, "wb") as out:
        for source in sources:
            with open(source, "rb") as handle:
                while block := handle.read(1024 * 1024):
                    running.update(block)
                    out.write(block)
                    total += len(block)
        out.flush()
        os.fsync(out.fileno())
    return total


async def _read_head(stream: AsyncIterator[bytes]) -> bytes:
    head = bytearray()
    async for block in stream:
        head += block
        if len(head) >= SNIFF_SIZE:
            break
    return bytes(head[:SNIFF_SIZE])


async def _sha256_of(stream: AsyncIterator[bytes]) -> str:
    return (await _sha256_and_size(stream))[0]


async def _sha256_and_size(stream: AsyncIterator[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    async for block in stream:
        await anyio.to_thread.run_sync(digest.update, block)
        size += len(block)
    return digest.hexdigest(), size


def expiry_header_value(upload: Upload) -> datetime | None:
    """When an unfinished upload expires (``None`` once it is a file)."""
    if upload.state == UploadState.ACTIVE or upload.is_partial:
        return upload.expires_at
    return None
