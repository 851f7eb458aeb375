"""tus uploads stored in S3 (SeaweedFS): background parts, completion, cleanup, reads."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import Engine, event, func, select

from app.core.checksums import ChecksumSpec
from app.db.engine import create_engine, migrate
from app.errors import ChecksumMismatch, ClientDisconnected
from app.main import create_app
from app.settings import Settings
from app.storage.s3_ledger import multipart_uploads, parts, segments
from app.storage.s3_shipping import PartShipper
from app.uploads.service import AppendRequest, NewUpload
from tests.integration.s3.conftest import MIB, PART, S3View, start_streamed_patch
from tests.integration.tus_helpers import (
    OCTETS,
    Client,
    create,
    head,
    patch,
    path_of,
    staging_file,
    upload_id_of,
)
from tests.support.seaweed import MakeS3Settings

TUS = {"Tus-Resumable": "1.0.0"}


def payload(size: int, seed: int = 1) -> bytes:
    """Deterministic, incompressible-looking bytes."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


async def send_in_pieces(client: Client, path: str, data: bytes, piece: int) -> None:
    for offset in range(0, len(data), piece):
        response = await patch(client, path, offset, data[offset : offset + piece])
        assert response.status_code == 204, response.text


async def ledger_counts(settings: Settings) -> tuple[int, int]:
    engine = create_engine(settings.resolved_database_url)
    try:
        async with engine.connect() as connection:
            uploads = await connection.scalar(select(func.count()).select_from(multipart_uploads))
            stored = await connection.scalar(select(func.count()).select_from(parts))
    finally:
        await engine.dispose()
    return int(uploads or 0), int(stored or 0)


