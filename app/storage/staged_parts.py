"""Reading parts straight from a staging file, checksumming them, and reclaiming them.

Parts are sent to S3 from the staged file (never copied into memory whole): a small
file-like view streams one byte range in bounded reads. Once S3 holds a part and the
ledger says so, its staging space is given back with ``fallocate(PUNCH_HOLE|KEEP_SIZE)``:
the file keeps its size (offsets and the service's size checks stay valid) but stops
using disk, and the first :data:`KEEP_HEAD_BYTES` stay readable for content sniffing.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import errno
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio.to_thread
import google_crc32c

from app.storage.sniff import SNIFF_SIZE

READ_SIZE = 1024 * 1024
CHECKSUM_READ_SIZE = 128 * 1024
"""Blocks of the CRC32C pass: up to 2 x FERRY_S3_PART_CONCURRENCY of them are alive at once,
and 1 MiB blocks cost ~6 MiB of peak RSS with 16 parallel uploads for no CPU gain (CRC32C
runs at ~8 GiB/s; the pread per block is what costs)."""
KEEP_HEAD_BYTES = SNIFF_SIZE
"""Never reclaimed: the upload service sniffs the content type from these bytes."""

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_fallocate = getattr(_libc, "fallocate", None)
if _fallocate is not None:
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    _fallocate.restype = ctypes.c_int


class StagedRangeReader(io.RawIOBase):
    """A seekable, read-only view of ``[start, start + size)`` of a staging file.

    The HTTP client reads it in bounded chunks and seeks back to 0 when it retries.
    """

    def __init__(self, path: Path, start: int, size: int) -> None:
        super().__init__()
        self._fd = os.open(path, os.O_RDONLY)
        self._start = start
        self._size = size
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        self._position = max(0, min(self._size, base + offset))
        return self._position

    def read(self, size: int = -1) -> bytes:
        remaining = self._size - self._position
        if size is None or size < 0 or size > remaining:
            size = remaining
        if size <= 0:
            return b""
        block = os.pread(self._fd, size, self._start + self._position)
        if not block:
            raise OSError(errno.EIO, "staging file ended before the part did")
        self._position += len(block)
        return block

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        block = self.read(len(buffer))
        buffer[: len(block)] = block
        return len(block)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()

    def __len__(self) -> int:
        return self._size


class StagedPartBody:
    """A part body for the HTTP client, read from staging in 1 MiB blocks in a worker thread.

    aiohttp sends an async iterable as it comes; reading 1 MiB per thread hop instead of
    the 256 KiB it reads from a file object costs a quarter of the hops. ``read``/``seek``
    keep botocore's contract (it validates the body and seeks back to 0 on a retry; every
    new iteration starts from the current position).
    """

    def __init__(self, path: Path, start: int, size: int) -> None:
        self._reader = StagedRangeReader(path, start, size)

    def read(self, size: int = -1) -> bytes:
        return self._reader.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._reader.seek(offset, whence)

    def tell(self) -> int:
        return self._reader.tell()

    def __len__(self) -> int:
        return len(self._reader)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._blocks()

    async def _blocks(self) -> AsyncIterator[bytes]:
        while block := await anyio.to_thread.run_sync(self._reader.read, READ_SIZE):
            yield block

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> StagedPartBody:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def crc32c_of_range(path: Path, start: int, size: int) -> str:
    """Base64 CRC32C of a staged byte range, as S3's ``x-amz-checksum-crc32c`` wants it."""
    value = 0
    with StagedRangeReader(path, start, size) as reader:
        while block := reader.read(CHECKSUM_READ_SIZE):
            value = int(google_crc32c.extend(value, block))
    return crc32c_base64(value)


def crc32c_base64(value: int) -> str:
    """A CRC32C value in the base64 form of S3's ``x-amz-checksum-crc32c``."""
    return base64.b64encode(value.to_bytes(4, "big")).decode("ascii")


def reclaim_range(path: Path, start: int, end: int) -> bool:
    """Give the disk space of ``[start, end)`` back, keeping the file size and its head.

    Returns ``False`` when the file system cannot punch holes (the bytes then simply stay
    until the staging file is removed).
    """
    start = max(start, KEEP_HEAD_BYTES)
    if _fallocate is None or end <= start:
        return False
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return False
    try:
        if _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, start, end - start) != 0:
            code = ctypes.get_errno()
            if code in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return False
            raise OSError(code, os.strerror(code), str(path))
    finally:
        os.close(fd)
    return True
