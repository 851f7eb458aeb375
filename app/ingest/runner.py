"""One ingest run: walk, plan, upload in parallel with resume and retries, verify, report.

Per file to send: a recorded upload URL → tus HEAD and resume from the server's offset
(or recreate if the server forgot it); otherwise create, journal the URL, then PATCH
chunk by chunk. Transient failures (connection lost, server restarting, 5xx, 409/423)
are retried with exponential backoff after re-reading the server's offset; a refusal
(413/415/422, 4xx) fails the file at once, and a 401 stops the run (no other file can
succeed). A finished file is verified by comparing its SHA-256 with the server's record
(``GET /api/files?uid=…``, batched). Ctrl-C stops the workers and still reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread

from app.ingest.bandwidth import BandwidthLimit
from app.ingest.hashing import FileHasher
from app.ingest.journal import Entry, Journal, journal_files
from app.ingest.plan import Planner, uid_of
from app.ingest.progress import ProgressView
from app.ingest.results import FileResult, IngestReport, Status
from app.ingest.tus_client import (
    AuthRefused,
    ServerUnusable,
    TransferError,
    TusClient,
    UploadGone,
    auth_refused_message,
)
from app.ingest.verify import BatchVerifier
from app.ingest.walk import LocalFile, PassedOver, find_files

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
    dry_run: bool = False
    bwlimit: int | None = None
    """Bytes per second for the whole run (every worker together); ``None``: no limit."""

    @property
    def small_file(self) -> int:
        """Largest file sent in one creation-with-upload request (about a second's worth of
        bytes under ``--bwlimit``, so the limit is not one long burst)."""
        return min(self.chunk_size, SMALL_FILE, self.bwlimit or SMALL_FILE)


class _FileFailed(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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
        self.results: list[FileResult] = []
        """Finished files so far, kept when the run is cancelled (Ctrl-C)."""

    async def run(self, files: Sequence[tuple[LocalFile, Entry]]) -> None:
        """Upload every file into :attr:`results`; :class:`AuthRefused` ends the run."""
        queue: asyncio.Queue[tuple[LocalFile, Entry]] = asyncio.Queue()
        for item in files:
            queue.put_nowait(item)

        async def worker() -> None:
            while True:
                try:
                    local, entry = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                self.results.append(await self.ingest_one(local, entry))

        async with asyncio.TaskGroup() as group:
            for _ in range(max(1, min(self.in_flight, len(files)))):
                group.create_task(worker())

    async def ingest_one(self, local: LocalFile, entry: Entry) -> FileResult:
        """Upload (or resume) one file and verify it; raises only :class:`AuthRefused`."""
        started = time.monotonic()
        resumed = entry.url is not None
        hasher = FileHasher(local.path)
        attempts = 0

        def ended(status: Status, **details: Any) -> FileResult:
            self.view.file_done(str(local.path), local.size, ok=status != "failed")
            return FileResult(
                str(local.path),
                local.relative,
                local.size,
                status,
                seconds=time.monotonic() - started,
                attempts=attempts,
                **details,
            )

        try:
            while True:
                attempts += 1
                try:
                    async with self.transfer_slots:
                        await self._transfer(local, entry, hasher)
                    # Verification waits for a batch; the slot goes to the next file.
                    sha256 = await self._verify(entry, hasher, local.size)
                    break
                except AuthRefused:
                    raise
                except TransferError as exc:
                    await self._back_off(exc, attempts)
        except _FileFailed as failure:
            return ended("failed", error=failure.message)
        except OSError as exc:
            return ended("failed", error=f"reading the file: {exc}")
        assert entry.url is not None
        return ended("resumed" if resumed else "uploaded", uid=uid_of(entry.url), sha256=sha256)

    async def _back_off(self, exc: TransferError, attempts: int) -> None:
        """Wait before the next attempt, or give the file up."""
        if not exc.retryable:
            raise _FileFailed(exc.message) from None
        if attempts > self.options.retries:
            raise _FileFailed(f"{exc.message} (gave up after {attempts} attempts)") from None
        delay = min(self.options.backoff_max, 0.5 * 2 ** (attempts - 1))
        await asyncio.sleep(delay * (0.75 + random.random() / 2))  # noqa: S311 - jitter

    async def _transfer(self, local: LocalFile, entry: Entry, hasher: FileHasher) -> None:
        """One attempt: (re)create or resume, send the rest."""
        key = str(local.path)
        offset = 0
        if entry.url is not None:
            try:
                offset = await self.client.offset(entry.url)
            except UploadGone:
                entry.url = None
                self.journal.record(entry)
        self.view.file_started(key, local.relative, local.size, offset)
        position = offset

        def sent(count: int) -> None:
            nonlocal position
            position += count
            self.view.file_position(key, position)

        if entry.url is None and hasher.hashed == local.size > 0:
            # An earlier attempt sent the whole file and lost the answer (the server went
            # down, the connection broke): it may have stored it before it could say so.
            entry.url = await self._stored_copy(local, hasher.hexdigest())
            if entry.url is not None:
                self.journal.record(entry)
                return
        if entry.url is None:
            metadata = {"filename": local.path.name, "relative_path": local.relative}
            if local.size <= self.options.small_file:
                # One request for a small file. Its URL arrives only with the answer: if
                # that never comes, the rerun finds the stored file by name and SHA-256.
                entry.url, offset = await self.client.create_with_body(
                    local.size, metadata, local.path, hasher, sent
                )
            else:
                entry.url = await self.client.create(local.size, metadata)
                offset = 0
            # Journaled before any further byte: a crash from here on resumes this upload.
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

    async def _stored_copy(self, local: LocalFile, sha256: str) -> str | None:
        """The upload URL of a file the server holds with this name, size and SHA-256."""
        for record in await self.client.files_named([local.path.name]):
            metadata = record.get("metadata") or {}
            if (
                record.get("size") == local.size
                and record.get("sha256") == sha256
                and metadata.get("relative_path") == local.relative
            ):
                return self.client.upload_url(str(record["uid"]))
        return None

    async def _verify(self, entry: Entry, hasher: FileHasher, size: int) -> str:
        """Compare the local SHA-256 with the server's record; returns it when they agree."""
        assert entry.url is not None
        await anyio.to_thread.run_sync(hasher.catch_up, size, abandon_on_cancel=True)
        sha256 = hasher.hexdigest()
        record = await self.verifier.record_of(uid_of(entry.url))
        if record is None:
            # Complete but not yet a file (a crash during completion): a HEAD finishes it.
            raise TransferError("verify: the server has no file for the upload yet", retryable=True)
        if record.get("sha256") != sha256:
            await self.client.delete_file(uid_of(entry.url))
            entry.url = None
            self.journal.record(entry)
            raise _FileFailed(
                f"SHA-256 mismatch: local {sha256}, server {record.get('sha256')}; "
                "the server copy was deleted"
            )
        entry.verified_sha256 = sha256
        self.journal.record(entry)
        return sha256