async def wait_for(condition, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_many_small_patches_become_whole_parts_and_one_verified_object(
    s3_client: Client, s3_settings: Settings, s3_view: S3View
) -> None:
    data = payload(3 * PART + 123_456)
    path = await create(s3_client, len(data))
    await send_in_pieces(s3_client, path, data, 1_000_000)
    file_info = await s3_client.get(f"/files/{upload_id_of(path)}")
    assert file_info.status_code == 200
    assert file_info.content == data
    keys = s3_view.object_keys()
    assert len(keys) == 1 and keys[0].endswith(upload_id_of(path))
    assert s3_view.sha256_of(keys[0]) == hashlib.sha256(data).hexdigest()
    head_object = s3_view.client.head_object(Bucket=s3_view.endpoint.bucket, Key=keys[0])
    assert head_object["ETag"].strip('"').endswith("-4"), "four parts cut at 5 MiB"
    assert s3_view.open_multipart_uploads() == []
    assert await ledger_counts(s3_settings) == (0, 0)
    assert not staging_file(s3_settings.data_dir, path).exists()


async def test_whole_parts_ship_in_background_and_staging_space_is_reclaimed(
    s3_client: Client, s3_settings: Settings, s3_view: S3View
) -> None:
    data = payload(4 * PART)
    path = await create(s3_client, len(data))
    await send_in_pieces(s3_client, path, data[: 2 * PART + 10], MIB + 3)
    await wait_for(lambda: len(s3_view.open_multipart_uploads()) == 1)
    open_upload = s3_view.open_multipart_uploads()[0]
    await wait_for(lambda: len(s3_view.parts_of(open_upload["Key"], open_upload["UploadId"])) == 2)
    staged = staging_file(s3_settings.data_dir, path)

    async def reclaimed() -> bool:
        return os.stat(staged).st_blocks * 512 < PART

    for _ in range(100):
        if await reclaimed():
            break
        await asyncio.sleep(0.05)
    assert await reclaimed(), "the two shipped parts' staging space is punched out"
    assert os.stat(staged).st_size == 2 * PART + 10, "the staging file keeps its size"
    await send_in_pieces_from(s3_client, path, data, 2 * PART + 10, 3 * MIB)
    response = await s3_client.get(f"/files/{upload_id_of(path)}")
    assert response.content == data
    assert s3_view.open_multipart_uploads() == []


async def send_in_pieces_from(
    client: Client, path: str, data: bytes, start: int, piece: int
) -> None:
    for offset in range(start, len(data), piece):
        response = await patch(client, path, offset, data[offset : offset + piece])
        assert response.status_code == 204, response.text


async def test_deferred_length_upload_grows_parts_and_is_never_truncated(
    s3_client: Client, s3_view: S3View
) -> None:
    data = payload(3 * PART + 77, seed=3)
    path = await create(s3_client, None, Upload_Defer_Length="1")
    await send_in_pieces_from(s3_client, path, data[:-77], 0, 3 * MIB)
    last = await patch(s3_client, path, len(data) - 77, data[-77:], Upload_Length=str(len(data)))
    assert last.status_code == 204, last.text
    keys = s3_view.object_keys()
    assert s3_view.sha256_of(keys[0]) == hashlib.sha256(data).hexdigest()
    assert s3_view.open_multipart_uploads() == []


async def test_zero_length_upload_is_an_empty_object(s3_client: Client, s3_view: S3View) -> None:
    path = await create(s3_client, 0)
    status = await head(s3_client, path)
    assert status.headers["upload-offset"] == "0"
    keys = s3_view.object_keys()
    assert len(keys) == 1
    size = s3_view.client.head_object(Bucket=s3_view.endpoint.bucket, Key=keys[0])["ContentLength"]
    assert size == 0
    response = await s3_client.get(f"/files/{upload_id_of(path)}")
    assert response.status_code == 200 and response.content == b""


async def test_upload_smaller_than_a_part_is_one_put_object(
    s3_client: Client, s3_view: S3View
) -> None:
    data = b"%PDF-1.4\n" + payload(300_000)
    path = await create(s3_client, len(data))
    await send_in_pieces_from(s3_client, path, data, 0, 100_000)
    keys = s3_view.object_keys()
    etag = s3_view.client.head_object(Bucket=s3_view.endpoint.bucket, Key=keys[0])["ETag"]
    assert "-" not in etag, "a PutObject ETag, not a multipart one"
    assert keys[0] == f"{s3_view.prefix}other/{upload_id_of(path)}" or "/" in keys[0]
    assert s3_view.sha256_of(keys[0]) == hashlib.sha256(data).hexdigest()


async def test_terminate_aborts_the_multipart_upload_and_removes_everything(
    s3_client: Client, s3_settings: Settings, s3_view: S3View
) -> None:
    data = payload(3 * PART)
    path = await create(s3_client, len(data))
    await send_in_pieces_from(s3_client, path, data[: 2 * PART + 1], 0, 2 * MIB)
    await wait_for(lambda: len(s3_view.open_multipart_uploads()) == 1)
    response = await s3_client.delete(path, headers=TUS)
    assert response.status_code == 204
    assert s3_view.open_multipart_uploads() == []
    assert s3_view.object_keys() == []
    assert not staging_file(s3_settings.data_dir, path).exists()
    assert await ledger_counts(s3_settings) == (0, 0)


async def test_download_streams_whole_object_and_byte_ranges_from_s3(
    s3_client: Client, s3_view: S3View
) -> None:
    data = payload(2 * PART + 5, seed=9)
    path = await create(s3_client, len(data))
    await send_in_pieces_from(s3_client, path, data, 0, 4 * MIB)
    url = f"/files/{upload_id_of(path)}"
    ranged = await s3_client.get(url, headers={"Range": "bytes=5242870-5242899"})
    assert ranged.status_code == 206
    assert ranged.content == data[5242870:5242900]
    tail = await s3_client.get(url, headers={"Range": "bytes=-10"})
    assert tail.content == data[-10:]


@pytest.fixture
def two_part_settings(make_s3_settings: MakeS3Settings) -> Settings:
    """An S3 Ferry whose provider allows only two parts per upload."""
    built = make_s3_settings(s3_max_parts=2)
    migrate(built)
    return built


async def test_length_beyond_max_parts_of_5_gib_is_refused_at_creation(
    two_part_settings: Settings,
) -> None:
    app = create_app(two_part_settings)
    async with AsyncTestClient(app=app, base_url="http://ferry.local") as client:
        too_big = await client.post("/files/", headers={**TUS, "Upload-Length": str(11 * 1024**3)})
        assert too_big.status_code == 413
        fits = await client.post("/files/", headers={**TUS, "Upload-Length": str(10 * 1024**3)})
        assert fits.status_code == 201


async def test_without_the_sendfile_sender_parts_go_through_the_s3_client(
    s3_client: Client, s3_view: S3View
) -> None:
    backend = s3_client.app.state.backend
    kept, backend.part_uploader = backend.part_uploader, None  # as behind a proxy
    try:
        data = payload(2 * PART + 999, seed=7)
        path = await create(s3_client, len(data))
        await send_in_pieces_from(s3_client, path, data, 0, 3 * MIB)
    finally:
        backend.part_uploader = kept
    keys = s3_view.object_keys()
    assert len(keys) == 1
    assert s3_view.sha256_of(keys[0]) == hashlib.sha256(data).hexdigest()
    assert s3_view.open_multipart_uploads() == []


async def test_another_process_continues_an_upload_from_what_s3_holds(
    s3_settings: Settings, make_s3_settings: MakeS3Settings, s3_view: S3View, tmp_path: Path
) -> None:
    """Acknowledged means in S3: a node with an empty data directory goes on from there."""
    data = payload(2 * PART + 3 * MIB, seed=21)
    first_part = PART + 2 * MIB + 17  # one whole part and a segment past it
    async with AsyncTestClient(app=create_app(s3_settings), base_url="http://ferry.local") as a:
        path = await create(a, len(data))
        await send_in_pieces(a, path, data[:first_part], MIB)
    segments = [key for key in s3_view.object_keys() if "/segments/" in key]
    assert segments, "the bytes past the last whole part are kept in S3"
    other = make_s3_settings(data_dir=tmp_path / "node-b", s3_min_part_size=PART)
    async with AsyncTestClient(app=create_app(other), base_url="http://ferry.local") as b:
        await send_in_pieces_from(b, path, data, first_part, 2 * MIB)
        assert (await b.get(path)).content == data
    assert [key for key in s3_view.object_keys() if "/segments/" in key] == []
    assert s3_view.open_multipart_uploads() == []


async def test_an_upload_an_earlier_version_acknowledged_from_staging_is_kept_as_a_segment(
    s3_settings: Settings, s3_view: S3View
) -> None:
    """Before acknowledged meant in S3, the bytes past the shipped parts were only staged:
    a node that still holds them stores them now, and the upload goes on."""
    data = payload(PART + 3 * MIB, seed=22)
    async with AsyncTestClient(app=create_app(s3_settings), base_url="http://ferry.local") as a:
        path = await create(a, len(data))
        await send_in_pieces(a, path, data[: 2 * MIB], MIB)
    # What an earlier version left: no segment rows, no segment objects, the bytes staged.
    for key in s3_view.object_keys():
        s3_view.client.delete_object(Bucket=s3_view.endpoint.bucket, Key=key)
    engine = create_engine(s3_settings.resolved_database_url)
    async with engine.begin() as connection:
        await connection.execute(segments.delete())
    await engine.dispose()
    async with AsyncTestClient(app=create_app(s3_settings), base_url="http://ferry.local") as b:
        await send_in_pieces_from(b, path, data, 2 * MIB, 2 * MIB)
        assert (await b.get(path)).content == data


@contextlib.contextmanager
def ledger_statements() -> Iterator[list[str]]:
    """Every SQL statement any engine runs meanwhile that names an S3 ledger table."""
    seen: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if "s3_" in statement:
            seen.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


@pytest.mark.parametrize("how", ["creation-with-upload", "POST then PATCH"])
async def test_a_file_sent_in_one_body_is_put_once_and_never_touches_the_ledger(
    s3_client: Client, s3_settings: Settings, s3_view: S3View, how: str
) -> None:
    """A body that carries a whole one-part upload: one PutObject at its final key, filed in
    the transaction that commits its offset; no part, segment or multipart row is read or
    written."""
    data = payload(300_000, seed=31)
    with ledger_statements() as statements:
        if how == "creation-with-upload":
            response = await s3_client.post(
                "/files/",
                content=data,
                headers={**TUS, "Upload-Length": str(len(data)), "Content-Type": OCTETS},
            )
            assert response.status_code == 201, response.text
            assert response.headers["upload-offset"] == str(len(data))
            path = path_of(response.headers["location"])
        else:
            path = await create(s3_client, len(data))
            assert (await patch(s3_client, path, 0, data)).status_code == 204
    assert statements == []
    keys = s3_view.object_keys()
    assert keys == [f"{s3_view.prefix}other/{upload_id_of(path)}"]
    etag = s3_view.client.head_object(Bucket=s3_view.endpoint.bucket, Key=keys[0])["ETag"]
    assert "-" not in etag, "a PutObject ETag, not a multipart one"
    assert s3_view.sha256_of(keys[0]) == hashlib.sha256(data).hexdigest()
    assert (await s3_client.get(path)).content == data
    assert not staging_file(s3_settings.data_dir, path).exists()


async def test_a_first_body_cut_short_is_kept_in_s3_and_any_process_finishes_it(
    s3_client: Client, s3_settings: Settings, s3_view: S3View
) -> None:
    """A creation-with-upload whose client goes away midway: its row is inserted before its
    bytes are recorded in S3, so a node without this one's staging goes on from them."""
    data = payload(3 * MIB, seed=32)
    ferry = s3_client.app.state.ferry

    async def cut_off() -> AsyncIterator[bytes]:
        yield data[: MIB + 5]
        raise ClientDisconnected("client disconnected")

    async def begin_and_go_away() -> uuid.UUID:
        created = await ferry.uploads.create(NewUpload(length=len(data)), with_data=True)
        assert created.body_claim is not None and not created.body_claim.saved
        append = AppendRequest(upload_id=created.upload.id, offset=0)
        with pytest.raises(ClientDisconnected):
            await ferry.uploads.append(append, cut_off(), fresh=created.body_claim)
        return created.upload.id

    # On the app's own event loop (its S3 client lives there), as a request would run.
    upload = await anyio.to_thread.run_sync(s3_client.blocking_portal.call, begin_and_go_away)
    path = f"/files/{upload}"
    assert (await head(s3_client, path)).headers["upload-offset"] == str(MIB + 5)
    assert any("/segments/" in key for key in s3_view.object_keys())
    staging_file(s3_settings.data_dir, path).unlink()  # what another node would see
    ferry.backend._shipper.staged_upto.clear()
    assert (await patch(s3_client, path, MIB + 5, data[MIB + 5 :])).status_code == 204
    assert (await s3_client.get(path)).content == data
    assert [key for key in s3_view.object_keys() if "/segments/" in key] == []


async def test_a_large_body_sends_its_whole_parts_to_s3_while_it_streams(
    s3_client: Client, s3_view: S3View
) -> None:
    """A whole file in one PATCH (tus-js-client's and Uppy's default): each part leaves as
    soon as its bytes are staged, so the answer does not wait for all of them after the
    last byte; they are recorded only with the offset."""
    data = payload(4 * PART + 7, seed=51)
    path = await create(s3_client, len(data))
    paused, go_on = threading.Event(), threading.Event()
    piece = 256 * 1024

    async def body() -> AsyncIterator[bytes]:
        for start in range(0, len(data), piece):
            if start == 2 * PART + 3 * MIB:  # (the last MiB or two may still be buffered)
                paused.set()
                await anyio.to_thread.run_sync(go_on.wait)
            yield data[start : start + piece]

    def two_parts_in_s3() -> bool:
        uploads = s3_view.open_multipart_uploads()
        if len(uploads) != 1:
            return False
        return len(s3_view.parts_of(uploads[0]["Key"], uploads[0]["UploadId"])) == 2

    patching = start_streamed_patch(s3_client, upload_id_of(path), len(data), body())
    try:
        assert await anyio.to_thread.run_sync(paused.wait, 30)
        await wait_for(two_parts_in_s3)
        assert (await head(s3_client, path)).headers["upload-offset"] == "0"
    finally:
        go_on.set()
    await anyio.to_thread.run_sync(patching.result, 60)
    assert (await s3_client.get(path)).content == data
    assert s3_view.open_multipart_uploads() == []


async def test_a_large_body_cut_off_keeps_the_parts_it_sent_ahead_and_resumes_after_them(
    s3_client: Client, s3_view: S3View
) -> None:
    data = payload(4 * PART + 7, seed=52)
    path = await create(s3_client, len(data))
    cut_at = 2 * PART + 3 * MIB

    async def cut_off() -> AsyncIterator[bytes]:
        for start in range(0, cut_at, 256 * 1024):
            yield data[start : start + 256 * 1024]
        raise ClientDisconnected("client disconnected")

    patching = start_streamed_patch(s3_client, upload_id_of(path), len(data), cut_off())
    with pytest.raises(ClientDisconnected):
        await anyio.to_thread.run_sync(patching.result, 60)
    assert (await head(s3_client, path)).headers["upload-offset"] == str(cut_at)
    (upload,) = s3_view.open_multipart_uploads()
    assert len(s3_view.parts_of(upload["Key"], upload["UploadId"])) == 2
    assert (await patch(s3_client, path, cut_at, data[cut_at:])).status_code == 204
    assert (await s3_client.get(path)).content == data
    assert s3_view.open_multipart_uploads() == []


async def test_a_refused_body_that_sent_parts_ahead_leaves_the_next_one_restoring_from_s3(
    s3_client: Client, s3_view: S3View
) -> None:
    """Parts sent ahead punch their staged range out, acknowledged bytes of earlier requests
    included: when the body is then refused, the next request must read those bytes back
    from S3, never send the hole as a part."""
    data = payload(4 * PART + 7, seed=53)
    path = await create(s3_client, len(data))
    first = PART + 3 * MIB  # part 1, and a segment of 3 MiB staged here too
    assert (await patch(s3_client, path, 0, data[:first])).status_code == 204
    refused = data[first : 3 * PART + 4 * MIB]  # completes parts 2 and 3 as it streams
    not_its_digest = ChecksumSpec("sha1", hashlib.sha1(b"other bytes").digest())

    async def body() -> AsyncIterator[bytes]:
        for start in range(0, len(refused), 256 * 1024):
            yield refused[start : start + 256 * 1024]

    patching = start_streamed_patch(
        s3_client, upload_id_of(path), len(refused), body(), offset=first, checksum=not_its_digest
    )
    with pytest.raises(ChecksumMismatch):
        await anyio.to_thread.run_sync(patching.result, 60)
    assert (await head(s3_client, path)).headers["upload-offset"] == str(first)
    assert (await patch(s3_client, path, first, data[first:])).status_code == 204
    assert (await s3_client.get(path)).content == data
    assert s3_view.open_multipart_uploads() == []


async def test_a_whole_small_file_damaged_in_staging_before_its_put_is_refused_never_stored(
    s3_client: Client, s3_view: S3View, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A creation-with-upload of a one-part file is put whole with the CRC32C of its bytes
    as they arrived, not as staging holds them when the PutObject reads them: damage in
    between (a failing disk, a bug) makes S3 refuse it, the client gets a 503 and nothing is
    stored; sent again, the file is stored right."""
    data = payload(MIB + 3, seed=61)  # a block edge inside: the CRC is combined
    put_whole = PartShipper.put_whole
    damaged = []

    async def damage_then_put(self: PartShipper, key: str, staged_path: Path, *args: Any) -> Any:
        if not damaged:
            with staged_path.open("r+b") as staged:
                staged.seek(1000)
                staged.write(bytes(4096))
            damaged.append(key)
        return await put_whole(self, key, staged_path, *args)

    monkeypatch.setattr(PartShipper, "put_whole", damage_then_put)
    headers = {**TUS, "Upload-Length": str(len(data)), "Content-Type": OCTETS}
    refused = await s3_client.post("/files/", content=data, headers=headers)
    assert damaged, "the whole-file put was not used"
    assert refused.status_code == 503, refused.text
    assert s3_view.object_keys() == []
    stored = await s3_client.post("/files/", content=data, headers=headers)
    assert stored.status_code == 201, stored.text
    assert (await s3_client.get(path_of(stored.headers["location"]))).content == data
    assert [s3_view.sha256_of(key) for key in s3_view.object_keys()] == [
        hashlib.sha256(data).hexdigest()
    ]


async def test_staged_bytes_damaged_after_they_arrived_are_refused_by_s3_never_stored(
    s3_client: Client, s3_settings: Settings, s3_view: S3View
) -> None:
    """A part goes to S3 with the CRC32C of its bytes as they arrived (the segments' for
    earlier requests, the body's own for the rest), not as staging holds them now: a
    damaged staging file makes S3 refuse the part, nothing is acknowledged, and the next
    request restores staging from S3."""
    data = payload(2 * PART + 7, seed=54)
    path = await create(s3_client, len(data))
    first = 3 * MIB
    assert (await patch(s3_client, path, 0, data[:first])).status_code == 204
    with staging_file(s3_settings.data_dir, path).open("r+b") as staged:
        staged.seek(MIB)
        staged.write(bytes(4096))  # a failing disk, or a bug, after the bytes were received
    damaged = await patch(s3_client, path, first, data[first : PART + MIB])
    assert damaged.status_code == 503, damaged.text
    assert (await head(s3_client, path)).headers["upload-offset"] == str(first)
    assert (await patch(s3_client, path, first, data[first:])).status_code == 204
    assert (await s3_client.get(path)).content == data
    assert s3_view.open_multipart_uploads() == []
