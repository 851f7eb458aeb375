"""The staging writer: pieces land in order and are hashed as one stream, whatever their sizes."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import subprocess
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from app.errors import InsufficientStorage
from app.storage.staging import (
    MAX_WRITE_BUFFER_SIZE,
    MIN_WRITE_BUFFER_SIZE,
    TAIL_HASHED_BESIDE_SYNC,
    WRITE_BUFFER_BUDGET,
    StagingArea,
    StagingWriter,
)

#: More tiny pieces than one writev takes (Linux's IOV_MAX is 1024) within one buffer.
MANY_TINY_PIECES = 1100


def pieces_of_mixed_sizes() -> list[bytes]:
    rng = random.Random(7)
    tiny = [rng.randbytes(rng.randint(1, 300)) for _ in range(MANY_TINY_PIECES)]
    large = [rng.randbytes(rng.randint(64 * 1024, 320 * 1024)) for _ in range(12)]
    one_huge = [rng.randbytes(3 * MAX_WRITE_BUFFER_SIZE + 5)]
    return [*large[:4], *tiny, *one_huge, *large[4:], *tiny[:10]]


async def test_pieces_of_any_size_land_in_order_and_are_hashed_as_one_stream(
    tmp_path: Path,
) -> None:
    area = StagingArea(tmp_path)
    area.prepare()
    upload_id = uuid.uuid4()
    await area.create(upload_id)
    head = b"already staged"
    area.path_for(upload_id).write_bytes(head)
    digest = hashlib.sha256(head)
    writer = await area.open_writer(upload_id, len(head), [digest])
    pieces = pieces_of_mixed_sizes()
    for piece in pieces:
        await writer.write(piece)
    end = await writer.sync()
    await writer.close()
    body = b"".join(pieces)
    assert end == len(head) + len(body)
    assert area.path_for(upload_id).read_bytes() == head + body
    assert digest.hexdigest() == hashlib.sha256(head + body).hexdigest()


async def open_writers(area: StagingArea, count: int) -> dict[uuid.UUID, StagingWriter]:
    """``count`` writers open at once, in the order they were opened."""
    writers = {}
    for _ in range(count):
        upload_id = uuid.uuid4()
        await area.create(upload_id)
        writers[upload_id] = await area.open_writer(upload_id, 0, [])
    return writers


async def test_open_writers_share_the_buffer_budget_and_give_it_back_on_close(
    tmp_path: Path,
) -> None:
    area = StagingArea(tmp_path)
    area.prepare()
    writers = list((await open_writers(area, 40)).values())
    sizes = [writer.buffer_size for writer in writers]
    assert sizes[0] == MAX_WRITE_BUFFER_SIZE, "a lone upload gets large buffers"
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[15] == WRITE_BUFFER_BUDGET // 16
    assert sizes[-1] == MIN_WRITE_BUFFER_SIZE, "never below the floor"
    assert writers[0].overlapped, "a lone upload fills one buffer while the last is written"
    assert not writers[15].overlapped, "crowded writers hold one buffer at a time"
    for writer in writers:
        await writer.close()
    assert area.open_writers == 0
    upload_id = uuid.uuid4()
    await area.create(upload_id)
    writer = await area.open_writer(upload_id, 0, [])
    assert writer.buffer_size == MAX_WRITE_BUFFER_SIZE
    await writer.close()


async def test_a_crowded_writer_has_written_each_full_buffer_before_taking_more(
    tmp_path: Path,
) -> None:
    area = StagingArea(tmp_path)
    area.prepare()
    writers = await open_writers(area, 16)
    crowded_id, crowded = list(writers.items())[-1]
    assert not crowded.overlapped
    path = area.path_for(crowded_id)
    expected = b""
    for index in range(4):
        piece = bytes([index]) * crowded.buffer_size
        expected += piece
        await crowded.write(piece)
        assert path.stat().st_size == len(expected), "the buffer is on disk already"
    assert await crowded.sync() == len(expected)
    for writer in writers.values():
        await writer.close()
    assert path.read_bytes() == expected


def resident_bytes(path: Path) -> int:
    """Bytes of ``path`` in the page cache (util-linux's ``fincore``)."""
    output = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(output.strip())


async def test_a_writer_of_the_local_backend_leaves_no_written_pages_in_memory(
    tmp_path: Path,
) -> None:
    """Write-once staged bytes are evicted once on disk (S3, which reads them back, keeps
    them); the bytes themselves are untouched."""
    body = random.Random(3).randbytes(24 * 1024 * 1024)
    resident = {}
    for drops in (False, True):
        area = StagingArea(tmp_path / str(drops), drops_written_pages=drops)
        area.prepare()
        upload_id = uuid.uuid4()
        await area.create(upload_id)
        writer = await area.open_writer(upload_id, 0, [])
        for start in range(0, len(body), 64 * 1024):
            await writer.write(body[start : start + 64 * 1024])
        assert await writer.sync() == len(body)
        await writer.close()
        resident[drops] = resident_bytes(area.path_for(upload_id))
        assert area.path_for(upload_id).read_bytes() == body
    assert resident[False] == len(body), "without dropping, the written pages stay cached"
    assert resident[True] == 0


class _DiskWithRoomFor:
    """``os.writev`` on a disk with room for ``room`` more bytes: short writes, then ENOSPC."""

    def __init__(self, room: int) -> None:
        self.room = room

    def __call__(self, fd: int, buffers: Sequence[memoryview]) -> int:
        if self.room == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        data = b"".join(bytes(buffer) for buffer in buffers)[: self.room]
        self.room -= len(data)
        return os.write(fd, data)


async def test_a_full_disk_stops_the_writer_and_keeps_exactly_what_was_written_synced_and_hashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    area = StagingArea(tmp_path)
    area.prepare()
    upload_id = uuid.uuid4()
    await area.create(upload_id)
    digest = hashlib.sha256()
    writer = await area.open_writer(upload_id, 0, [digest])
    room = 2 * MAX_WRITE_BUFFER_SIZE + 12345  # the disk fills up inside a buffer
    monkeypatch.setattr(os, "writev", _DiskWithRoomFor(room))
    body = random.Random(3).randbytes(5 * MAX_WRITE_BUFFER_SIZE)
    with pytest.raises(InsufficientStorage):
        for start in range(0, len(body), 64 * 1024):
            await writer.write(body[start : start + 64 * 1024])
    assert writer.disk_full
    assert await writer.sync() == room
    await writer.close()
    assert area.path_for(upload_id).read_bytes() == body[:room]
    # the running hash saved with the offset covers exactly the bytes in the file
    assert digest.hexdigest() == hashlib.sha256(body[:room]).hexdigest()


async def test_a_disk_that_fills_up_with_the_last_block_still_syncs_what_fitted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    area = StagingArea(tmp_path)
    area.prepare()
    upload_id = uuid.uuid4()
    await area.create(upload_id)
    writer = await area.open_writer(upload_id, 0, [])
    monkeypatch.setattr(os, "writev", _DiskWithRoomFor(1000))
    await writer.write(bytes(5000))  # buffered: written by sync()
    assert await writer.sync() == 1000
    assert writer.disk_full
    await writer.close()
    assert area.path_for(upload_id).stat().st_size == 1000


class _DigestMeetingTheSync:
    """SHA-256 that, once ``meet_at`` bytes are in, takes the rest only while an fdatasync
    is under way (waiting at most 5 s for one): it records whether the body's last block
    was hashed beside the sync or before it."""

    def __init__(self, meet_at: int, syncing: threading.Event) -> None:
        self.sha = hashlib.sha256()
        self.size = 0
        self.meet_at = meet_at
        self.syncing = syncing
        self.tail_hashed_while_syncing: bool | None = None

    def update(self, data: bytes) -> None:
        if self.size >= self.meet_at and self.tail_hashed_while_syncing is None:
            self.tail_hashed_while_syncing = self.syncing.wait(timeout=5)
        self.sha.update(data)
        self.size += len(data)


async def _write_watching_the_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: bytes, meet_at: int
) -> tuple[StagingWriter, _DigestMeetingTheSync, Path]:
    """``body`` written in 64 KiB pieces and synced by a writer of its own, the digest
    taking the bytes past ``meet_at`` only while an fdatasync runs; the (closed) writer,
    the digest and the staging file."""
    area = StagingArea(tmp_path)
    area.prepare()
    upload_id = uuid.uuid4()
    await area.create(upload_id)
    syncing = threading.Event()
    digest = _DigestMeetingTheSync(meet_at, syncing)
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        syncing.set()
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    writer = await area.open_writer(upload_id, 0, [digest])
    for start in range(0, len(body), 64 * 1024):
        await writer.write(body[start : start + 64 * 1024])
    assert await writer.sync() == len(body)
    await writer.close()
    return writer, digest, area.path_for(upload_id)


