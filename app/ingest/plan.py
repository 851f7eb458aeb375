"""Before any byte moves: which files a run must send, and which it can skip.

A file is skipped when this state file says it was verified before, or when the server
already holds a file of this owner with the same name, size and SHA-256 — so a rerun from
another directory (another state file, or none) stores nothing twice. The server is asked
by name in batches (``GET /api/files?name=…&name=…``, a few requests for a thousand
files); only files with a same-name, same-size candidate are hashed, so a first run reads
each file once, while it is sent.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread

from app.ingest.hashing import FileHasher
from app.ingest.journal import Entry, Journal
from app.ingest.results import SKIPPED_BY_JOURNAL, SKIPPED_ON_SERVER, FileResult
from app.ingest.tus_client import TransferError, TusClient, name_batches
from app.ingest.walk import LocalFile

#: Tries of one lookup before the run gives up (the preflight just reached the server).
LOOKUP_ATTEMPTS = 3


@dataclass(slots=True)
class Plan:
    """Files to send (with their journal entries) and files already settled."""

    to_send: list[tuple[LocalFile, Entry]] = field(default_factory=list)
    settled: list[FileResult] = field(default_factory=list)


def uid_of(url: str) -> str:
    """The file UID at the end of an upload URL."""
    return url.rstrip("/").rsplit("/", 1)[-1]


class Planner:
    """Sorts the walked files into sends and skips, asking the server as little as it can."""

    def __init__(
        self, client: TusClient, journal: Journal, *, parallel: int, max_size: int | None
    ) -> None:
        self.client = client
        self.journal = journal
        self.max_size = max_size
        self._limit = asyncio.Semaphore(max(1, parallel))

    async def plan(self, files: Sequence[LocalFile]) -> Plan:
        """The plan for ``files`` (in their order within each list)."""
        plan = Plan()
        unknown: list[LocalFile] = []
        for local in files:
            entry = self.journal.lookup(local)
            if entry is not None and entry.verified_sha256 and entry.url:
                plan.settled.append(_skipped(local, entry.url, entry.verified_sha256))
                plan.settled[-1].reason = SKIPPED_BY_JOURNAL
            elif self.max_size is not None and local.size > self.max_size:
                plan.settled.append(_too_large(local, self.max_size))
            elif entry is not None and entry.url:
                plan.to_send.append((local, entry))  # an unfinished upload: resumed
            else:
                unknown.append(local)
        candidates = await self._stored_by_name(sorted({f.path.name for f in unknown}))
        outcomes = await asyncio.gather(
            *(self._settle(local, candidates.get(local.path.name, ())) for local in unknown)
        )
        for local, outcome in zip(unknown, outcomes, strict=True):
            if outcome is None:
                plan.to_send.append((local, Entry(str(local.path), local.size, local.mtime_ns)))
            else:
                plan.settled.append(outcome)
        return plan

    async def _stored_by_name(self, names: list[str]) -> dict[str, list[dict[str, Any]]]:
        """The server's records under each of ``names`` (as sent: the original file name)."""

        async def lookup(batch: list[str]) -> list[dict[str, Any]]:
            attempt = 1
            while True:
                try:
                    async with self._limit:
                        return await self.client.files_named(batch)
                except TransferError as exc:
                    if not exc.retryable or attempt == LOOKUP_ATTEMPTS:
                        raise
                await asyncio.sleep(0.5 * 2**attempt)
                attempt += 1

        found: dict[str, list[dict[str, Any]]] = defaultdict(list)
        wanted = set(names)
        pages = await asyncio.gather(*(lookup(batch) for batch in name_batches(names)))
        for record in (record for page in pages for record in page):
            metadata = record.get("metadata") or {}
            # The server stores a cleaned name; the metadata keeps the one ingest sent.
            keys = {record.get("name"), metadata.get("filename")} & wanted
            for key in keys:
                found[str(key)].append(record)
        return found

    async def _settle(
        self, local: LocalFile, records: Sequence[dict[str, Any]]
    ) -> FileResult | None:
        """A skip when one of ``records`` is this file's content; ``None``: send it."""
        same_size = [record for record in records if record.get("size") == local.size]
        if not same_size:
            return None
        hasher = FileHasher(local.path)
        try:
            async with self._limit:
                await anyio.to_thread.run_sync(hasher.catch_up, local.size, abandon_on_cancel=True)
        except OSError as exc:
            return FileResult(
                str(local.path), local.relative, local.size, "failed", error=f"reading: {exc}"
            )
        sha256 = hasher.hexdigest()
        match = next((record for record in same_size if record.get("sha256") == sha256), None)
        if match is None:
            return None
        url = self.client.upload_url(str(match["uid"]))
        entry = Entry(str(local.path), local.size, local.mtime_ns, url, sha256)
        self.journal.record(entry)  # the next run from here needs no lookup
        result = _skipped(local, url, sha256)
        result.reason = SKIPPED_ON_SERVER
        return result


def _skipped(local: LocalFile, url: str, sha256: str) -> FileResult:
    return FileResult(str(local.path), local.relative, local.size, "skipped", uid_of(url), sha256)


def _too_large(local: LocalFile, max_size: int) -> FileResult:
    return FileResult(
        str(local.path),
        local.relative,
        local.size,
        "failed",
        error=f"too large: {local.size} bytes, the server takes at most {max_size} (Tus-Max-Size)",
    )
