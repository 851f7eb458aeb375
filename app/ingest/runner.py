"""One ingest run: walk, upload in parallel with resume and retries, verify, report.

Per file: a verified journal record → skipped; a recorded upload URL → tus HEAD and
resume from the server's offset (or recreate if the server forgot it); otherwise create,
journal the URL, then PATCH chunk by chunk. Transient failures (connection lost, server
restarting, 5xx, 409/423) are retried with exponential backoff after re-reading the
server's offset; a refusal (413/415/422, 4xx) fails the file at once. A finished file is
verified by comparing its SHA-256 with the server's record (``GET /api/files/{uid}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio.to_thread

from app.ingest.journal import Entry, Journal, journal_files
from app.ingest.progress import ProgressView
from app.ingest.tus_client import FileHasher, TransferError, TusClient, UploadGone
from app.ingest.walk import LocalFile, find_files

Status = Literal["uploaded", "resumed", "skipped", "failed"]

#: Files up to this size go in one creation-with-upload request.
SMALL_FILE = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class IngestOptions:
    """Everything ``ferry ingest`` was asked to do."""

    server: str
    paths: Sequence[str]
    exclude: tuple[str, ...] = ()
    follow_symlinks: bool = False
    parallel: int = 8
    chunk_size: int = 64 * 1024 * 1024
    state_path: Path = Path(".ferry-ingest-state.json")
    api_key: str | None = None
    retries: int = 8
    backoff_max: float = 15.0


@dataclass(slots=True)
class FileResult:
    """How one file ended."""

    path: str
    relative: str
    size: int
    status: Status
    uid: str | None = None
    sha256: str | None = None
    error: str | None = None
    seconds: float = 0.0
    attempts: int = 1


@dataclass(slots=True)
class IngestReport:
    """The outcome of a run (also written as JSON by ``--json``)."""

    server: str
    started: float
    seconds: float = 0.0
    files: list[FileResult] = field(default_factory=list)

    def count(self, status: Status) -> int:
        """Files that ended with ``status``."""
        return sum(1 for item in self.files if item.status == status)

    def bytes_with(self, *statuses: Status) -> int:
        """Bytes of the files that ended with one of ``statuses``."""
        return sum(item.size for item in self.files if item.status in statuses)

    @property
    def failed(self) -> list[FileResult]:
        """The files that did not make it."""
        return [item for item in self.files if item.status == "failed"]


class _FileFailed(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _uid_of(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


FILES_IN_FLIGHT_PER_SLOT = 4
"""Files being sent, waiting for a slot or waiting for verification, per ``--parallel``
slot. Verification of finished files goes out in batches; the files waiting for it must
not hold transfer slots, or every slot idles until the batch leaves."""


class IngestRun:
    """Uploads a list of files with ``parallel`` workers sharing one client and journal."""

    def __init__(
        self, options: IngestOptions, client: TusClient, journal: Journal, view: ProgressView
    ) -> None:
        self.options = options
        self.client = client
        self.journal = journal
        self.view = view
        self.transfer_slots = asyncio.Semaphore(max(1, options.parallel))
        """``--parallel``: files whose bytes are in transit at once."""
        self.in_flight = max(1, options.parallel) * FILES_IN_FLIGHT_PER_SLOT
        self.verifier = BatchVerifier(client, batch_size=self.in_flight)

    async def run(self, files: list[LocalFile]) -> list[FileResult]:
        """Upload every file; results in the order of ``files``."""
        queue: asyncio.Queue[tuple[int, LocalFile]] = asyncio.Queue()
        for index, local in enumerate(files):
            queue.put_nowait((index, local))
        results: list[FileResult | None] = [None] * len(files)

        async def worker() -> None:
            while True:
                try:
                    index, local = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                results[index] = await self.ingest_one(local)

        async with asyncio.TaskGroup() as group:
            for _ in range(max(1, min(self.in_flight, len(files)))):
                group.create_task(worker())
        return [result for result in results if result is not None]

    async def ingest_one(self, local: LocalFile) -> FileResult:
        """Upload (or resume, or skip) one file and verify it; never raises for the file."""
        started = time.monotonic()
        key = str(local.path)
        entry = self.journal.lookup(local)
        if entry is not None and entry.verified_sha256 is not None and entry.url is not None:
            self.view.file_done(key)
            return FileResult(
                key,
                local.relative,
                local.size,
                "skipped",
                _uid_of(entry.url),
                entry.verified_sha256,
            )
        if entry is None:
            entry = Entry(key, local.size, local.mtime_ns)
        resumed = entry.url is not None
        hasher = FileHasher(local.path)
        attempts = 0
        try:
            while True:
                attempts += 1
                try:
                    async with self.transfer_slots:
                        if attempts == 1:
                            self.view.file_started(key, local.relative, local.size, 0)
                        adopted = await self._transfer(local, entry, hasher)
                    # Verification waits for a batch; the slot goes to the next file.
                    sha256 = adopted or await self._verify(entry, hasher, local.size)
                    break
                except TransferError as exc:
                    if not exc.retryable:
                        raise _FileFailed(exc.message) from None
                    if attempts > self.options.retries:
                        raise _FileFailed(
                            f"{exc.message} (gave up after {attempts} attempts)"
                        ) from None
                    delay = min(self.options.backoff_max, 0.5 * 2 ** (attempts - 1))
                    await asyncio.sleep(delay * (0.75 + random.random() / 2))  # noqa: S311 - jitter
        except _FileFailed as failure:
            self.view.file_done(key)
            return FileResult(
                key,
                local.relative,
                local.size,
                "failed",
                error=failure.message,
                seconds=time.monotonic() - started,
                attempts=attempts,
            )
        except OSError as exc:
            self.view.file_done(key)
            return FileResult(
                key,
                local.relative,
                local.size,
                "failed",
                error=f"reading the file: {exc}",
                seconds=time.monotonic() - started,
                attempts=attempts,
            )
        self.view.file_done(key)
        assert entry.url is not None
        return FileResult(
            key,
            local.relative,
            local.size,
            "resumed" if resumed else "uploaded",
            _uid_of(entry.url),
            sha256,
            seconds=time.monotonic() - started,
            attempts=attempts,
        )

    async def _transfer(self, local: LocalFile, entry: Entry, hasher: FileHasher) -> str | None:
        """One attempt: (re)create or resume, send the rest.

        Returns the SHA-256 when an earlier, unacknowledged creation turns out to have
        stored the file already (nothing left to verify), else ``None``.
        """
        key = str(local.path)
        if entry.url is None and entry.creating:
            adopted = await self._adopt(local, entry, hasher)
            if adopted is not None:
                return adopted
        offset = 0
        if entry.url is not None:
            try:
                offset = await self.client.offset(entry.url)
            except UploadGone:
                entry.url = None
                self.journal.record(entry)
        position = offset

        def sent(count: int) -> None:
            nonlocal position
            position += count
            self.view.file_position(key, position)

        if entry.url is None:
            metadata = {"filename": local.path.name, "relative_path": local.relative}
            if local.size <= min(self.options.chunk_size, SMALL_FILE):
                # One request for a small file. Its URL arrives only with the answer, so
                # the journal first says "creating": a rerun then looks the file up by
                # SHA-256 instead of uploading a duplicate (see _adopt).
                entry.creating = True
                self.journal.record(entry)
                position = 0
                entry.url, offset = await self.client.create_with_body(
                    local.size, metadata, local.path, hasher, sent
                )
            else:
                entry.url = await self.client.create(local.size, metadata)
                offset = 0
            # Journaled before any further byte: a crash from here on resumes this upload.
            entry.creating = False
            self.journal.record(entry)
        self.view.file_position(key, offset)
        while offset < local.size:
            length = min(self.options.chunk_size, local.size - offset)
            position = offset
            # A failure here leaves whatever the server kept; the next attempt HEADs first.
            offset = await self.client.send_chunk(
                entry.url, local.path, offset, length, hasher, sent
            )
            self.view.file_position(key, offset)
        return None

    async def _verify(self, entry: Entry, hasher: FileHasher, size: int) -> str:
        """Compare the local SHA-256 with the server's record; returns it when they agree."""
        assert entry.url is not None
        await anyio.to_thread.run_sync(hasher.catch_up, size)
        sha256 = hasher.hexdigest()
        record = await self.verifier.record_of(_uid_of(entry.url))
        if record is None:
            # Complete but not yet a file (a crash during completion): a HEAD finishes it.
            raise TransferError("verify: the server has no file for the upload yet", retryable=True)
        if record.get("sha256") != sha256:
            await self.client.delete_file(_uid_of(entry.url))
            entry.url = None
            self.journal.record(entry)
            raise _FileFailed(
                f"SHA-256 mismatch: local {sha256}, server {record.get('sha256')}; "
                "the server copy was deleted"
            )
        entry.verified_sha256 = sha256
        self.journal.record(entry)
        return sha256

    async def _adopt(self, local: LocalFile, entry: Entry, hasher: FileHasher) -> str | None:
        """Find the file an unacknowledged creation-with-upload may have stored."""
        await anyio.to_thread.run_sync(hasher.catch_up, local.size)
        sha256 = hasher.hexdigest()
        for record in await self.client.files_with_sha256(sha256):
            metadata = record.get("metadata") or {}
            if record.get("size") == local.size and metadata.get("relative_path") == local.relative:
                entry.url = f"{self.client.server}/files/{record['uid']}"
                entry.creating = False
                entry.verified_sha256 = sha256
                self.journal.record(entry)
                return sha256
        entry.creating = False
        self.journal.record(entry)
        return None


