"""The local range reader: exact slices across block edges, no leaked descriptors."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from app.storage import range_reader
from app.storage.range_reader import read_range_prefetching

DATA = bytes(range(256)) * 1000  # 256,000 bytes


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> int:
    """Blocks of 10,000 bytes, so a small file spans many of them."""
    monkeypatch.setattr(range_reader, "RANGE_BLOCK_SIZE", 10_000)
    return 10_000


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _read(path: Path, start: int, length: int) -> list[bytes]:
    return [block async for block in read_range_prefetching(path, start, length)]


async def test_slices_across_block_edges_are_exact(tmp_path: Path, small_blocks: int) -> None:
    path = tmp_path / "f"
    path.write_bytes(DATA)
    for start, length in [(0, len(DATA)), (9_999, 2), (12_345, 67_890), (len(DATA) - 1, 1)]:
        blocks = await _read(path, start, length)
        assert b"".join(blocks) == DATA[start : start + length]
        assert all(len(block) <= small_blocks for block in blocks)
    assert await _read(path, 5, 0) == []


async def test_a_file_shorter_than_asked_ends_the_stream_early(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(DATA[:100])
    assert b"".join(await _read(path, 50, 1000)) == DATA[50:100]


async def test_stopping_midway_closes_the_descriptor(tmp_path: Path, small_blocks: int) -> None:
    path = tmp_path / "f"
    path.write_bytes(DATA)
    before = _open_fds()
    for _ in range(20):
        stream = read_range_prefetching(path, 0, len(DATA))
        assert await stream.__anext__() == DATA[:small_blocks]
        await stream.aclose()  # a client that went away after the first block
    await anyio.sleep(0.2)  # a read still running in its thread closes the fd when done
    assert _open_fds() <= before


async def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await _read(tmp_path / "missing", 0, 10)
