"""A small asynchronous tus 1.0 client on aiohttp, made for many files at once.

Why our own rather than tuspy or aiotus: tuspy is synchronous (one file at a time per
thread, and a HEAD before every upload); aiotus creates with ``creation`` only and gives
no hook to journal the upload URL between creation and the first byte, which is what
makes ``kill -9`` + rerun duplicate-free. This client shares one HTTP/1.1 connection pool
between all workers, streams chunks from disk in bounded blocks, hashes the file while
sending it, and classifies every failure as retryable or final.

aiohttp rather than httpx: for a 64 KiB creation-with-upload it costs about 0.7 ms of
client CPU against httpx's 3.3 ms (measured side by side on this project's 2-core machine),
and for thousands of small files the client shares those cores with the server.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp
import anyio.to_thread

TUS_VERSION = "1.0.0"
READ_BLOCK = 1024 * 1024

#: Statuses worth retrying: the server is busy, restarting, or the upload is being written.
RETRYABLE_STATUSES = frozenset({408, 409, 423, 425, 429, 500, 502, 503, 504})


class TransferError(Exception):
    """A request failed; ``retryable`` tells whether trying again can help."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.status = status


class UploadGone(TransferError):
    """The upload URL answers 404/410 (expired, terminated, or another server's)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message, retryable=True, status=status)


def encode_metadata(values: dict[str, str]) -> str:
    """tus ``Upload-Metadata``: ``key base64(value)`` pairs."""
    return ",".join(
        f"{key} {base64.b64encode(value.encode('utf-8')).decode('ascii')}"
        for key, value in values.items()
    )


@dataclass(frozen=True, slots=True)
class Answer:
    """A finished response: status, headers (case-insensitive) and the body as text."""

    status_code: int
    headers: Mapping[str, str]
    text: str

    def json(self) -> Any:
        """The body parsed as JSON (raises :class:`TransferError` if it is not)."""
        try:
            return json.loads(self.text)
        except ValueError:
            raise TransferError("the server's answer is not JSON", retryable=False) from None


def _failure(response: Answer, what: str) -> TransferError:
    text = response.text.strip().splitlines()[0][:300] if response.text.strip() else ""
    message = f"{what}: HTTP {response.status_code} {text}".rstrip()
    if response.status_code in (404, 410):
        return UploadGone(message, response.status_code)
    return TransferError(
        message, retryable=response.status_code in RETRYABLE_STATUSES, status=response.status_code
    )


class FileHasher:
    """SHA-256 of a local file computed while its bytes are sent, whatever the resume order.

    Bytes are hashed only in order: a resend of an already-hashed range is skipped, and a
    resume that starts past the hashed prefix first reads the gap from disk.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._digest = hashlib.sha256()
        self.hashed = 0

    def take(self, offset: int, block: bytes) -> None:
        """Hash the part of ``block`` (at ``offset``) that extends the hashed prefix."""
        end = offset + len(block)
        if offset <= self.hashed < end:
            self._digest.update(memoryview(block)[self.hashed - offset :])
            self.hashed = end

    def catch_up(self, offset: int) -> None:
        """Hash the file from the hashed prefix up to ``offset`` (blocking: call in a thread)."""
        if self.hashed >= offset:
            return
        with self.path.open("rb") as handle:
            handle.seek(self.hashed)
            while self.hashed < offset:
                block = handle.read(min(READ_BLOCK, offset - self.hashed))
                if not block:
                    raise OSError(f"{self.path} became shorter while uploading")
                self._digest.update(block)
                self.hashed += len(block)

    def hexdigest(self) -> str:
        """The digest once the whole file was hashed."""
        return self._digest.hexdigest()


