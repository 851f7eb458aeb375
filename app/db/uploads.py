"""The one owner of upload rows: every state transition and the one-writer lease.

No other module writes ``uploads`` rows or touches their lease columns. Each transition is
a named operation with the guard that keeps the invariants in its ``WHERE`` clause:

* :meth:`UploadRepository.claim` takes the lease with a compare-and-set (invariant 3), so
  it works alike on SQLite and PostgreSQL, across processes and nodes; a crashed writer's
  lease expires, a live writer renews it (:meth:`UploadRepository.kept_alive`);
* :meth:`UploadRepository.commit_offset` moves the offset only from the value the writer
  read and only while its lease holds (invariants 2 and 3);
* :meth:`UploadRepository.complete_and_file` writes the ``File`` row and completes the
  upload in one transaction (invariant 4);
* :meth:`UploadRepository.retire` takes the row out of the live states before anything
  frees its bytes (invariant 5).

A creation-with-upload is the one exception to "the row exists first": its row waits for
its body's outcome (nobody else knows its id before the response). That is carried as an
explicit value, :attr:`Claim.saved` ``False``; the first transition of such a claim inserts
the row instead of updating it, so a small file costs one transaction in all.

Change events (the webhook outbox, counters) are recorded through :class:`UploadEvents`
inside the transaction of the change that causes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import CursorResult, Table, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, make_transient_to_detached

from app.core.clock import utcnow
from app.core.tokens import unique_token
from app.db.engine import DATABASE_ERRORS, describe_database_failure
from app.db.group_commit import AsyncSessionWriter, GroupCommit
from app.db.models import File, Upload, UploadState
from app.db.row_reads import AsyncSessionReads, RowReads
from app.db.unreleased import UnreleasedLeases
from app.errors import Gone, UploadLocked

logger = logging.getLogger(__name__)

_IDS_PER_QUERY = 500
"""Ids in one ``IN (...)`` (SQLite caps the parameters of a statement)."""

_RELEASED: dict[str, Any] = {"lock_token": None, "lock_holder": None, "lock_expires_at": None}

UPLOADS: Table = Upload.__table__  # type: ignore[assignment]
"""The writes below are Core statements on the table, not ORM ones: in a group commit each
runs for a few concurrent requests, and the ORM's bulk-update and unit-of-work machinery
cost several times the statement itself (the writer thread's profile under small uploads)."""


def _column(attribute: str) -> Any:
    """The ``uploads`` column of an ``Upload`` attribute (``offset`` is ``upload_offset``)."""
    return UPLOADS.c[Upload.__mapper__.column_attrs[attribute].columns[0].key]


def _insert_row(session: Session, instance: Upload | File) -> None:
    """Insert a new row from its ORM object with one Core statement (no unit of work); the
    object stays transient, as a row loaded and detached would be."""
    now = utcnow()
    instance.created_at = instance.created_at or now
    instance.updated_at = instance.updated_at or now
    session.execute(
        _INSERTS[type(instance)],
        {column.key: getattr(instance, key) for key, column in _COLUMNS[type(instance)]},
    )


_INSERTS: dict[type[Upload | File], Any] = {
    Upload: insert(UPLOADS),
    File: insert(File.__table__),  # type: ignore[arg-type]
}
"""One statement object each, built once: SQLAlchemy memoizes a statement's cache key on
the object, so a new one per row would be walked again every time."""

_COLUMNS: dict[type[Upload | File], list[tuple[str, Any]]] = {
    model: [
        (attribute.key, attribute.columns[0])
        for attribute in model.__mapper__.column_attrs
        if attribute.key != "_sentinel"
    ]
    for model in (Upload, File)
}
"""Each model's (attribute, column) pairs, read once from its mapper."""


def _detached_upload(row: Any) -> Upload:
    """An ``Upload`` built from a Core row, as a session would have loaded and let go of
    it (detached), without the ORM's loading machinery (a third of a claim's cost)."""
    upload = Upload(**{key: row[column] for key, column in _COLUMNS[Upload]})
    make_transient_to_detached(upload)
    return upload


LeaseFence = Callable[[AsyncSession], Awaitable[None]]
"""Run inside a transaction that records an upload's bytes elsewhere (the S3 ledger): it
renews the writer's lease there and raises :class:`UploadLocked` when the writer lost it,
so a writer whose lease lapsed can never overwrite what a newer one recorded."""

Reservation = Callable[[Session], None]
"""A check run inside the transaction that inserts an upload (quotas); raises to refuse.
Synchronous: it runs in a group commit (:mod:`app.db.group_commit`)."""


class UploadEvents(Protocol):
    """What the rest of Ferry learns of upload changes, recorded in their transaction."""

    def file_recorded(self, session: Session, stored: File) -> None:
        """An upload became a file (``session`` is the filing transaction).

        May run twice for one change (a group commit that failed runs each of its pieces
        again): it only adds rows to ``session``; what counts goes in :meth:`committed`."""

    def upload_terminated(self, session: Session, upload: Upload) -> None:
        """Its owner terminated an upload (``session`` is the retiring transaction)."""

    def committed(self, *, files: int = 0, terminations: int = 0) -> None:
        """A transaction that recorded these events has committed."""


class NoUploadEvents:
    """Nobody listens (tests and tools that build a repository of their own)."""

    def file_recorded(self, session: Session, stored: File) -> None:
        """Nothing to record."""

    def upload_terminated(self, session: Session, upload: Upload) -> None:
        """Nothing to record."""

    def committed(self, *, files: int = 0, terminations: int = 0) -> None:
        """Nothing to wake."""


@dataclass(slots=True)
class Claim:
    """An upload held under this process's lease, and whether its row exists yet."""

    upload: Upload
    token: str
    saved: bool = True
    """``False`` for a creation-with-upload whose row is inserted with its body's outcome."""

    @property
    def upload_id(self) -> uuid.UUID:
        """The claimed upload's id."""
        return self.upload.id


@dataclass(slots=True)
class LeaseState:
    """Whether a kept-alive lease was lost while its holder worked."""

    lost: bool = False


@dataclass(frozen=True, slots=True)
class LiveUploads:
    """Ids of the uploads whose backend objects must be kept (for the orphan sweeps)."""

    active: set[uuid.UUID] = field(default_factory=set)
    partials: set[uuid.UUID] = field(default_factory=set)


def live_condition() -> Any:
    """Active uploads, and completed partials waiting for a final upload."""
    return or_(
        Upload.state == UploadState.ACTIVE,
        (Upload.state == UploadState.COMPLETED) & Upload.is_partial,
    )


class UploadRepository:
    """Reads uploads and files; every upload row transition and lease operation."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        node_id: str,
        lease_seconds: float,
        ttl_seconds: float,
        events: UploadEvents | None = None,
        writes: GroupCommit | None = None,
        reads: RowReads | None = None,
    ) -> None:
        self._sessions = sessions
        self._writes = writes or GroupCommit(AsyncSessionWriter(sessions))
        """Every write transaction goes through it: concurrent ones commit together."""
        self._reads = reads or AsyncSessionReads(sessions)
        """The rows a HEAD or a download reads by id (its owner closes it)."""
        self.node_id = node_id
        self.lease = timedelta(seconds=lease_seconds)
        self.ttl = timedelta(seconds=ttl_seconds)
        self._events: UploadEvents = events or NoUploadEvents()
        self.unreleased = UnreleasedLeases(self._release_row, lease_seconds)
        """Releases that failed (the database did not answer), retried until it does."""

    @property
    def writes(self) -> GroupCommit:
        """Where every upload write commits (tests count its transactions)."""
        return self._writes

    async def close(self) -> None:
        """Stop retrying failed releases (after one last try); release the writer."""
        await self.unreleased.close()
        self._writes.close()

    # ------------------------------------------------------------------ reads

    async def find(self, upload_id: uuid.UUID) -> Upload | None:
        """The upload row, whatever its state."""
        return await self._reads.run(lambda session: session.get(Upload, upload_id))

    async def find_file(self, file_id: uuid.UUID) -> File | None:
        """The file row of a completed upload."""
        return await self._reads.run(lambda session: session.get(File, file_id))

    async def find_many(self, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Upload]:
        """Uploads by id (missing ones are absent from the answer)."""
        wanted = list(set(ids))
        found: dict[uuid.UUID, Upload] = {}
        async with self._sessions() as session:
            for start in range(0, len(wanted), _IDS_PER_QUERY):
                batch = wanted[start : start + _IDS_PER_QUERY]
                rows = await session.scalars(select(Upload).where(Upload.id.in_(batch)))
                found.update((row.id, row) for row in rows)
        return found

    async def live(self) -> list[Upload]:
        """Every upload that still needs its bytes (start-up reconciliation)."""
        async with self._sessions() as session:
            return list(await session.scalars(select(Upload).where(live_condition())))

    async def live_ids(self) -> LiveUploads:
        """Ids of the active uploads and of the live partial uploads."""
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(Upload.id, Upload.state, Upload.is_partial).where(live_condition())
                )
            ).all()
        return LiveUploads(
            active={row.id for row in rows if row.state == UploadState.ACTIVE},
            partials={row.id for row in rows if row.is_partial},
        )

    async def due_for_expiry(self, now: datetime, limit: int) -> list[Upload]:
        """Unfinished uploads (and unused partials) whose expiry has passed."""
        async with self._sessions() as session:
            statement = (
                select(Upload).where(Upload.expires_at <= now, live_condition()).limit(limit)
            )
            return list(await session.scalars(statement))

    async def finals_naming(self, partial_id: uuid.UUID) -> list[Upload]:
        """Active final uploads whose partials include ``partial_id``."""
        async with self._sessions() as session:
            finals = await session.scalars(
                select(Upload).where(
                    Upload.state == UploadState.ACTIVE, Upload.concat_parts.is_not(None)
                )
            )
            return [final for final in finals if str(partial_id) in (final.concat_parts or [])]

    async def filed_ids(self, ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
        """Which of ``ids`` have a file row."""
        wanted = list(ids)
        filed: set[uuid.UUID] = set()
        async with self._sessions() as session:
            for start in range(0, len(wanted), _IDS_PER_QUERY):
                batch = wanted[start : start + _IDS_PER_QUERY]
                filed.update(await session.scalars(select(File.id).where(File.id.in_(batch))))
        return filed

    # ------------------------------------------------------------------ creation

    def new_upload(
        self,
        *,
        owner: str | None,
        length: int | None,
        metadata: dict[str, str | None],
        is_partial: bool,
        concat_parts: list[str] | None,
        storage: str,
    ) -> Upload:
        """A new active upload at offset 0 (not saved yet)."""
        return Upload(
            id=uuid.uuid4(),
            owner=owner,
            state=UploadState.ACTIVE,
            length=length,
            offset=0,
            upload_metadata=dict(metadata),
            is_partial=is_partial,
            concat_parts=concat_parts,
            storage=storage,
            expires_at=utcnow() + self.ttl,
        )

    async def create(
        self, upload: Upload, *, claimed: bool = False, reserve: Reservation | None = None
    ) -> Claim | None:
        """Insert a new upload; ``claimed``: born under this process's lease (saves a round
        trip when a body follows at once). ``reserve`` runs first in the same transaction
        (the owner's quota: what it counts cannot change before the insert commits)."""
        claim = None
        if claimed:
            claim = Claim(upload=upload, token=unique_token())
            self._hold(upload, claim.token)
        await self._insert(upload, reserve)
        return claim

    async def _insert(self, upload: Upload, reserve: Reservation | None) -> None:
        def insert(session: Session) -> None:
            if reserve is not None:
                reserve(session)
            _insert_row(session, upload)

        await self._writes.run(insert)

    def claim_unsaved(self, upload: Upload) -> Claim:
        """A creation-with-upload: its lease is taken in memory, its row inserted by the
        first transition (nobody else can know its id before the response)."""
        claim = Claim(upload=upload, token=unique_token(), saved=False)
        self._hold(upload, claim.token)
        return claim

    def _hold(self, upload: Upload, token: str) -> None:
        upload.lock_token = token
        upload.lock_holder = self.node_id
        upload.lock_expires_at = utcnow() + self.lease

    # ------------------------------------------------------------------ the lease

    def _claim_statement(self, upload_id: uuid.UUID, token: str, conditions: dict[str, Any]) -> Any:
        """The compare-and-set UPDATE: free (or expired) lease and every condition holds."""
        now = utcnow()
        return (
            update(UPLOADS)
            .where(
                UPLOADS.c.id == upload_id,
                or_(UPLOADS.c.lock_token.is_(None), UPLOADS.c.lock_expires_at < now),
                *(_column(name) == value for name, value in conditions.items()),
            )
            .values(lock_token=token, lock_holder=self.node_id, lock_expires_at=now + self.lease)
        )

    async def claim(self, upload: Upload, **conditions: Any) -> Claim | None:
        """Take ``upload``'s lease if it is free (or expired) and every ``column == value``
        holds; ``None`` when the lease is held or a condition failed."""
        await self.unreleased.retry(upload.id)
        token = unique_token()
        claimed = self._claim_statement(upload.id, token, conditions)
        if await self._execute(claimed, durable=False) != 1:
            return None
        self._hold(upload, token)
        return Claim(upload=upload, token=token)

    async def claim_and_load(self, upload_id: uuid.UUID, **conditions: Any) -> Claim | None:
        """Like :meth:`claim` by id, returning the locked row too: one round trip."""
        await self.unreleased.retry(upload_id)
        token = unique_token()
        claimed = self._claim_statement(upload_id, token, conditions).returning(*UPLOADS.c)

        def claim(session: Session) -> Upload | None:
            row = session.execute(claimed).one_or_none()
            return None if row is None else _detached_upload(row._mapping)

        upload = await self._writes.run(claim, durable=False)
        return None if upload is None else Claim(upload=upload, token=token)

    async def renew(self, claim: Claim) -> bool:
        """Extend a held lease; ``False`` means it was lost."""
        return await self._execute(self._renewal(claim), durable=False) == 1

    def _renewal(self, claim: Claim) -> Any:
        """The UPDATE that extends ``claim``'s lease (no row when it was lost)."""
        return (
            update(UPLOADS)
            .where(UPLOADS.c.id == claim.upload_id, UPLOADS.c.lock_token == claim.token)
            .values(lock_expires_at=utcnow() + self.lease)
        )

    async def release(self, claim: Claim) -> None:
        """Give a lease back (a no-op if it was already released, lost or never saved).

        Never fails for the database: a release it refuses is retried in the background
        (:class:`~app.db.unreleased.UnreleasedLeases`), so a request that ends during an
        outage does not lock its upload for a whole lease after the outage.
        """
        if claim.saved:
            try:
                await self._release_row(claim.upload_id, claim.token)
            except DATABASE_ERRORS as exc:
                logger.warning(
                    "upload %s: its lease could not be released (%s); retrying until it is",
                    claim.upload_id,
                    describe_database_failure(exc),
                )
                self.unreleased.remember(claim.upload_id, claim.token)
        self._let_go(claim.upload)

    async def _release_row(self, upload_id: uuid.UUID, token: str) -> None:
        await self._execute(
            update(UPLOADS)
            .where(UPLOADS.c.id == upload_id, UPLOADS.c.lock_token == token)
            .values(**_RELEASED)
        )

    @staticmethod
    def _let_go(upload: Upload) -> None:
        upload.lock_token = upload.lock_holder = upload.lock_expires_at = None

    def fence(self, claim: Claim) -> LeaseFence:
        """The :data:`LeaseFence` of ``claim``."""

        async def hold(session: AsyncSession) -> None:
            if not claim.saved:
                return  # nobody else knows the upload yet
            renewed = await session.execute(self._renewal(claim))
            if _rowcount(renewed) != 1:
                raise UploadLocked("the upload's lock was lost before its bytes were recorded")

        return hold

    async def release_stale_of_this_node(self) -> int:
        """At start-up: leases this node held before it stopped belong to dead requests."""
        statement = update(UPLOADS).where(UPLOADS.c.lock_holder == self.node_id).values(**_RELEASED)
        return await self._execute(statement)

    @contextlib.asynccontextmanager
    async def kept_alive(self, claim: Claim) -> AsyncIterator[LeaseState]:
        """Renew the lease in the background while its holder works (a body streams, S3
        completes). The yielded state's ``lost`` turns true if renewal fails, so the writer
        stops before it could interleave with a new holder. An unsaved claim has no row to
        renew and cannot be lost."""
        state = LeaseState()
        if not claim.saved:
            yield state
            return

        async def renew_forever() -> None:
            interval = self.lease.total_seconds() / 3
            while True:
                await asyncio.sleep(interval)
                try:
                    renewed = await self.renew(claim)
                except Exception:
                    logger.warning(
                        "renewing the lease of upload %s failed; retrying", claim.upload_id
                    )
                    continue
                if not renewed:
                    state.lost = True
                    return

        task = asyncio.create_task(renew_forever())
        try:
            yield state
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------------ transitions

    async def commit_offset(
        self,
        claim: Claim,
        new_offset: int,
        *,
        release: bool,
        committed: int | None = None,
        sha256_state: bytes | None = None,
        content_type: str | None = None,
        reserve: Reservation | None = None,
        recording: Reservation | None = None,
    ) -> bool:
        """Record a durable offset; one statement also gives the lease back when asked.

        ``committed`` is the offset the database holds when ``upload.offset`` already moved
        on in memory (a completion whose filing failed). An unsaved claim is inserted here,
        active at ``new_offset``. ``sha256_state``: the running hash of ``[0, new_offset)``
        (``None`` keeps none: completion then hashes the stored bytes). ``content_type``:
        sniffed from the first bytes, recorded when given. ``reserve`` runs first in the
        same transaction (the owner's quota, for bytes of an upload whose length is not
        known) and raises to refuse. ``recording`` writes what storage keeps of the new
        bytes (S3's parts ledger) in the same transaction, so they are recorded exactly
        when they are acknowledged: if the lease was lost meanwhile, nothing of it stays.
        Returns ``False`` when the lease was lost meanwhile.
        """
        if recording is not None:
            reserve = _both(reserve, recording)
        upload = claim.upload
        expires_at = utcnow() + self.ttl
        if not claim.saved:
            if upload.state in (UploadState.TERMINATED, UploadState.EXPIRED):
                raise Gone("the upload was refused before it was stored")
            upload.state = UploadState.ACTIVE  # a filing that failed may have set COMPLETED
            upload.offset = new_offset
            upload.expires_at = expires_at
            upload.sha256_state = sha256_state
            upload.content_type = content_type or upload.content_type
            if release:
                self._let_go(upload)
            await self._insert(upload, reserve)
            claim.saved = True
            return True
        result = await self._execute(
            update(UPLOADS)
            .where(
                UPLOADS.c.id == upload.id,
                UPLOADS.c.lock_token == claim.token,
                UPLOADS.c.upload_offset == (upload.offset if committed is None else committed),
            )
            .values(
                upload_offset=new_offset,
                expires_at=expires_at,
                sha256_state=sha256_state,
                updated_at=utcnow(),
                **(_RELEASED if release else {}),
                **({"content_type": content_type} if content_type else {}),
            ),
            reserve=reserve,
            all_or_nothing=recording is not None,
        )
        if result != 1:
            return False
        upload.offset = new_offset
        upload.expires_at = expires_at
        upload.sha256_state = sha256_state
        upload.content_type = content_type or upload.content_type
        if release:
            self._let_go(upload)
        return True

    async def set_length(
        self, upload: Upload, length: int, *, reserve: Reservation | None = None
    ) -> None:
        """Fix a deferred length (creation-defer-length) once it is known; only once.

        ``reserve`` runs first in the same transaction (the owner's quota for the bytes the
        length adds) and raises to refuse.
        """
        await self._execute(
            update(UPLOADS)
            .where(UPLOADS.c.id == upload.id, UPLOADS.c.length.is_(None))
            .values(length=length),
            reserve=reserve,
        )
        upload.length = length

    async def record_assembly(self, claim: Claim, size: int, sha256_state: bytes) -> None:
        """A final upload concatenated in staging: all ``size`` bytes are there."""
        await self._execute(
            update(UPLOADS)
            .where(UPLOADS.c.id == claim.upload_id, UPLOADS.c.lock_token == claim.token)
            .values(length=size, upload_offset=size, sha256_state=sha256_state)
        )
        claim.upload.length = claim.upload.offset = size
        claim.upload.sha256_state = sha256_state

    async def complete_and_file(self, claim: Claim, stored: File) -> None:
        """Write the file row and complete the upload in one transaction; lease held.

        An unsaved claim (a creation-with-upload) is inserted here, completed: a small
        file costs one transaction in all.
        """
        upload = claim.upload
        if not claim.saved:
            self._mark_completed(upload, stored.size)  # what its inserted row must hold

        def file(session: Session) -> None:
            if claim.saved:
                session.execute(
                    update(UPLOADS)
                    .where(UPLOADS.c.id == upload.id, UPLOADS.c.lock_token == claim.token)
                    .values(
                        state=UploadState.COMPLETED,
                        length=stored.size,
                        upload_offset=stored.size,
                        expires_at=None,
                        sha256_state=None,
                        **_RELEASED,
                    )
                )
            else:
                _insert_row(session, upload)
            _insert_row(session, stored)
            self._events.file_recorded(session, stored)

        await self._writes.run(file)
        self._events.committed(files=1)
        claim.saved = True
        self._mark_completed(upload, stored.size)

    def _mark_completed(self, upload: Upload, size: int) -> None:
        upload.state = UploadState.COMPLETED
        upload.length = upload.offset = size
        upload.expires_at = None
        upload.sha256_state = None
        self._let_go(upload)

    async def complete_partial(self, claim: Claim) -> None:
        """A partial upload has all its bytes: completed, kept until its expiry for a final
        upload to use (tus concatenation: a partial is not processed on its own)."""
        await self._execute(
            update(UPLOADS)
            .where(UPLOADS.c.id == claim.upload_id, UPLOADS.c.lock_token == claim.token)
            .values(state=UploadState.COMPLETED, expires_at=utcnow() + self.ttl, **_RELEASED)
        )
        claim.upload.state = UploadState.COMPLETED
        self._let_go(claim.upload)

    async def retire(
        self, claim: Claim, state: UploadState, *, announce: bool = False
    ) -> File | None:
        """Take the upload out of the live states (terminated or expired) and delete its file
        row; returns that row so the caller can free its bytes. Lease held.

        ``announce``: its owner terminated it, which is an event (post-terminate).
        """

        def retire(session: Session) -> tuple[File | None, bool]:
            stored = session.get(File, claim.upload_id)
            retired = session.execute(
                update(UPLOADS)
                .where(UPLOADS.c.id == claim.upload_id, UPLOADS.c.lock_token == claim.token)
                .values(state=state, updated_at=utcnow(), **_RELEASED)
            )
            if stored is not None:
                session.execute(delete(File).where(File.id == claim.upload_id))
            announced = announce and _rowcount(retired) == 1
            if announced:
                self._events.upload_terminated(session, claim.upload)
            return stored, announced

        stored, announced = await self._writes.run(retire)
        if announced:
            self._events.committed(terminations=1)
        claim.upload.state = state
        self._let_go(claim.upload)
        return stored

    async def rewind(self, upload: Upload, offset: int) -> None:
        """Set the committed offset to what storage really holds (start-up only)."""
        await self._execute(
            update(UPLOADS).where(UPLOADS.c.id == upload.id).values(upload_offset=offset)
        )
        upload.offset = offset

    async def _execute(
        self,
        statement: Any,
        *,
        reserve: Reservation | None = None,
        durable: bool = True,
        all_or_nothing: bool = False,
    ) -> int:
        """``statement``'s row count, committed. ``durable=False`` for lease writes only:
        a lease that a power loss takes back is given back at start-up anyway
        (:meth:`release_stale_of_this_node`), and every offset commit is durable.
        ``all_or_nothing``: a statement that changes no row rolls back what ``reserve``
        wrote (and 0 is returned)."""

        def execute(session: Session) -> int:
            if reserve is not None:
                reserve(session)
            count = _rowcount(session.execute(statement))
            if all_or_nothing and count == 0:
                raise _NothingChanged
            return count

        try:
            return await self._writes.run(execute, durable=durable)
        except _NothingChanged:
            return 0


class _NothingChanged(Exception):
    """Rolls back an all-or-nothing transaction whose statement matched no row."""


def _both(first: Reservation | None, second: Reservation) -> Reservation:
    """One transaction hook running ``first`` (if any), then ``second``."""

    def run(session: Session) -> None:
        if first is not None:
            first(session)
        second(session)

    return run


def _rowcount(result: Any) -> int:
    cursor: CursorResult[Any] = result
    return int(cursor.rowcount)
