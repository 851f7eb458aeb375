"""The upload service: owns upload state, the one-writer lock and the path to a file.

Every change of an upload goes through here. The tus controller turns headers into the
typed requests below and this service decides; it never sees HTTP. Bytes are staged by
:class:`~app.storage.staging.StagingArea` and handed to a storage backend on completion.

The service keeps the state machine (create, append, finish, terminate) and delegates
each other concern to a collaborator it owns:

* :mod:`app.uploads.appending`: the write path of one body and its offset commit;
* :mod:`app.uploads.filing`: storing, hashing and recording a finished upload as a file;
* :mod:`app.uploads.concatenation`: partial uploads and the assembly of final ones;
* :mod:`app.uploads.maintenance`: expiry, orphan sweeps and start-up reconciliation.

The order of effects is what keeps the invariants:

* a new offset is committed only after the staged bytes are fdatasync'ed (invariant 1);
* the offset commit is a compare-and-set on the lock token and the old offset, so nothing
  is ever acknowledged twice or interleaved (invariants 2 and 3);
* a file row exists only once the bytes are stored and hashed (invariant 4).
"""

from __future__ import annotations

import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.checksums import ChecksumSpec
from app.core.clock import utcnow
from app.db.models import File, Upload, UploadState
from app.errors import FerryError, Gone, NotFound, PayloadTooLarge, UploadLocked
from app.storage.backend import StorageBackend, partial_store_of
from app.storage.staging import StagingArea
from app.uploads.appending import Appended, UploadAppender
from app.uploads.concatenation import Concatenator
from app.uploads.filing import UploadFiler
from app.uploads.hashing import RunningHashes
from app.uploads.locking import UploadLocks
from app.uploads.maintenance import UploadMaintenance
from app.uploads.validation import UploadPolicy

if TYPE_CHECKING:
    from app.settings import Settings


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
    checksum_trailer: Callable[[], ChecksumSpec | None] | None = None
    """checksum-trailer: reads the ``Upload-Checksum`` trailer once the body has ended."""
    declared_length: int | None = None
    """``Upload-Length`` sent with the PATCH, to fix a deferred length."""


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
        self._filer = UploadFiler(self)
        self._appender = UploadAppender(self, self._filer)
        self._concatenator = Concatenator(self, self._filer)
        self._maintenance = UploadMaintenance(self, self._concatenator)

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
            partials = await self._concatenator.load_partials(request.partial_ids, request.owner)
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
            if self._born_with_its_body(upload):
                return upload
        if not upload.is_final and upload.lock_token is None:
            # (A body that follows creates the file when it opens it for writing.)
            await self.staging.create(upload.id)
        async with self._sessions() as session, session.begin():
            session.add(upload)
        if upload.is_final or upload.length == 0:
            upload = await self._finish_when_free(upload)
        return upload

    def _born_with_its_body(self, upload: Upload) -> bool:
        """Whether a creation-with-upload inserts its row only once its body has ended.

        Nobody knows the id before the response, so no other request can touch the upload
        meanwhile: the row is inserted with the body's outcome (its durable offset, or the
        completed upload together with its file row), one transaction instead of two for a
        small file. Not for S3 (parts ship from committed offsets), concatenation or a
        deferred length. Until the row exists, the staging file is the only trace; start-up
        reconciliation removes it (and any stored copy) if a crash comes first.
        """
        return (
            upload.length is not None
            and not upload.is_partial
            and not getattr(self.backend, "reclaims_staging", False)
        )

    def _check_backend_admits(self, length: int) -> None:
        """413 for a length the backend cannot hold (S3: more than max parts x 5 GiB)."""
        check_length = getattr(self.backend, "check_length", None)
        if check_length is not None:
            check_length(length)

    # ------------------------------------------------------------------ appending

    async def append(
        self, request: AppendRequest, body: AsyncIterator[bytes], *, fresh: Upload | None = None
    ) -> Upload:
        """Write one body at the upload's offset and commit the new, durable offset.

        Raises :class:`ClientDisconnected` after committing what arrived when the client
        went away (nothing is committed if a checksum was promised and cannot be checked).
        The write path is :class:`~app.uploads.appending.UploadAppender`'s.
        """
        return await self._appender.append(request, body, fresh=fresh)

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
        if refreshed.is_final and not await self._concatenator.assemble_final(refreshed, token):
            await self.locks.release(upload.id, token)
            return refreshed
        if not refreshed.is_final and not refreshed.is_complete:
            await self.locks.release(upload.id, token)
            return refreshed
        return await self._finish(refreshed, token)

    async def _finish(self, upload: Upload, token: str, appended: Appended | None = None) -> Upload:
        """Turn a fully staged upload into a file (or a completed partial); lock held."""
        try:
            # Storing can wait on S3 for the last parts; the lease must outlive that wait.
            async with self.locks.kept_alive(upload.id, token):
                if upload.is_partial:
                    if self.partials is not None:
                        await self._concatenator.store_partial(upload)
                    await self._concatenator.mark_partial_complete(upload, token)
                elif upload.is_final and self.partials is not None:
                    await self._concatenator.file_concatenation(upload, token)
                else:
                    await self._filer.file_upload(upload, token, appended)
        except BaseException:
            if appended is not None and appended.uncommitted_from is not None:
                await self._appender.commit_after_failed_filing(
                    upload, token, appended.uncommitted_from
                )
            await self.locks.release(upload.id, token)
            raise
        self.hashes.forget(upload.id)
        upload.state = UploadState.COMPLETED
        upload.lock_token = None
        if upload.is_partial:
            await self._concatenator.assemble_finals_waiting_for(upload.id)
        return upload

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
        # Created as a creation-with-upload: with a known length, the upload and its file
        # are then written in one transaction.
        upload = await self.create(request, with_data=True)
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
                    fresh=upload,
                )
            if upload.state == UploadState.ACTIVE and upload.length is None:
                await self._appender.set_length(upload, upload.offset)
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
        upload.state = state
        self.hashes.forget(upload.id)
        await self.staging.remove(upload.id)
        await self.backend.discard_upload(upload.id)
        if upload.is_partial and self.partials is not None:
            await self.partials.discard_partial(upload.id)
        if stored is not None:
            await self.backend.delete(stored.storage_key)

    # ------------------------------------------------------------------ expiry and start-up

    async def expire_due(self, limit: int = 500) -> int:
        """expiration: retire unfinished uploads (and unused partials) past their expiry."""
        return await self._maintenance.expire_due(limit)

    async def reconcile(self) -> dict[str, int]:
        """Invariant 2 at start-up: staging files, offsets and leases agree again."""
        return await self._maintenance.reconcile()


def expiry_header_value(upload: Upload) -> datetime | None:
    """When an unfinished upload expires (``None`` once it is a file)."""
    if upload.state == UploadState.ACTIVE or upload.is_partial:
        return upload.expires_at
    return None