def _read_file_start(path: Path, size: int, hasher: FileHasher) -> bytes:
    """A small file's bytes in one trip to a worker thread (open, read, hash, close)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return _read_block(fd, 0, size, hasher)
    finally:
        os.close(fd)


def _read_block(fd: int, offset: int, size: int, hasher: FileHasher) -> bytes:
    block = os.pread(fd, size, offset)
    if len(block) != size:
        raise OSError("the file became shorter while uploading")
    hasher.take(offset, block)
    return block


class TusClient:
    """tus requests against one server; every method raises :class:`TransferError`."""

    def __init__(
        self,
        server: str,
        *,
        api_key: str | None = None,
        connections: int = 8,
        timeout: float = 60.0,
    ) -> None:
        self.server = server.rstrip("/")
        self._headers = {"Tus-Resumable": TUS_VERSION, "User-Agent": "ferry-ingest"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._connections = connections
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=timeout)
        self._session: aiohttp.ClientSession | None = None

    @property
    def _http(self) -> aiohttp.ClientSession:
        # Created lazily: an aiohttp session belongs to the event loop that first uses it.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=self._connections),
                auto_decompress=False,
            )
        return self._session

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def absolute(self, url: str) -> str:
        """``url`` (absolute, or a path on the server) as an absolute URL."""
        return urljoin(self.server + "/", url)

    async def _request(self, method: str, url: str, what: str, **kwargs: Any) -> Answer:
        try:
            async with self._http.request(
                method, self.absolute(url), allow_redirects=False, **kwargs
            ) as response:
                text = await response.text(errors="replace")
                return Answer(response.status, response.headers, text)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise TransferError(
                f"{what}: {exc.__class__.__name__} {exc}".strip(), retryable=True
            ) from None

    async def create(self, length: int, metadata: dict[str, str]) -> str:
        """tus creation; returns the absolute upload URL."""
        response = await self._request(
            "POST",
            "/files/",
            "create",
            headers={"Upload-Length": str(length), "Upload-Metadata": encode_metadata(metadata)},
        )
        if response.status_code != 201 or "location" not in response.headers:
            raise _failure(response, "create")
        return self.absolute(response.headers["location"])

    async def create_with_body(
        self,
        length: int,
        metadata: dict[str, str],
        path: Path,
        hasher: FileHasher,
        on_bytes: Callable[[int], None],
    ) -> tuple[str, int]:
        """creation-with-upload: create and send the whole (small) file in one request.

        Returns the upload URL and the offset the server acknowledged.
        """
        content = await self._read_small(path, length, hasher)
        on_bytes(length)
        response = await self._request(
            "POST",
            "/files/",
            "create",
            data=content,
            headers={
                "Upload-Length": str(length),
                "Upload-Metadata": encode_metadata(metadata),
                "Content-Type": "application/offset+octet-stream",
            },
        )
        if response.status_code != 201 or "location" not in response.headers:
            raise _failure(response, "create")
        return self.absolute(response.headers["location"]), int(
            response.headers.get("upload-offset", "0")
        )

    @staticmethod
    async def _read_small(path: Path, length: int, hasher: FileHasher) -> bytes:
        return await anyio.to_thread.run_sync(_read_file_start, path, length, hasher)

    async def offset(self, url: str) -> int:
        """tus HEAD: the server's offset of an upload (raises :class:`UploadGone`)."""
        response = await self._request("HEAD", url, "status")
        if response.status_code != 200 or "upload-offset" not in response.headers:
            raise _failure(response, "status")
        return int(response.headers["upload-offset"])

    async def send_chunk(
        self,
        url: str,
        path: Path,
        offset: int,
        length: int,
        hasher: FileHasher,
        on_bytes: Callable[[int], None],
    ) -> int:
        """tus PATCH of ``length`` bytes of ``path`` from ``offset``; returns the new offset.

        The body streams from disk in blocks of at most ``READ_BLOCK``; ``on_bytes`` is
        told as blocks leave (for progress bars).
        """
        fd = await anyio.to_thread.run_sync(os.open, path, os.O_RDONLY)
        try:
            if length <= READ_BLOCK:
                content: bytes | AsyncIterator[bytes] = await anyio.to_thread.run_sync(
                    _read_block, fd, offset, length, hasher
                )
                on_bytes(length)
            else:
                content = self._stream(fd, offset, length, hasher, on_bytes)
            response = await self._request(
                "PATCH",
                url,
                "upload",
                data=content,
                headers={
                    "Upload-Offset": str(offset),
                    "Content-Type": "application/offset+octet-stream",
                    "Content-Length": str(length),
                },
            )
        finally:
            os.close(fd)
        if response.status_code != 204 or "upload-offset" not in response.headers:
            raise _failure(response, "upload")
        return int(response.headers["upload-offset"])

    @staticmethod
    async def _stream(
        fd: int, offset: int, length: int, hasher: FileHasher, on_bytes: Callable[[int], None]
    ) -> AsyncIterator[bytes]:
        position, end = offset, offset + length
        while position < end:
            size = min(READ_BLOCK, end - position)
            block = await anyio.to_thread.run_sync(_read_block, fd, position, size, hasher)
            position += size
            on_bytes(size)
            yield block

    async def file_record(self, uid: str) -> dict[str, Any]:
        """The server's record of a finished file (``GET /api/files/{uid}``)."""
        response = await self._request("GET", f"/api/files/{uid}", "verify")
        if response.status_code != 200:
            raise _failure(response, "verify")
        record = response.json()
        if not isinstance(record, dict):
            raise TransferError("verify: the server's answer is not a JSON object", retryable=False)
        return record

    async def files_by_uid(self, uids: list[str]) -> dict[str, dict[str, Any]]:
        """Server records of several files in one request (``GET /api/files?uid=…``)."""
        params = [("uid", uid) for uid in uids] + [("limit", str(max(1, len(uids))))]
        response = await self._request("GET", "/api/files", "verify", params=params)
        if response.status_code != 200:
            raise _failure(response, "verify")
        return {str(item["uid"]): item for item in response.json().get("items", [])}

    async def files_with_sha256(self, sha256: str) -> list[dict[str, Any]]:
        """Server records of files with this content (to adopt an unacknowledged upload)."""
        response = await self._request(
            "GET", "/api/files", "lookup", params={"sha256": sha256, "limit": "1000"}
        )
        if response.status_code != 200:
            raise _failure(response, "lookup")
        items = response.json().get("items", [])
        return [item for item in items if isinstance(item, dict)]

    async def delete_file(self, uid: str) -> None:
        """Best effort: remove a file that failed verification."""
        try:
            await self._request("DELETE", f"/api/files/{uid}", "delete")
        except TransferError:
            return