class BatchVerifier:
    """Fetches the server's records of finished files in batches (one GET for many).

    A batch leaves when ``batch_size`` files wait (typically every worker) or after
    ``linger`` seconds, so verification costs a fraction of a request per file.
    """

    def __init__(self, client: TusClient, batch_size: int, linger: float = 0.02) -> None:
        self.client = client
        self.batch_size = max(1, batch_size)
        self.linger = linger
        self._pending: dict[str, asyncio.Future[dict[str, Any] | None]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def record_of(self, uid: str) -> dict[str, Any] | None:
        """The server's record of ``uid`` (``None``: no such file)."""
        loop = asyncio.get_running_loop()
        future = self._pending.get(uid)
        if future is None:
            future = self._pending[uid] = loop.create_future()
        if len(self._pending) >= self.batch_size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.linger, self._flush)
        return await asyncio.shield(future)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, {}
        if batch:
            task = asyncio.get_running_loop().create_task(self._fetch(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _fetch(self, batch: dict[str, asyncio.Future[dict[str, Any] | None]]) -> None:
        try:
            records = await self.client.files_by_uid(list(batch))
        except TransferError as exc:
            for future in batch.values():
                if not future.done():
                    future.set_exception(exc)
            return
        for uid, future in batch.items():
            if not future.done():
                future.set_result(records.get(uid))


async def run_ingest(options: IngestOptions, view: ProgressView) -> IngestReport:
    """Walk ``options.paths`` and upload everything to ``options.server``."""
    report = IngestReport(server=options.server, started=time.time())
    started = time.monotonic()
    files = await anyio.to_thread.run_sync(
        lambda: list(
            find_files(
                options.paths,
                exclude=options.exclude,
                follow_symlinks=options.follow_symlinks,
                skip=journal_files(options.state_path),
            )
        )
    )
    journal = Journal(options.state_path, options.server)
    await anyio.to_thread.run_sync(journal.open)
    client = TusClient(options.server, api_key=options.api_key, connections=options.parallel + 2)
    view.begin(len(files), sum(local.size for local in files))
    try:
        report.files = await IngestRun(options, client, journal, view).run(files)
    finally:
        view.close()
        with contextlib.suppress(Exception):
            await client.aclose()
        journal.close()
    report.seconds = time.monotonic() - started
    return report
