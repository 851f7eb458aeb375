"""The upload service: the tus state machine, from a request to stored bytes.

Every change of an upload starts here. The HTTP layer turns headers into the typed
requests below and this service decides; it never sees HTTP. One PATCH reads top to
bottom in :meth:`UploadService.append`: **claim** the upload under the one-writer lease,
**stream** the body into staging (:class:`~app.uploads.receiving.BodyReceiver`),
**commit** the durable offset (:class:`~app.db.uploads.UploadRepository`), **finish** a
complete upload (:class:`~app.uploads.finishing.UploadFinisher`). Each step returns a
value to this orchestrator and never calls back into it.

The order of effects is what keeps the invariants:

* a new offset is committed only after the staged bytes are fdatasync'ed (invariant 1);
* the offset commit is a compare-and-set on the lease and the old offset, so nothing is
  ever acknowledged twice or interleaved (invariants 2 and 3);
* a file row exists only once the bytes are stored and hashed (invariant 4).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

import anyio

from app.core.checksums import ChecksumSpec, ChunkDigest, ChunkVerifier
from app.core.received_crc import ReceivedCrc32c
from app.core.sha256 import ResumableSha256
from app.db.models import File, Upload, UploadState
from app.db.uploads import Claim, Reservation, UploadRepository
from app.errors import (
    BadRequest,
    ClientDisconnected,
    FerryError,
    Forbidden,
    InsufficientStorage,
    NotFound,
    OffsetMismatch,
    PayloadTooLarge,
    UploadLocked,
)
from app.storage.backend import StagedByteShipping, Storage
from app.storage.sniff import SNIFF_SIZE
from app.storage.staging import StagingArea
from app.uploads.concatenation import Concatenator
from app.uploads.filing import Content, UploadFiler
from app.uploads.finishing import UploadFinisher
from app.uploads.maintenance import UploadMaintenance
from app.uploads.quota import ByteQuota, NoByteQuota
from app.uploads.receiving import BodyReceiver, Received
from app.uploads.retiring import UploadRetirer
from app.uploads.validation import ContentGate, UploadPolicy
from app.uploads.visibility import visible

if TYPE_CHECKING:
    from app.settings import Settings

logger = logging.getLogger(__name__)

SHIPPED_AHEAD_FROM = 4 * 1024 * 1024
"""Bodies at least this large (or of unknown size) have storage that holds acknowledged
bytes (S3) send whole parts while they stream; a smaller one completes at most a part
that its last buffers finish, which is sent when it ends anyway."""


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
    """checksum-trailer: parses the ``Upload-Checksum`` trailer once the body has ended."""
    declared_length: int | None = None
    """``Upload-Length`` sent with the PATCH, to fix a deferred length."""


@dataclass(frozen=True, slots=True)
class Created:
    """A new upload, and the lease for its body when one follows (creation-with-upload)."""

    upload: Upload
    body_claim: Claim | None = None


@dataclass(frozen=True, slots=True)
class _Bounds:
    """The upload's length after this request and the bytes it may still take."""

    length: int | None
    room: int
    by_quota: bool = False
    """The room is what the owner's quota leaves (a body of unknown length)."""


class Admission(Protocol):
    """Rate limit, pre-create hook and quotas: may refuse a creation or change its metadata."""

    async def admit(self, request: NewUpload, length: int | None) -> NewUpload:
        """Before the upload exists: refuse (raise) or return the request to create."""
        ...

    def reservation(self, request: NewUpload, length: int | None) -> Reservation | None:
        """What to check in the transaction that inserts the upload (quotas)."""
        ...


