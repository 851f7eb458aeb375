"""SHA-256 of a local file, computed from the blocks read to send it (one read per byte)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

READ_BLOCK = 1024 * 1024


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


def read_file_start(path: Path, size: int, hasher: FileHasher) -> bytes:
    """A small file's bytes in one trip to a worker thread (open, read, hash, close)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_block(fd, 0, size, hasher)
    finally:
        os.close(fd)


def read_block(fd: int, offset: int, size: int, hasher: FileHasher) -> bytes:
    block = os.pread(fd, size, offset)
    if len(block) != size:
        raise OSError("the file became shorter while uploading")
    hasher.take(offset, block)
    return block
