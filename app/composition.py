"""The composition root: the one place that builds Ferry's object graph.

:func:`open_ferry` builds, from settings, the database engine, the storage backend (its
capabilities resolved and instrumented before anything holds it), the staging area, the
upload repository (with the webhook outbox as its event log), the owners' quotas,
admission, the upload and download services, and the authenticator, each handed what it
needs in its constructor. Nothing is rewired afterwards. The web app
(:func:`app.main.create_app`) and the CLI tasks (:mod:`app.cli_tasks`) both open the same
graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.auth.keys import ApiKeyStore
from app.db.engine import (
    create_engine,
    create_session_factory,
    create_sqlite_reader_engine,
    create_sqlite_writer_engine,
)
from app.db.group_commit import AsyncSessionWriter, GroupCommit, ThreadedSqliteWriter
from app.db.row_reads import READ_THREADS, AsyncSessionReads, RowReads, ThreadedSqliteReads
from app.db.uploads import UploadRepository
from app.http.authentication import Authenticator
from app.http.downloads import DownloadService
from app.http.links import LinkSigner
from app.ops.admission import UploadAdmission
from app.ops.hooks import PreCreateHook
from app.ops.limits import CreationRateLimiter, OwnerQuotas
from app.ops.metrics import instrumented
from app.ops.webhooks import WebhookOutbox
from app.settings import Settings
from app.storage.backend import Storage, StorageBackend
from app.storage.local import LocalBackend
from app.storage.staging import StagingArea, limit_malloc_retention
from app.uploads.service import UploadService


def build_backend(settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> StorageBackend:
    """The storage backend chosen by ``FERRY_STORAGE`` (S3 keeps its parts ledger in the
    app's database)."""
    if settings.storage == "s3":
        from app.storage.s3 import S3Backend  # aiobotocore only when S3 is used

        return S3Backend(settings, sessions)
    return LocalBackend(settings.files_dir)


@dataclass(frozen=True, slots=True)
class Ferry:
    """Everything one Ferry process runs on, built once."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    backend: StorageBackend
    """The backend itself (its own attributes, e.g. for tests); code uses ``storage``."""
    storage: Storage
    staging: StagingArea
    repository: UploadRepository
    uploads: UploadService
    downloads: DownloadService
    outbox: WebhookOutbox
    authenticator: Authenticator
    link_signer: LinkSigner


def group_commit(url: str, sessions: async_sessionmaker[AsyncSession]) -> GroupCommit:
    """Upload writes grouped (:mod:`app.db.group_commit`): on SQLite by its one writer
    thread; on PostgreSQL a few groups at once over the pool."""
    if url.startswith("sqlite"):
        return GroupCommit(ThreadedSqliteWriter(create_sqlite_writer_engine(url)))
    return GroupCommit(AsyncSessionWriter(sessions), parallel=POSTGRES_GROUPS_IN_FLIGHT)


def row_reads(url: str, sessions: async_sessionmaker[AsyncSession]) -> RowReads:
    """The reads of one row that HEADs, downloads and API-key checks make
    (:mod:`app.db.row_reads`): on SQLite in reader threads of their own; on PostgreSQL
    over the pool."""
    if url.startswith("sqlite"):
        return ThreadedSqliteReads(create_sqlite_reader_engine(url, READ_THREADS))
    return AsyncSessionReads(sessions)


POSTGRES_GROUPS_IN_FLIGHT = 4
"""Groups committing at once on PostgreSQL (of the pool's 10 connections)."""


@contextlib.asynccontextmanager
async def open_ferry(settings: Settings) -> AsyncIterator[Ferry]:
    """Build the object graph, start the backend, and close everything afterwards."""
    engine = create_engine(settings.resolved_database_url)
    sessions = create_session_factory(engine)
    backend = build_backend(settings, sessions)
    storage = instrumented(Storage.of(backend))
    # S3 sends parts from staged pages; the local backend never reads them back.
    staging = StagingArea(
        settings.staging_dir,
        drops_written_pages=storage.shipping is None,
        # With S3, an acknowledged byte is in S3: staging is a buffer that needs no fsync.
        syncs=storage.shipping is None,
    )
    client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
    outbox = WebhookOutbox(sessions, settings, client)
    reads = row_reads(settings.resolved_database_url, sessions)
    writes = group_commit(settings.resolved_database_url, sessions)
    repository = UploadRepository(
        sessions,
        node_id=settings.resolved_node_id,
        lease_seconds=settings.lock_lease_seconds,
        ttl_seconds=settings.upload_ttl_seconds,
        events=outbox,
        writes=writes,
        reads=reads,
    )
    quotas = OwnerQuotas(settings, sessions)
    admission = UploadAdmission(
        CreationRateLimiter(writes, settings.create_rate_per_minute, settings.create_burst),
        quotas,
        PreCreateHook(settings, client),
    )
    uploads = UploadService(
        repository=repository,
        storage=storage,
        staging=staging,
        settings=settings,
        admission=admission,
        quota=quotas,
    )
    ferry = Ferry(
        settings=settings,
        engine=engine,
        sessions=sessions,
        backend=backend,
        storage=storage,
        staging=staging,
        repository=repository,
        uploads=uploads,
        downloads=DownloadService(uploads, storage, settings=settings),
        outbox=outbox,
        authenticator=Authenticator(settings, ApiKeyStore(sessions, reads)),
        link_signer=LinkSigner.from_settings(settings),
    )
    try:
        staging.prepare()
        limit_malloc_retention()
        await storage.backend.start()
        try:
            yield ferry
        finally:
            await repository.close()
            reads.close()
            await storage.backend.close()
    finally:
        await client.aclose()
        await engine.dispose()
