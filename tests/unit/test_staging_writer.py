"""The staging writer: pieces land in order and are hashed as one stream, whatever their sizes."""

from __future__ import annotations

import hashlib
import random
import uuid
from pathlib import Path

from app.storage.staging import (
    MAX_WRITE_BUFFER_SIZE,
    MIN_WRITE_BUFFER_SIZE,
    WRITE_BUFFER_BUDGET,
    StagingArea,
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


async def test_open_writers_share_the_buffer_budget_and_give_it_back_on_close(
    tmp_path: Path,
) -> None:
    area = StagingArea(tmp_path)
    area.prepare()
    writers = []
    for _ in range(40):
        upload_id = uuid.uuid4()
        await area.create(upload_id)
        writers.append(await area.open_writer(upload_id, 0, []))
    sizes = [writer.buffer_size for writer in writers]
    assert sizes[0] == MAX_WRITE_BUFFER_SIZE, "a lone upload gets large buffers"
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[15] == WRITE_BUFFER_BUDGET // 16
    assert sizes[-1] == MIN_WRITE_BUFFER_SIZE, "never below the floor"
    for writer in writers:
        await writer.close()
    assert area.open_writers == 0
    upload_id = uuid.uuid4()
    await area.create(upload_id)
    writer = await area.open_writer(upload_id, 0, [])
    assert writer.buffer_size == MAX_WRITE_BUFFER_SIZE
    await writer.close()
