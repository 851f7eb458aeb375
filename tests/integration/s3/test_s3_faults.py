"""S3 misbehaving (503 SlowDown, resets, stalls, 200-with-error, down) never loses a byte.

Ferry talks to SeaweedFS through :mod:`tests.support.faulty_proxy`; every test ends with
the object's SHA-256 checked in S3 and no multipart upload left open.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator

import pytest
from litestar.testing import AsyncTestClient

from app.db.engine import migrate
from app.main import FerryApp, create_app
from app.settings import Settings
from tests.conftest import MakeSettings
from tests.integration.s3.conftest import MIB, PART, S3View, start_streamed_patch
from tests.integration.tus_helpers import OCTETS, TUS, create, head, patch, path_of, upload_id_of
from tests.support.faulty_proxy import ERROR_IN_200, FaultyProxy, faulty_proxy
from tests.support.seaweed import S3Endpoint

UPLOAD_PART = "partNumber="
COMPLETE = ("POST ", "uploadId=")


@pytest.fixture
def proxy(seaweed: S3Endpoint) -> Iterator[FaultyProxy]:
    with faulty_proxy(seaweed.url) as running:
        yield running


@pytest.fixture
def proxied_settings(
    make_settings: MakeSettings, seaweed: S3Endpoint, proxy: FaultyProxy, s3_prefix: str
) -> Settings:
    values = seaweed.settings_overrides(s3_prefix)
    values.update(
        s3_endpoint_url=proxy.url,
        s3_min_part_size=PART,
        s3_timeout_seconds=2,
    )
    built = make_settings(**values)
    migrate(built)
    return built


@pytest.fixture
async def client(proxied_settings: Settings) -> AsyncIterator[AsyncTestClient[FerryApp]]:
    app = create_app(proxied_settings)
    async with AsyncTestClient(app=app, base_url="http://ferry.local") as test_client:
        app.state.backend.retry_pause_max = 0.5  # retry fast in tests
        yield test_client


def payload(size: int) -> bytes:
    block = hashlib.sha256(str(size).encode()).digest() * 2048
    return (block * (size // len(block) + 1))[:size]


async def upload_in_pieces(client: AsyncTestClient[FerryApp], data: bytes, piece: int) -> str:
    path = await create(client, len(data))
    for offset in range(0, len(data), piece):
        response = await patch(client, path, offset, data[offset : offset + piece])
        assert response.status_code == 204, response.text
    return path


def assert_stored_exactly(s3_view: S3View, path: str, data: bytes) -> None:
    keys = [k for k in s3_view.object_keys() if k.endswith(upload_id_of(path))]
    assert len(keys) == 1
    assert s3_view.sha256_of(keys[0]) == hashlib.sha256(data).hexdigest()
    assert s3_view.open_multipart_uploads() == []


async def test_slow_down_503s_on_parts_and_completion_are_retried(
    client: AsyncTestClient[FerryApp], proxy: FaultyProxy, s3_view: S3View
) -> None:
    proxy.respond(UPLOAD_PART, status=503, times=4)
    proxy.respond(*COMPLETE, status=503, times=2)
    data = payload(2 * PART + 1000)
    path = await upload_in_pieces(client, data, 2 * MIB)
    assert_stored_exactly(s3_view, path, data)
    assert proxy.count(UPLOAD_PART) >= 3 + 4


async def test_connection_resets_during_parts_and_completion_are_retried(
    client: AsyncTestClient[FerryApp], proxy: FaultyProxy, s3_view: S3View
) -> None:
    proxy.reset(UPLOAD_PART, times=3)
    proxy.reset(*COMPLETE, times=1)
    data = payload(2 * PART + 5)
    path = await upload_in_pieces(client, data, 3 * MIB)
    assert_stored_exactly(s3_view, path, data)


async def test_completion_answered_200_with_an_error_body_is_not_taken_for_success(
    client: AsyncTestClient[FerryApp], proxy: FaultyProxy, s3_view: S3View
) -> None:
    proxy.respond(*COMPLETE, status=200, body=ERROR_IN_200, times=1)
    data = payload(PART + 7)
    path = await upload_in_pieces(client, data, 3 * MIB)
    assert_stored_exactly(s3_view, path, data)
    assert proxy.count(*COMPLETE) >= 2, "the error-in-200 completion was sent again"


async def test_stalled_part_upload_times_out_and_is_sent_again(
    client: AsyncTestClient[FerryApp], proxy: FaultyProxy, s3_view: S3View
) -> None:
    proxy.stall(UPLOAD_PART, seconds=6, times=1)
    data = payload(2 * PART)
    path = await upload_in_pieces(client, data, 5 * MIB)
    assert_stored_exactly(s3_view, path, data)


async def test_while_s3_is_down_patches_get_503_and_acknowledge_nothing_then_resume(
    client: AsyncTestClient[FerryApp], proxy: FaultyProxy, s3_view: S3View
) -> None:
    """Acknowledged means in S3: with S3 down nothing is acknowledged, in bounded time."""
    data = payload(4 * PART)
    path = await create(client, len(data))
    assert (await patch(client, path, 0, data[:PART])).status_code == 204
    proxy.down()
    started = asyncio.get_running_loop().time()
    refused = await patch(client, path, PART, data[PART : 2 * PART])
    assert refused.status_code == 503, refused.text
    assert "retry-after" in refused.headers
    assert asyncio.get_running_loop().time() - started < 30, "a bounded wait, not a hang"
    status = await client.head(path, headers={"Tus-Resumable": "1.0.0"})
    assert status.headers["upload-offset"] == str(PART), "nothing past S3 was acknowledged"
    proxy.up()
    assert (await patch(client, path, PART, data[PART:])).status_code == 204
    assert_stored_exactly(s3_view, path, data)


async def test_a_file_sent_whole_at_creation_while_s3_is_down_gets_503_and_is_sent_again(
    client: AsyncTestClient[FerryApp], proxy: FaultyProxy, s3_view: S3View
) -> None:
    """A one-part creation-with-upload acknowledges nothing S3 does not hold: the upload is
    left at offset 0 (its Location in the 503) and the client sends the body again."""
    data = payload(200_000)
    proxy.down()
    refused = await client.post(
        "/files/",
        content=data,
        headers={**TUS, "Upload-Length": str(len(data)), "Content-Type": OCTETS},
    )
    assert refused.status_code == 503, refused.text
    path = path_of(refused.headers["location"])
    proxy.up()
    assert (await head(client, path)).headers["upload-offset"] == "0"
    assert (await patch(client, path, 0, data)).status_code == 204
    assert_stored_exactly(s3_view, path, data)


async def test_a_large_body_is_read_no_faster_than_s3_takes_its_parts(
    client: AsyncTestClient[FerryApp],
    proxied_settings: Settings,
    proxy: FaultyProxy,
    s3_view: S3View,
) -> None:
    """Staging is a bounded buffer: while S3 holds every part in flight, the body's reading
    pauses a couple of whole parts later (TCP then slows the client), and goes on once S3
    answers."""
    data = payload(10 * PART)
    path = await create(client, len(data))
    in_flight = proxied_settings.s3_part_concurrency
    release = proxy.pause(UPLOAD_PART, times=in_flight)
    consumed = 0
    piece = 256 * 1024

    async def body() -> AsyncIterator[bytes]:
        nonlocal consumed
        for start in range(0, len(data), piece):
            consumed = start + piece
            yield data[start : start + piece]

    patching = start_streamed_patch(client, upload_id_of(path), len(data), body())
    try:
        deadline = asyncio.get_running_loop().time() + 20
        while proxy.count(UPLOAD_PART) < in_flight:
            assert asyncio.get_running_loop().time() < deadline, "the parts never left"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # (S3 answers none of them for 2 s)
        assert consumed <= (in_flight + 2) * PART + 4 * MIB < len(data)
    finally:
        release.set()
    await asyncio.to_thread(patching.result, 60)
    assert_stored_exactly(s3_view, path, data)