class IngestSession:
    """One ``ferry ingest`` from walk to report; its :attr:`report` is complete whatever
    ends it (success, a refused key, Ctrl-C)."""

    def __init__(self, options: IngestOptions, view: ProgressView) -> None:
        self.options = options
        self.view = view
        self.report = IngestReport(
            server=options.server, started=time.time(), dry_run=options.dry_run
        )
        self.walked: list[LocalFile] = []
        self.unreadable: list[PassedOver] = []

    async def walk(self) -> None:
        """Find the files (in a thread: a big tree takes a while; Ctrl-C abandons it)."""
        options = self.options

        def passed_over(item: PassedOver) -> None:
            target = self.unreadable if item.kind == "unreadable" else self.report.excluded
            target.append(item)

        def find() -> list[LocalFile]:
            return list(
                find_files(
                    options.paths,
                    exclude=options.exclude,
                    follow_symlinks=options.follow_symlinks,
                    skip=journal_files(options.state_path),
                    passed_over=passed_over,
                )
            )

        self.walked = await anyio.to_thread.run_sync(find, abandon_on_cancel=True)

    async def ingest(self, client: TusClient, journal: Journal) -> None:
        """Preflight, plan, then send (unless ``--dry-run``)."""
        info = await client.preflight()
        # Only now, so a wrong --server leaves no state file; --dry-run only reads it.
        await anyio.to_thread.run_sync(journal.load if self.options.dry_run else journal.open)
        planner = Planner(client, journal, parallel=self.options.parallel, max_size=info.max_size)
        try:
            plan = await planner.plan(self.walked)
        except AuthRefused:
            raise ServerUnusable(auth_refused_message(client.has_key)) from None
        except TransferError as exc:
            raise ServerUnusable(f"asking which files the server holds: {exc.message}") from None
        self.report.files += plan.settled
        if self.options.dry_run:
            self.report.files += [_planned(local, entry) for local, entry in plan.to_send]
            return
        if not plan.to_send:
            return
        run = IngestRun(self.options, client, journal, self.view)
        self.view.begin(len(plan.to_send), sum(local.size for local, _ in plan.to_send))
        try:
            await run.run(plan.to_send)
        except* AuthRefused:
            self.report.error = auth_refused_message(client.has_key)
        finally:
            self.view.close()
            self.report.files += run.results

    async def run(self) -> None:
        """Everything, with the client and journal closed at the end."""
        await self.walk()
        journal = Journal(self.options.state_path, self.options.server)
        bandwidth = BandwidthLimit(self.options.bwlimit) if self.options.bwlimit else None
        client = TusClient(
            self.options.server,
            api_key=self.options.api_key,
            connections=self.options.parallel + 2,
            bandwidth=bandwidth,
        )
        try:
            await self.ingest(client, journal)
        except ServerUnusable as exc:
            self.report.error = exc.message
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()
            journal.close()

    def finish(self, seconds: float) -> IngestReport:
        """The report, every walked file in it once, in walk order."""
        report = self.report
        report.seconds = seconds
        done = {item.path for item in report.files}
        report.files += [_unreadable(item) for item in self.unreadable]
        # Stopped early (Ctrl-C, a refused key): the files not finished; a rerun resumes.
        report.files += [
            FileResult(str(local.path), local.relative, local.size, "interrupted")
            for local in self.walked
            if str(local.path) not in done
        ]
        order = {str(local.path): index for index, local in enumerate(self.walked)}
        report.files.sort(key=lambda item: order.get(item.path, len(order)))
        return report


def _planned(local: LocalFile, entry: Entry) -> FileResult:
    reason = "resume the unfinished upload" if entry.url else "upload"
    return FileResult(str(local.path), local.relative, local.size, "planned", reason=reason)


def _unreadable(item: PassedOver) -> FileResult:
    return FileResult(item.path, item.relative, 0, "failed", error=item.reason)


async def run_ingest(options: IngestOptions, view: ProgressView) -> IngestReport:
    """Walk ``options.paths`` and upload everything to ``options.server``.

    The first Ctrl-C (SIGINT) stops the workers and returns the report of what was done
    (``interrupted``); unfinished uploads stay journaled for a rerun. A second Ctrl-C
    ends the process at once.
    """
    started = time.monotonic()
    session = IngestSession(options, view)
    loop = asyncio.get_running_loop()
    work = asyncio.ensure_future(session.run())

    def interrupt() -> None:
        session.report.interrupted = True
        loop.remove_signal_handler(signal.SIGINT)
        work.cancel()

    loop.add_signal_handler(signal.SIGINT, interrupt)
    try:
        await work
    except asyncio.CancelledError:
        if not session.report.interrupted:
            raise
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    return session.finish(time.monotonic() - started)
