"""The staging area: one append-only file per unfinished upload on local disk.

A PATCH body streams into its upload's staging file through fixed-size buffers; nothing
holds a whole body in memory. Writes and hashing run in worker threads (hashlib releases
the GIL on large buffers) while the event loop fills the next buffer, and the file is
fdatasync'ed before the new offset is committed, so an acknowledged byte survives
``kill -9`` (invariant 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import anyio
import anyio.to_thread

from app.core.checksums import ChunkDigest
from app.core.threads import off_loop
from app.errors import InsufficientStorage, is_disk_full

WRITE_BUFFER_BUDGET = 4 * 1024 * 1024
"""Body bytes all open writers hold at once, shared equally among them.

Every write + hash is a hop to a worker thread, and hops are dear on a small VM (~0.3
CPU-s per GiB between 512 KiB and 1 MiB buffers for one upload), while gathered bytes
are memory per upload (16 parallel uploads with 512 KiB buffers: ~16 MiB of peak RSS). A
shared budget gives a lone upload large, overlapped buffers (one written while the next
fills) and many uploads smaller ones, one at a time: with many bodies arriving, the
others keep the event loop busy while one writer waits for its write."""
PAGE_DROP_LAG = 8 * 1024 * 1024
"""How far behind the written end a writer evicts pages (when it does): far enough that
the range is usually on disk already, near enough to recycle pages within one body."""
MIN_WRITE_BUFFER_SIZE = 128 * 1024
MAX_WRITE_BUFFER_SIZE = 1024 * 1024
TAIL_HASHED_BESIDE_SYNC = 256 * 1024
"""A last block at least this large is hashed in a second worker thread while the first
fdatasyncs, instead of before the fdatasync in the same trip: hashing a 1 MiB tail takes
~0.6 ms, which every PATCH would otherwise add to its wait for the disk; below this, the
extra hand-offs cost more than they save (a small upload's body stays one trip)."""
READ_BUFFER_SIZE = 1024 * 1024
#: Most buffers one ``writev`` takes (Linux: 1024).
_IOV_MAX = os.sysconf("SC_IOV_MAX")


class StagingArea:
    """Locates, sizes, truncates and removes staging files; knows nothing of HTTP."""

    def __init__(
        self, root: Path, *, drops_written_pages: bool = False, syncs: bool = True
    ) -> None:
        self.root = root
        self.syncs = syncs
        """Whether writers make staged bytes durable (fdatasync) before they count. Not
        where storage holds every acknowledged byte itself (S3): staging is only a buffer
        there, and a crash's staged leftovers are read back from S3, never trusted."""
        self.open_writers = 0
        """Writers open right now; they share :data:`WRITE_BUFFER_BUDGET`."""
        self.drops_written_pages = drops_written_pages
        """Whether writers evict what they wrote from the page cache once it is on disk.

        Right where staged bytes are not read back soon (the local backend renames the file
        into place; S3 sends parts from the page cache, so it keeps them)."""

    def prepare(self) -> None:
        """Create the staging directory (blocking; called once at start-up)."""
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, upload_id: uuid.UUID) -> Path:
        """The staging file of an upload; the UUID type keeps traversal impossible."""
        return self.root / str(upload_id)

    async def create(self, upload_id: uuid.UUID) -> None:
        """Create an empty staging file."""
        await off_loop(self._create_sync, self.path_for(upload_id))

    @staticmethod
    def _create_sync(path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)

    async def size(self, upload_id: uuid.UUID) -> int | None:
        """Bytes in the staging file, or ``None`` if there is none."""
        return await off_loop(_size_or_none, self.path_for(upload_id))

    async def truncate(self, upload_id: uuid.UUID, size: int) -> None:
        """Cut the staging file back to ``size`` bytes and make that durable."""
        await anyio.to_thread.run_sync(self._truncate_sync, self.path_for(upload_id), size)

    @staticmethod
    def _truncate_sync(path: Path, size: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, size)
            os.fdatasync(fd)
        finally:
            os.close(fd)

    async def remove(self, upload_id: uuid.UUID) -> None:
        """Delete the staging file if it exists."""
        await off_loop(self.path_for(upload_id).unlink, True)

    async def open_writer(
        self,
        upload_id: uuid.UUID,
        offset: int,
        digests: Sequence[ChunkDigest],
        head_size: int = 0,
    ) -> StagingWriter:
        """Open (or create) the staging file for appending at ``offset``.

        Anything past ``offset`` is a leftover of a write that was never acknowledged, so it
        is cut off first: the file then always ends at the committed offset.
        """
        fd = await off_loop(self._open_for_append, self.path_for(upload_id), offset)
        self.open_writers += 1
        share = WRITE_BUFFER_BUDGET // self.open_writers
        buffer_size = max(MIN_WRITE_BUFFER_SIZE, min(MAX_WRITE_BUFFER_SIZE, share))
        return StagingWriter(
            fd,
            offset,
            digests,
            head_size,
            buffer_size,
            overlapped=2 * buffer_size <= share,
            drops_written_pages=self.drops_written_pages,
            syncs=self.syncs,
            on_close=self._writer_closed,
        )

    def _writer_closed(self) -> None:
        self.open_writers -= 1

    @staticmethod
    def _open_for_append(path: Path, offset: int) -> int:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size != offset:
                os.ftruncate(fd, offset)
            os.lseek(fd, offset, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        return fd

    async def read_range(
        self, upload_id: uuid.UUID, start: int, length: int
    ) -> AsyncIterator[bytes]:
        """Stream ``length`` bytes of a staging file from ``start``."""
        async for block in read_file_range(self.path_for(upload_id), start, length):
            yield block

    def list_ids(self) -> list[uuid.UUID]:
        """Ids of every staging file (blocking; used by start-up reconciliation)."""
        ids: list[uuid.UUID] = []
        for entry in self.root.iterdir():
            try:
                ids.append(uuid.UUID(entry.name))
            except ValueError:
                continue
        return ids


async def read_file_range(path: Path, start: int, length: int) -> AsyncIterator[bytes]:
    """Stream part of a file in bounded blocks without blocking the event loop."""
    async with await anyio.open_file(path, "rb") as handle:
        await handle.seek(start)
        remaining = length
        while remaining > 0:
            block = await handle.read(min(READ_BUFFER_SIZE, remaining))
            if not block:
                break
            remaining -= len(block)
            yield block


_SYNC_FILE_RANGE_WAIT_BEFORE = 1  # from <fcntl.h>
_SYNC_FILE_RANGE_WRITE = 2
_SYNC_FILE_RANGE_WAIT_AFTER = 4


def _load_sync_file_range() -> Callable[[int, int, int, int], None]:
    """Linux's ``sync_file_range`` (not in Python's ``os`` module), else a no-op."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return lambda fd, offset, length, flags: None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int

    def sync_range(fd: int, offset: int, length: int, flags: int) -> None:
        function(fd, offset, length, flags)  # a failure costs speed, never durability

    return sync_range


_sync_file_range = _load_sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writeback of a just-written block without waiting for it, so the disk works
    while the next block arrives and the fdatasync before acknowledging has little left to
    wait for."""
    _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def drop_written_pages(fd: int, offset: int, length: int) -> None:
    """Wait until a written range is on disk, then evict it from the page cache.

    Not a durability step (fdatasync is): clean pages can be dropped, and an upload that
    is not read back soon should not fill memory with write-once pages. Recycling them
    also saves the kernel CPU time: on this project's VMs, writing into never-used page
    cache costs several times the system time of writing into recycled pages (4 GiB
    staged by 16 parallel uploads: ~6 s against ~1.5 s).
    """
    _sync_file_range(
        fd,
        offset,
        length,
        _SYNC_FILE_RANGE_WAIT_BEFORE | _SYNC_FILE_RANGE_WRITE | _SYNC_FILE_RANGE_WAIT_AFTER,
    )
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


_M_ARENA_MAX = -8  # from glibc's <malloc.h>


def limit_malloc_retention() -> None:
    """Cap glibc at two malloc arenas so the block buffers of worker threads are reused.

    Blocks are written, hashed and read in worker threads; with glibc's defaults every
    thread gets an arena of its own that keeps what it freed, and RSS grows by tens of MiB
    under parallel uploads (S3, 16 x 256 MiB: 186 MiB peak; 165 MiB with two arenas). A fixed
    mmap threshold would return even more memory but costs ~10x the CPU per byte read
    (page faults on every fresh block), so it is not set. No-op off glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mallopt(_M_ARENA_MAX, 2)


class StagingWriter:
    """Appends one request body to a staging file, updating digests as it goes.

    Pieces from the ASGI server (often ~64 KiB) are gathered into ``buffer_size`` buffers
    (the writer's share of :data:`WRITE_BUFFER_BUDGET`); each full buffer is hashed and
    written (one ``writev``, no joining copy) in a worker thread while the event loop keeps
    receiving into the next one (``overlapped``; at most two buffers exist at a time), or,
    when many writers share the budget, before it takes the next piece (one buffer).
    """

    def __init__(
        self,
        fd: int,
        offset: int,
        digests: Sequence[ChunkDigest],
        head_size: int = 0,
        buffer_size: int = MAX_WRITE_BUFFER_SIZE,
        *,
        overlapped: bool = True,
        drops_written_pages: bool = False,
        syncs: bool = True,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._fd = fd
        self._syncs = syncs
        self.buffer_size = buffer_size
        """Gathered bytes that trigger a write (from this writer's share of the budget)."""
        self.overlapped = overlapped
        """Whether the next buffer fills while the last one is written."""
        self._drops_written_pages = drops_written_pages
        self._dropped_upto = offset
        """End of the range already evicted from the page cache (see
        :func:`drop_written_pages`); it trails the written end by :data:`PAGE_DROP_LAG`."""
        self._on_close = on_close
        self._digests = tuple(digests)
        self._pieces: list[bytes] = []
        self._buffered = 0
        self._pending: asyncio.Future[None] | None = None
        self._head_size = head_size if offset == 0 else 0
        self.head = bytearray()
        """The file's first ``head_size`` bytes when this body starts it (for sniffing
        without reading them back)."""
        self.start_offset = offset
        self.written = 0
        """Bytes handed to the OS so far (not yet durable until :meth:`sync`)."""
        self.disk_full = False
        """A write found the disk full (ENOSPC, EDQUOT). The writer takes nothing more; the
        bytes written before it stay, hashed, and :meth:`sync` makes them durable."""

    async def write(self, data: bytes) -> None:
        """Take one piece of the body; raises :class:`InsufficientStorage` once the disk is
        full (the piece, and any still buffered, are not written)."""
        if self.disk_full:
            raise InsufficientStorage()
        if len(self.head) < self._head_size:
            self.head += data[: self._head_size - len(self.head)]
        if self.overlapped and self._buffered >= self.buffer_size:
            # A full buffer goes out when the next piece comes: the one that ends the body
            # is left to sync(), which hashes it while the fdatasync runs.
            await self._flush_buffer()
        self._pieces.append(data)
        self._buffered += len(data)
        if not self.overlapped and self._buffered >= self.buffer_size:
            await self._flush_buffer()

    def _take_buffer(self) -> list[bytes]:
        pieces, self._pieces, self._buffered = self._pieces, [], 0
        return pieces

    async def _flush_buffer(self) -> None:
        await self._wait_pending()
        pieces = self._take_buffer()
        if not pieces:
            return
        loop = asyncio.get_running_loop()
        self._pending = loop.run_in_executor(None, self._write_block, pieces)
        if not self.overlapped:
            await self._wait_pending()

    def _write_block(self, pieces: list[bytes]) -> None:
        """Write one buffer's pieces with a single ``writev`` (no joining copy), start their
        writeback, then hash what landed (the disk works meanwhile): after a full disk cut
        the block short, the digests (the running SHA-256 saved with the offset) cover
        exactly the bytes in the file."""
        size, full = self._write_unhashed(pieces)
        _hash_prefix(self._digests, pieces, size)
        if full is not None:
            raise InsufficientStorage() from full

    def _write_unhashed(self, pieces: list[bytes]) -> tuple[int, OSError | None]:
        """Write and start writeback; the bytes written and the full disk's error, if any
        (recorded in :attr:`disk_full`). The caller hashes the bytes written."""
        offset = self.start_offset + self.written
        size, full = _write_all(self._fd, pieces)
        if size and self._syncs:
            start_writeback(self._fd, offset, size)
        self.written += size
        if full is not None:
            self.disk_full = True
        else:
            self._drop_lagging_pages()
        return size, full

    def _drop_lagging_pages(self) -> None:
        """Evict what lies :data:`PAGE_DROP_LAG` behind the written end (when dropping)."""
        if self._drops_written_pages:
            # Blocks a few MiB behind are on their way to disk already: waiting for them
            # rarely waits at all.
            lagging_end = self.start_offset + self.written - PAGE_DROP_LAG
            if lagging_end - self._dropped_upto >= PAGE_DROP_LAG:
                drop_written_pages(self._fd, self._dropped_upto, lagging_end - self._dropped_upto)
                self._dropped_upto = lagging_end

    async def _wait_pending(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending

    async def sync(self) -> int:
        """Write what is buffered and fdatasync; returns the durable end offset.

        Once the disk is full (:attr:`disk_full`, also when this last write fills it) the
        unwritten rest is dropped and what was written before is synced. A failing
        fdatasync raises: then none of this writer's bytes is known to be durable.
        """
        with contextlib.suppress(InsufficientStorage):  # recorded in disk_full
            await self._wait_pending()
        pieces = [] if self.disk_full else self._take_buffer()
        if self._syncs and self._digests and _total(pieces) >= TAIL_HASHED_BESIDE_SYNC:
            # The acknowledgement waits for this: the disk and the hashing work side by side.
            size, _ = await off_loop(self._write_unhashed, pieces)
            await _all_settled(
                off_loop(self._sync_written),
                off_loop(_hash_prefix, self._digests, pieces, size),
            )
        else:
            # The last block and the fdatasync share one trip to a worker thread: a small
            # upload's whole body then costs a single hand-off.
            await off_loop(self._write_and_sync, pieces)
        return self.start_offset + self.written

    def _write_and_sync(self, pieces: list[bytes]) -> None:
        if pieces:
            with contextlib.suppress(InsufficientStorage):  # what was written is synced below
                self._write_block(pieces)
        self._sync_written()

    def _sync_written(self) -> None:
        """fdatasync what was written (then evict it, when this writer drops pages)."""
        if self._syncs:
            os.fdatasync(self._fd)
        end = self.start_offset + self.written
        if self._drops_written_pages and end > self._dropped_upto:
            drop_written_pages(self._fd, self._dropped_upto, end - self._dropped_upto)
            self._dropped_upto = end

    async def close(self) -> None:
        """Close the file; buffered bytes that were not synced are dropped."""
        try:
            with contextlib.suppress(InsufficientStorage):  # never acknowledged anyway
                await self._wait_pending()
        finally:
            on_close, self._on_close = self._on_close, None
            try:
                os.close(self._fd)
            finally:
                if on_close is not None:
                    on_close()


def _total(pieces: list[bytes]) -> int:
    return sum(len(piece) for piece in pieces)


async def _all_settled(*calls: Awaitable[None]) -> None:
    """Await every call, then raise the first failure: none is left running behind."""
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


def _size_or_none(path: Path) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def _write_all(fd: int, pieces: list[bytes]) -> tuple[int, OSError | None]:
    """``writev`` every piece, resuming after a short write.

    Returns the bytes written and, when a full disk stopped the writing, its error (any
    other error is raised).
    """
    views = [memoryview(piece) for piece in pieces if piece]
    written = 0
    while views:
        try:
            count = os.writev(fd, views[:_IOV_MAX])
        except OSError as error:
            if not is_disk_full(error):
                raise
            return written, error
        written += count
        while views and count >= len(views[0]):
            count -= len(views[0])
            views.pop(0)
        if count:
            views[0] = views[0][count:]
    return written, None


def _hash_prefix(digests: Sequence[ChunkDigest], pieces: list[bytes], size: int) -> None:
    """Feed the first ``size`` bytes of ``pieces`` to every digest."""
    left = size
    for piece in pieces:
        if left <= 0:
            return
        part = piece if len(piece) <= left else piece[:left]
        for digest in digests:
            digest.update(part)
        left -= len(part)