async def test_a_large_last_block_is_hashed_while_the_fdatasync_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole_buffers = 3 * MAX_WRITE_BUFFER_SIZE
    body = random.Random(5).randbytes(whole_buffers + TAIL_HASHED_BESIDE_SYNC + 7)
    writer, digest, staged = await _write_watching_the_sync(
        tmp_path, monkeypatch, body, whole_buffers
    )
    assert writer.buffer_size == MAX_WRITE_BUFFER_SIZE
    assert digest.tail_hashed_while_syncing, "the last block was hashed before the fdatasync"
    assert digest.sha.hexdigest() == hashlib.sha256(body).hexdigest()
    assert staged.read_bytes() == body


async def test_a_lone_writer_leaves_its_last_full_buffer_to_be_hashed_while_the_fdatasync_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = random.Random(6).randbytes(3 * MAX_WRITE_BUFFER_SIZE)  # ends with a full buffer
    writer, digest, staged = await _write_watching_the_sync(
        tmp_path, monkeypatch, body, 2 * MAX_WRITE_BUFFER_SIZE
    )
    assert writer.overlapped
    assert digest.tail_hashed_while_syncing, "the last buffer was hashed before the fdatasync"
    assert digest.sha.hexdigest() == hashlib.sha256(body).hexdigest()
    assert staged.read_bytes() == body
