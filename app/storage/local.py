"""Local-disk backend: finished files live at ``files/<category>/<uid>``."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.to_thread

from app.core.received_crc import ReceivedCrc32c
from app.core.threads import off_loop
from app.storage.backend import Capabilities, StoredObject
from app.storage.range_reader import read_range_prefetching
from app.storage.sniff import Category


class LocalBackend:
    """Stores finished files on the same disk as staging, so completion is a rename."""

    name = "local"

    def __init__(self, files_dir: Path) -> None:
        self.files_dir = files_dir

    async def start(self) -> None:
        """Create the category folders."""
        for category in Category:
            await anyio.Path(self.files_dir / category.value).mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        """Nothing to release."""

    async def is_usable(self) -> bool:
        """The files folder exists and is writable."""
        return await anyio.to_thread.run_sync(os.access, self.files_dir, os.W_OK)

    def capabilities(self) -> Capabilities:
        """None beyond storing: a staged file is moved into place when it completes."""
        return Capabilities()

    def _key_for(self, upload_id: uuid.UUID, category: str) -> str:
        return f"{Category(category).value}/{upload_id}"

    def path_for(self, key: str) -> Path:
        """Absolute path of a stored key; keys are only ever built by :meth:`_key_for`.

        The check is lexical (no ``resolve()``): it runs on every download request, and
        resolving costs an ``lstat`` per path component each time.
        """
        root = Path(os.path.abspath(self.files_dir))
        path = Path(os.path.normpath(root / key))
        if not path.is_relative_to(root) or path == root:
            raise ValueError(f"storage key {key!r} escapes the files directory")
        return path

    async def store(
        self,
        upload_id: uuid.UUID,
        staged_path: Path,
        size: int,
        category: str,
        content_type: str,
        *,
        keep_staged: bool = False,
        carried_whole: ReceivedCrc32c | None = None,
    ) -> StoredObject:
        """Rename (or, ``keep_staged``, hard-link) the staging file into its category folder
        and make the new name durable (``carried_whole`` changes nothing: the staged file is always
        the whole upload here)."""
        key = self._key_for(upload_id, category)
        target = self.path_for(key)
        place = _durable_link if keep_staged else _durable_rename
        await off_loop(place, staged_path, target)
        return StoredObject(key=key, size=size)

    async def find_stored(self, upload_id: uuid.UUID, category: str) -> StoredObject | None:
        """A file that was renamed into place before a crash hid it from the database."""
        for candidate in Category:
            key = self._key_for(upload_id, candidate.value)
            try:
                stat = await anyio.Path(self.path_for(key)).stat()
            except FileNotFoundError:
                continue
            return StoredObject(key=key, size=stat.st_size)
        return None

    async def discard_upload(self, upload_id: uuid.UUID) -> None:
        """Remove a stored file a completion left behind without its row (a crash or a
        database failure between the rename and the filing transaction)."""
        found = await self.find_stored(upload_id, "other")
        if found is not None:
            await self.delete(found.key)

    async def open_range(self, key: str, start: int, length: int) -> AsyncIterator[bytes]:
        """Stream a slice of a stored file (big blocks, read one ahead; see range_reader)."""
        async for block in read_range_prefetching(self.path_for(key), start, length):
            yield block

    async def delete(self, key: str) -> None:
        """Remove a stored file."""
        await anyio.Path(self.path_for(key)).unlink(missing_ok=True)


def _durable_rename(source: Path, target: Path) -> None:
    """Rename and fsync the target folder, so the new name survives a crash.

    The file's bytes were fdatasync'ed when they were staged. If the old name survives a
    crash too, start-up reconciliation removes it as a staging file without a live upload.
    """
    os.replace(source, target)
    _sync_directory(target.parent)


def _durable_link(source: Path, target: Path) -> None:
    """Give the staged file its stored name as well (a hard link: no byte is copied)."""
    try:
        os.link(source, target)
    except FileExistsError:  # an earlier attempt linked it; the bytes are the same upload's
        os.unlink(target)
        os.link(source, target)
    _sync_directory(target.parent)


def _sync_directory(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