class UploadService:
    """Creates uploads, appends bytes under a lease, finishes, terminates and expires them."""

    def __init__(
        self,
        *,
        repository: UploadRepository,
        storage: Storage,
        staging: StagingArea,
        settings: Settings,
        admission: Admission | None = None,
        quota: ByteQuota | None = None,
    ) -> None:
        self._repository = repository
        self._storage = storage
        self._staging = staging
        self._max_size = settings.max_size
        self._admission = admission
        self._quota: ByteQuota = quota or NoByteQuota()
        self.policy = UploadPolicy.from_settings(settings)
        """Validation rules shared by every upload path (:mod:`app.uploads.validation`)."""
        self._retirer = UploadRetirer(repository, storage, staging)
        self._gate = ContentGate(self.policy, self._retirer)
        self._receiver = BodyReceiver(repository, staging)
        self._concatenator = Concatenator(
            repository, storage, staging, max_parts=settings.max_concat_parts
        )
        self._filer = UploadFiler(storage, staging)
        self._finisher = UploadFinisher(
            repository,
            storage,
            staging,
            self._filer,
            self._concatenator,
            self._gate,
            self._quota,
        )
        self._maintenance = UploadMaintenance(
            repository, storage, staging, self._retirer, self._finisher, self._concatenator
        )

    # ------------------------------------------------------------------ reading

    async def get(self, upload_id: uuid.UUID, owner: str | None = None) -> Upload:
        """A live upload visible to ``owner`` (``None``: any), else 404 or 410."""
        return visible(await self._repository.find(upload_id), owner)

    async def get_for_status(self, upload_id: uuid.UUID, owner: str | None = None) -> Upload:
        """An upload for a tus HEAD; finishes one whose bytes are all staged but unfiled.

        That state follows a crash or a failed completion; a client that sees
        ``Upload-Offset == Upload-Length`` stops sending, so the server must finish it.
        """
        upload = await self.get(upload_id, owner)
        if upload.state == UploadState.ACTIVE and (upload.is_final or upload.is_complete):
            upload = await self._finisher.finish_when_free(upload)
        return upload

    async def get_file(self, file_id: uuid.UUID, owner: str | None = None) -> File:
        """A completed file visible to ``owner``."""
        stored = await self._repository.find_file(file_id)
        if stored is None or (owner is not None and stored.owner != owner):
            raise NotFound("no such file")
        return stored

    # ------------------------------------------------------------------ creation

    async def create(self, request: NewUpload, *, with_data: bool = False) -> Created:
        """Create an upload (tus creation), a partial one, or a final one (concatenation).

        ``with_data``: a body follows at once (creation-with-upload); the upload comes back
        claimed for it, and its row may wait for the body's outcome (see
        :meth:`_inserts_with_its_body`).
        """
        length = request.length
        if request.partial_ids is not None:
            partials = await self._concatenator.load_partials(request.partial_ids, request.owner)
            lengths = [partial.length for partial in partials]
            length = None if None in lengths else sum(x for x in lengths if x is not None)
        if length is not None:
            self._check_length_admitted(length)
        reserve = None
        if self._admission is not None:
            request = await self._admission.admit(request, length)
            reserve = self._admission.reservation(request, length)
        upload = self._repository.new_upload(
            owner=request.owner,
            length=length,
            metadata=request.metadata,
            is_partial=request.is_partial,
            concat_parts=None
            if request.partial_ids is None
            else [str(p) for p in request.partial_ids],
            storage=self._storage.backend.name,
        )
        body_follows = with_data and not upload.is_final and upload.length != 0
        if body_follows and reserve is None and self._inserts_with_its_body(upload):
            # (With a quota, the row must exist at once: others count it.)
            return Created(upload, self._repository.claim_unsaved(upload))
        if upload.length == 0 and not upload.is_final:
            # An empty upload is finished at once, from an empty staging file. Any other is
            # given one by the first body that opens it for writing: a POST then costs no
            # trip to a worker thread.
            await self._staging.create(upload.id)
        claim = await self._repository.create(upload, claimed=body_follows, reserve=reserve)
        if upload.is_final or upload.length == 0:
            upload = await self._finisher.finish_when_free(upload)
        return Created(upload, claim)

    def _inserts_with_its_body(self, upload: Upload) -> bool:
        """Whether a creation-with-upload inserts its row only once its body has ended.

        Nobody knows the id before the response, so no other request can touch the upload
        meanwhile: the row is inserted with the body's outcome (its durable offset, or the
        completed upload together with its file row), one transaction instead of two for a
        small file. Not for concatenation or a deferred length, nor, on storage that ships
        committed offsets (S3), for an upload of more than one object: its parts are recorded
        as they go, under a lease other nodes must see. A first body that stops short of a
        one-object upload records its segment, then inserts the row with its offset (a crash
        in between leaves a segment the orphan sweep deletes). Until the row exists, the
        staging file is the only trace; start-up reconciliation removes it (and any stored
        copy) if a crash comes first.
        """
        if upload.length is None or upload.is_partial:
            return False
        shipping = self._storage.shipping
        return shipping is None or shipping.is_one_object(upload.length)

    def _check_length_admitted(self, length: int) -> None:
        """413 above ``FERRY_MAX_SIZE`` or what the storage can hold."""
        if length > self._max_size:
            raise PayloadTooLarge(
                f"Upload-Length {length} exceeds the maximum size {self._max_size}"
            )
        if self._storage.shipping is not None:
            self._storage.shipping.check_length(length)

    # ------------------------------------------------------------------ appending

    async def append(
        self, request: AppendRequest, body: AsyncIterator[bytes], *, fresh: Claim | None = None
    ) -> Upload:
        """Write one body at the upload's offset and commit the new, durable offset.

        Claim, stream, commit, finish. Raises :class:`ClientDisconnected` after committing
        what arrived when the client went away (nothing is committed if a checksum was
        promised and cannot be checked). ``fresh``: the claim of a creation-with-upload.
        """
        claim, upload = (fresh, fresh.upload) if fresh else await self._claim_for_append(request)
        try:
            bounds = self._bounds(upload, request)
            if upload.state == UploadState.COMPLETED or (
                bounds.room == 0 and bounds.length == upload.length
            ):
                # Nothing to write or record. A deferred length declared equal to the offset
                # (an empty final PATCH) must go on, to record the length and finish.
                if claim is not None:
                    await self._repository.release(claim)
                return upload
            if claim is None:
                claim = await self._claim_at_offset(upload, request.offset)
            bounds = await self._within_quota(upload, request, bounds)
        except BaseException as failure:
            if claim is not None:
                await self._give_up(claim, failure)
            raise
        try:
            if bounds.length is not None and bounds.length != upload.length:
                # A deferred length becomes known: the bytes it adds are counted now.
                growth = self._quota.growth(upload.owner, bounds.length - upload.offset)
                await self._repository.set_length(upload, bounds.length, reserve=growth)
            return await self._stream_commit_finish(claim, request, body, bounds)
        except BaseException as failure:
            await self._give_up(claim, failure)
            raise

    async def _stream_commit_finish(
        self, claim: Claim, request: AppendRequest, body: AsyncIterator[bytes], bounds: _Bounds
    ) -> Upload:
        """The body streamed, verified, committed and, when it completes the upload, filed.

        The lease is released with the commit unless finishing or validation follows. A
        body that completes a local upload leaves its offset to the filing transaction.
        """
        upload = claim.upload
        shipping = self._shipping_for(upload)
        staged_path = self._staging.path_for(upload.id)
        fence = self._repository.fence(claim)
        if shipping is not None and upload.offset > 0:
            # Another process may have acknowledged the bytes this one appends to.
            async with self._repository.kept_alive(claim):
                await shipping.restore_staged(upload.id, staged_path, upload.offset, fence)
        running = ResumableSha256.resume(upload.sha256_state, upload.offset)
        verifier = ChunkVerifier(request.checksum, request.checksum_trailer)
        digests: list[ChunkDigest] = [*verifier.digests, *([running] if running else [])]
        as_received = ReceivedCrc32c(upload.offset) if shipping is not None else None
        if as_received is not None:
            digests.append(as_received)
        received = await self._received(
            claim, request, body, bounds, digests, shipping, as_received
        )
        await self._refuse_unverified(claim, received, verifier, bounds)
        old_offset, new_offset = upload.offset, received.durable_end
        completes = upload.length is not None and new_offset == upload.length
        if completes and not received.disconnected and self._files_with_offset(upload, old_offset):
            return await self._file_with_offset(claim, received, running, as_received)
        recording = None
        if shipping is not None and (new_offset > old_offset or completes):
            # Acknowledged means in S3: the bytes are held there before the commit, and
            # recorded only while this request still holds the lease.
            async with self._repository.kept_alive(claim):
                recording = await shipping.ship_acknowledged(
                    upload.id,
                    staged_path,
                    old_offset,
                    new_offset,
                    upload.length,
                    partial=upload.is_partial,
                    fence=fence,
                    ahead=received.ahead,
                    received=as_received,
                )
        content = None
        if old_offset < SNIFF_SIZE <= new_offset:
            # The first bytes are all here: what they are is recorded with the offset, so
            # no process needs them again (S3 staging may not hold them later).
            content = Content.of(await self._filer.head_of_staged(upload))
        checks_content = content is not None and not completes
        release = not completes and not checks_content
        await self._commit(
            claim,
            new_offset,
            release=release,
            sha256_state=None if running is None else running.state(),
            content_type=None if content is None else content.content_type,
            recording=recording,
        )
        if checks_content and content is not None:
            # Validation as early as the magic bytes allow: a refused 50 GB upload stops
            # after its first chunk instead of at completion.
            await self._gate.admit(claim, content, upload.length)
        if received.disk_full:
            # tus core: store as much of a cut-off body as possible, like a disconnect; the
            # client finds the offset with a HEAD and resumes from it once there is room.
            raise InsufficientStorage(
                f"the server's disk is full; {new_offset} bytes of the upload are stored; "
                "resume from there later"
            )
        if received.disconnected:
            raise ClientDisconnected(f"client disconnected; {new_offset} bytes are stored")
        if completes:
            return await self._finisher.finish(claim, head=received.head)
        if not release:
            await self._repository.release(claim)
        return upload

    async def _received(
        self,
        claim: Claim,
        request: AppendRequest,
        body: AsyncIterator[bytes],
        bounds: _Bounds,
        digests: list[ChunkDigest],
        shipping: StagedByteShipping | None,
        as_received: ReceivedCrc32c | None,
    ) -> Received:
        """The body staged; with S3, whole parts of a large one are sent as it streams."""
        upload = claim.upload
        ahead = None
        large = request.content_length is None or request.content_length >= SHIPPED_AHEAD_FROM
        if (
            shipping is not None
            and large
            and not (upload.length is not None and shipping.is_one_object(upload.length))
        ):
            ahead = shipping.ship_ahead(
                upload.id,
                self._staging.path_for(upload.id),
                upload.offset,
                upload.length,
                partial=upload.is_partial,
                fence=self._repository.fence(claim),
                received=as_received,
            )
        try:
            received = await self._receiver.receive(claim, body, bounds.room, digests, ahead)
        finally:
            if ahead is not None:
                await ahead.settle()
        received.ahead = ahead
        return received

    async def _file_with_offset(
        self,
        claim: Claim,
        received: Received,
        running: ResumableSha256 | None,
        shipped: ReceivedCrc32c | None,
    ) -> Upload:
        """File the upload this body completed, its offset committed with the file row.

        Local storage: a crash in between leaves stored bytes that start-up reconciliation
        adopts (or discards); a failed filing commits the durable offset. S3 (``shipped``:
        the CRCs of a body that carried the whole upload, as it arrived): nothing was
        acknowledged before, so a failed filing commits nothing new and the client sends
        the body again.
        """
        upload = claim.upload
        old_offset = upload.offset
        upload.offset = received.durable_end
        upload.sha256_state = None if running is None else running.state()
        return await self._finisher.finish(
            claim,
            head=received.head,
            uncommitted_from=None if shipped is not None else old_offset,
            carried_whole=shipped,
        )

    async def _commit(
        self,
        claim: Claim,
        new_offset: int,
        *,
        release: bool,
        sha256_state: bytes | None,
        content_type: str | None,
        recording: Reservation | None = None,
    ) -> None:
        """Commit the durable offset; bytes of an upload whose length is not known are
        counted against its owner's quota in the same transaction (413: none are kept), and
        storage's ``recording`` of them is written there too."""
        upload = claim.upload
        old_offset = upload.offset
        growth = None
        if upload.length is None:
            growth = self._quota.growth(upload.owner, new_offset - old_offset)
        try:
            committed = await self._repository.commit_offset(
                claim,
                new_offset,
                release=release,
                sha256_state=sha256_state,
                content_type=content_type,
                reserve=growth,
                recording=recording,
            )
        except PayloadTooLarge:
            # Others took the room while this body streamed: none of it is acknowledged.
            await self._staging.truncate(claim.upload_id, old_offset)
            raise
        if not committed:
            raise UploadLocked("the upload's lock was lost before the offset could be committed")

    async def _within_quota(
        self, upload: Upload, request: AppendRequest, bounds: _Bounds
    ) -> _Bounds:
        """Bound a body of unknown length by what its owner's quota leaves now; 413 when its
        announced size does not fit. (A known length was counted when it was fixed.)"""
        if bounds.length is not None:
            return bounds
        room = await self._quota.room(upload.owner)
        if room is None or room >= bounds.room:
            return bounds
        if request.content_length is not None and request.content_length > room:
            raise _over_quota(upload.owner, room)
        return _Bounds(None, room, by_quota=True)

    async def _refuse_unverified(
        self, claim: Claim, received: Received, verifier: ChunkVerifier, bounds: _Bounds
    ) -> None:
        """Raise (after cutting staging back) when the body must not be acknowledged."""
        if received.lease_lost:
            # Someone else holds the upload now; leave the file to them.
            raise UploadLocked("the upload's lock expired while this request was writing")
        reason: FerryError | None = None
        if received.too_large and bounds.by_quota:
            reason = _over_quota(claim.upload.owner, bounds.room)
        elif received.too_large:
            reason = PayloadTooLarge("the body goes past the upload's end")
        elif received.disk_full and (
            verifier.active or received.durable_end == claim.upload.offset
        ):
            # A checksum cannot be checked on part of its chunk; and with nothing new synced,
            # the running hash (fed with what was written) must not be saved either.
            reason = InsufficientStorage(
                "the server's disk is full; nothing of this body was kept; retry later"
            )
        elif verifier.active:
            reason = verifier.failure(disconnected=received.disconnected)
        if reason is None:
            return
        await self._staging.truncate(claim.upload_id, claim.upload.offset)
        if not claim.saved:
            # The error carries the upload's Location: the client may resume there.
            await self._repository.commit_offset(claim, claim.upload.offset, release=True)
        raise reason

    def _shipping_for(self, upload: Upload) -> StagedByteShipping | None:
        """The storage that holds this upload's bytes before they are acknowledged."""
        if upload.is_partial and self._storage.partials is None:
            # Without a partial store, a partial upload's bytes stay staged whole until a
            # final upload concatenates them locally.
            return None
        return self._storage.shipping

    def _files_with_offset(self, upload: Upload, old_offset: int) -> bool:
        """Whether the body that completes ``upload`` may leave its offset to the file row's
        transaction.

        Not for partial uploads (they are not filed). On storage that ships staged bytes as
        they become durable (S3 must hold each committed offset first), only for a body
        that carried the whole upload (from offset 0) of one object: nothing of it was
        acknowledged before, and the filing puts it in one go. (A crash before the file row
        leaves that object unnamed; discarding the upload deletes it.)
        """
        if upload.is_partial:
            return False
        shipping = self._storage.shipping
        if shipping is None:
            return True
        return (
            old_offset == 0 and upload.length is not None and shipping.is_one_object(upload.length)
        )

    async def _give_up(self, claim: Claim, failure: BaseException) -> None:
        """Give the lease back after a failure.

        An upload whose row was not inserted yet is inserted, empty, when the client is told
        where it is (a 4xx carries its Location); otherwise it leaves no trace.
        """
        with anyio.CancelScope(shield=True):
            if claim.saved:
                await self._repository.release(claim)
                return
            await self._staging.truncate(claim.upload_id, 0)
            if isinstance(failure, FerryError) and claim.upload.state == UploadState.ACTIVE:
                try:
                    await self._repository.commit_offset(claim, 0, release=True)
                    return
                except Exception:
                    logger.warning(
                        "upload %s: could not be recorded", claim.upload_id, exc_info=True
                    )
            await self._staging.remove(claim.upload_id)

    def _bounds(self, upload: Upload, request: AppendRequest) -> _Bounds:
        """Refuse a PATCH that cannot apply (403/409/400/413) before any byte is read."""
        if upload.is_final:
            raise Forbidden("PATCH is not allowed on a final upload of a concatenation")
        if request.offset != upload.offset:
            raise OffsetMismatch(
                f"Upload-Offset {request.offset} does not match the current offset {upload.offset}"
            )
        length = self._length_after(upload, request.declared_length)
        room = (self._max_size if length is None else length) - upload.offset
        if request.content_length is not None and request.content_length > room:
            raise PayloadTooLarge(
                f"the body of {request.content_length} bytes goes past the upload's end "
                f"({room} bytes left)"
            )
        return _Bounds(length, room)

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
        self._check_length_admitted(declared)
        return declared

    async def _claim_for_append(self, request: AppendRequest) -> tuple[Claim | None, Upload]:
        """The common case in one statement: lock a free, active upload at this offset.

        Anything else (locked, wrong offset, finished, gone, someone else's) reads the row
        instead, so that the checks answer with the precise error.
        """
        claim = await self._repository.claim_and_load(
            request.upload_id, state=UploadState.ACTIVE, offset=request.offset
        )
        if claim is None:
            return None, await self.get(request.upload_id, request.owner)
        try:
            visible(claim.upload, request.owner)
        except BaseException:
            await self._repository.release(claim)
            raise
        return claim, claim.upload

    async def _claim_at_offset(self, upload: Upload, offset: int) -> Claim:
        claim = await self._repository.claim(
            upload, state=UploadState.ACTIVE, offset=offset, length=upload.length
        )
        if claim is not None:
            return claim
        current = await self.get(upload.id)
        if current.offset != offset:
            raise OffsetMismatch(
                f"Upload-Offset {offset} does not match the current offset {current.offset}"
            )
        raise UploadLocked("another request is writing to this upload; retry shortly")

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
        created = await self.create(request, with_data=True)
        upload = created.upload
        try:
            if upload.state == UploadState.ACTIVE and upload.length != 0:
                append = AppendRequest(
                    upload_id=upload.id,
                    offset=0,
                    owner=request.owner,
                    content_length=request.length,
                    checksum=checksum,
                )
                upload = await self.append(append, body, fresh=created.body_claim)
            if upload.state == UploadState.ACTIVE and upload.length is None:
                await self._repository.set_length(upload, upload.offset)
                upload = await self._finisher.finish_when_free(upload)
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
        claim = await self._repository.claim(upload)
        if claim is None:
            raise UploadLocked("the upload is being written; stop that request first")
        await self._retirer.retire(claim, UploadState.TERMINATED, announce=True)

    # ------------------------------------------------------------------ upkeep

    async def expire_due(self, limit: int = 500) -> int:
        """expiration: retire unfinished uploads (and unused partials) past their expiry."""
        return await self._maintenance.expire_due(limit)

    async def reconcile(self) -> dict[str, int]:
        """Invariant 2 at start-up: staging files, offsets and leases agree again."""
        return await self._maintenance.reconcile()


def _over_quota(owner: str | None, room: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the body goes past what {owner}'s quota leaves ({room} bytes; FERRY_QUOTA_BYTES)"
    )


def expiry_header_value(upload: Upload) -> datetime | None:
    """When an unfinished upload expires (``None`` once it is a file)."""
    if upload.state == UploadState.ACTIVE or upload.is_partial:
        return upload.expires_at
    return None
