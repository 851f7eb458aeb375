"""tus concatenation on S3: partials are objects, finals are assembled inside S3.

Ferry talks to SeaweedFS through the recording proxy, so a test can see which bytes Ferry
sent itself and which S3 copied (UploadPartCopy). moto's server checks the fallback for
small partials against AWS's 5 MiB part rule.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import update

from app.cli_tasks import run_cleanup
from app.core.clock import utcnow
from app.db.engine import create_engine, migrate
from app.db.models import Upload
from app.main import create_app
from app.settings import Settings
from app.storage.concat_plan import plan_concatenation
from tests.conftest import MakeSettings
from tests.integration.s3.conftest import MIB, PART, S3View
from tests.integration.tus_helpers import TUS, Client, create, head, patch, path_of, upload_id_of
from tests.support.faulty_proxy import FaultyProxy, faulty_proxy
from tests.support.seaweed import S3Endpoint

PNG_HEAD = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


def payload(size: int, seed: int) -> bytes:
    """Deterministic bytes that differ per seed."""
    block = hashlib.sha256(f"concat-{seed}".encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


@pytest.fixture
def proxy(seaweed: S3Endpoint) -> Iterator[FaultyProxy]:
    with faulty_proxy(seaweed.url) as running:
        yield running


def proxied_settings(
    make_settings: MakeSettings,
    seaweed: S3Endpoint,
    proxy: FaultyProxy,
    s3_prefix: str,
    **extra: Any,
) -> Settings:
    values = seaweed.settings_overrides(s3_prefix)
    values.update(s3_endpoint_url=proxy.url, s3_min_part_size=PART, **extra)
    built = make_settings(**values)
    migrate(built)
    return built


@pytest.fixture
def settings_via_proxy(
    make_settings: MakeSettings, seaweed: S3Endpoint, proxy: FaultyProxy, s3_prefix: str
) -> Settings:
    return proxied_settings(make_settings, seaweed, proxy, s3_prefix)


@pytest.fixture
async def client(settings_via_proxy: Settings) -> AsyncIterator[Client]:
    app = create_app(settings_via_proxy)
    async with AsyncTestClient(app=app, base_url="http://ferry.local") as test_client:
        yield test_client


async def upload_partial(client: Client, data: bytes, piece: int = 4 * MIB) -> str:
    path = await create(client, len(data), Upload_Concat="partial")
    for offset in range(0, len(data), piece):
        response = await patch(client, path, offset, data[offset : offset + piece])
        assert response.status_code == 204, response.text
    return path


async def create_final(client: Client, paths: list[str]) -> str:
    response = await client.post(
        "/files/", headers={**TUS, "Upload-Concat": "final;" + " ".join(paths)}
    )
    assert response.status_code == 201, response.text
    return path_of(response.headers["location"])


async def file_info(client: Client, final: str) -> dict[str, Any]:
    response = await client.get(f"/api/files/{upload_id_of(final)}")
    assert response.status_code == 200, response.text
    info: dict[str, Any] = response.json()
    return info


def final_key(s3_view: S3View, final: str) -> str:
    keys = [k for k in s3_view.object_keys() if k.endswith(upload_id_of(final))]
    assert len(keys) == 1, keys
    return keys[0]


def object_part_sizes(s3_view: S3View, key: str) -> list[int]:
    attributes = s3_view.client.get_object_attributes(
        Bucket=s3_view.endpoint.bucket, Key=key, ObjectAttributes=["ObjectParts"]
    )
    return [part["Size"] for part in attributes.get("ObjectParts", {}).get("Parts", [])]


async def test_final_of_large_partials_is_copied_inside_s3_not_sent_again(
    client: Client, proxy: FaultyProxy, s3_view: S3View
) -> None:
    sizes = [PART + 3 * MIB, PART, PART + 11]
    datas = [payload(size, seed) for seed, size in enumerate(sizes)]
    paths = [await upload_partial(client, data) for data in datas]
    before = len(proxy.seen)

    final = await create_final(client, paths)

    status = await head(client, final)
    assert status.headers["upload-offset"] == status.headers["upload-length"] == str(sum(sizes))
    writes = proxy.seen_since(before, "PUT ", upload_id_of(final))
    assert [w.copy for w in writes] == [True, True, True], "three UploadPartCopy, no upload"
    assert sum(w.body_size for w in writes) == 0, "no byte of the final was sent by Ferry"
    key = final_key(s3_view, final)
    assert object_part_sizes(s3_view, key) == sizes
    expected = hashlib.sha256(b"".join(datas)).hexdigest()
    assert s3_view.sha256_of(key) == expected
    info = await file_info(client, final)
    assert info["sha256"] == expected and info["size"] == sum(sizes)
    assert s3_view.open_multipart_uploads() == []


@pytest.mark.parametrize(
    "sizes",
    [
        pytest.param([10, PART + MIB, 3, 2 * MIB, 2 * PART + 5, 7], id="tiny-and-large-mixed"),
        pytest.param([PART + 1, 0, PART + 2], id="empty-partial-in-the-middle"),
        pytest.param([1, 1000, 0, 70_000], id="all-tiny"),
        pytest.param([3 * MIB, 4 * MIB], id="small-partials-make-one-uploaded-part"),
        pytest.param([0, 0], id="all-empty"),
    ],
)
async def test_final_of_any_partial_sizes_has_the_right_bytes_and_sha256(
    client: Client, proxy: FaultyProxy, s3_view: S3View, sizes: list[int]
) -> None:
    datas = [payload(size, seed) for seed, size in enumerate(sizes)]
    paths = [await upload_partial(client, data) for data in datas]
    before = len(proxy.seen)

    final = await create_final(client, paths)

    joined = b"".join(datas)
    expected = hashlib.sha256(joined).hexdigest()
    info = await file_info(client, final)
    assert info["sha256"] == expected and info["size"] == len(joined)
    key = final_key(s3_view, final)
    assert s3_view.sha256_of(key) == expected
    download = await client.get(final)
    assert download.status_code == 200 and download.content == joined
    writes = proxy.seen_since(before, "PUT ", upload_id_of(final))
    plan = plan_concatenation(sizes, PART, 10_000)
    copied = [p.size for p in plan if p.copy]
    assert sum(w.copy for w in writes) == len(copied), "every copy of the plan, inside S3"
    sent = sum(w.body_size for w in writes)
    assert sent == len(joined) - sum(copied), "Ferry sent only what could not be copied"
    etag = s3_view.client.head_object(Bucket=s3_view.endpoint.bucket, Key=key)["ETag"]
    if len(plan) <= 1 and not copied:
        assert "-" not in etag, "no bytes or one small piece: a single PutObject"
    else:
        assert object_part_sizes(s3_view, key) == [p.size for p in plan]
        assert all(p.size >= PART for p in plan[:-1])
    assert s3_view.open_multipart_uploads() == []


async def test_final_is_sniffed_from_the_first_bytes_across_tiny_partials(
    client: Client, s3_view: S3View
) -> None:
    first, second = PNG_HEAD[:6], PNG_HEAD[6:] + payload(PART, seed=5)
    paths = [await upload_partial(client, first), await upload_partial(client, second)]

    final = await create_final(client, paths)

    info = await file_info(client, final)
    assert (info["content_type"], info["category"]) == ("image/png", "images")
    assert final_key(s3_view, final) == f"{s3_view.prefix}images/{upload_id_of(final)}"


@pytest.fixture
def png_refusing_settings(
    make_settings: MakeSettings, seaweed: S3Endpoint, proxy: FaultyProxy, s3_prefix: str
) -> Settings:
    return proxied_settings(make_settings, seaweed, proxy, s3_prefix, denied_types=("image/png",))


async def test_content_policy_refuses_a_final_and_leaves_nothing_open(
    png_refusing_settings: Settings, s3_prefix: str, s3_view: S3View
) -> None:
    app = create_app(png_refusing_settings)
    async with AsyncTestClient(app=app, base_url="http://ferry.local") as client:
        first, second = PNG_HEAD[:6], PNG_HEAD[6:] + payload(PART, seed=6)
        paths = [await upload_partial(client, first), await upload_partial(client, second)]
        response = await client.post(
            "/files/", headers={**TUS, "Upload-Concat": "final;" + " ".join(paths)}
        )
        assert response.status_code == 415, response.text
        partial_keys = {f"{s3_prefix}partials/{upload_id_of(p)}" for p in paths}
        assert set(s3_view.object_keys()) == partial_keys, "no final object"
        assert s3_view.open_multipart_uploads() == []


async def test_final_created_first_is_copied_when_its_last_partial_completes(
    client: Client, proxy: FaultyProxy, s3_view: S3View
) -> None:
    first, second = payload(PART + 1, seed=7), payload(PART + 2 * MIB, seed=8)
    done = await upload_partial(client, first)
    pending = await create(client, len(second), Upload_Concat="partial")
    assert (await patch(client, pending, 0, second[: 3 * MIB])).status_code == 204

    final = await create_final(client, [done, pending])
    waiting = await head(client, final)
    assert "upload-offset" not in waiting.headers
    assert (await client.get(final)).status_code == 404
    before = len(proxy.seen)
    assert (await patch(client, pending, 3 * MIB, second[3 * MIB :])).status_code == 204

    finished = await head(client, final)
    assert finished.headers["upload-offset"] == str(len(first) + len(second))
    writes = proxy.seen_since(before, "PUT ", upload_id_of(final))
    assert [w.copy for w in writes] == [True, True]
    expected = hashlib.sha256(first + second).hexdigest()
    assert (await file_info(client, final))["sha256"] == expected
    assert s3_view.open_multipart_uploads() == []


async def test_partial_is_an_object_of_its_own_and_termination_deletes_it(
    client: Client, s3_view: S3View
) -> None:
    large = await upload_partial(client, payload(PART + 5, seed=9))
    tiny = await upload_partial(client, b"tiny")
    keys = {f"{s3_view.prefix}partials/{upload_id_of(p)}" for p in (large, tiny)}
    assert set(s3_view.object_keys()) == keys
    assert (await client.get(large)).status_code == 404, "a partial is not a file"

    for path in (large, tiny):
        assert (await client.delete(path, headers=TUS)).status_code == 204
    assert s3_view.object_keys() == []
    assert s3_view.open_multipart_uploads() == []


async def test_terminating_a_partial_mid_upload_aborts_its_multipart_upload(
    client: Client, s3_view: S3View
) -> None:
    path = await create(client, 3 * PART, Upload_Concat="partial")
    assert (await patch(client, path, 0, payload(PART + MIB, seed=10))).status_code == 204
    for _ in range(200):
        if s3_view.open_multipart_uploads():
            break
        await asyncio.sleep(0.05)
    (open_upload,) = s3_view.open_multipart_uploads()
    assert open_upload["Key"] == f"{s3_view.prefix}partials/{upload_id_of(path)}"
    assert (await client.delete(path, headers=TUS)).status_code == 204
    assert s3_view.open_multipart_uploads() == []
    assert s3_view.object_keys() == []


async def test_expired_partial_loses_its_object_and_the_final_file_stays_whole(
    client: Client, settings_via_proxy: Settings, s3_view: S3View
) -> None:
    datas = [payload(PART, seed=11), payload(100, seed=12)]
    paths = [await upload_partial(client, data) for data in datas]
    final = await create_final(client, paths)
    engine = create_engine(settings_via_proxy.resolved_database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                update(Upload)
                .where(Upload.id.in_([uuid.UUID(upload_id_of(p)) for p in paths]))
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
    finally:
        await engine.dispose()

    assert await run_cleanup(settings_via_proxy) == 2
    assert s3_view.object_keys() == [final_key(s3_view, final)], "partial objects deleted"
    download = await client.get(final)
    assert download.status_code == 200 and download.content == b"".join(datas)
    assert (await client.delete(f"/api/files/{upload_id_of(final)}")).status_code == 204
    assert s3_view.object_keys() == []


@pytest.fixture
def local_settings(make_settings: MakeSettings, settings_via_proxy: Settings) -> Settings:
    """The same database and data directory, storing on the local disk."""
    return make_settings(storage="local")


async def test_partials_staged_whole_before_the_upgrade_are_stored_at_start_up(
    local_settings: Settings, settings_via_proxy: Settings, s3_view: S3View
) -> None:
    """Earlier versions kept completed partials whole in staging, even on S3."""
    datas = [payload(PART + 1, seed=15), payload(10, seed=16)]
    app = create_app(local_settings)
    async with AsyncTestClient(app=app, base_url="http://ferry.local") as local:
        paths = [await upload_partial(local, data) for data in datas]

    async with AsyncTestClient(
        app=create_app(settings_via_proxy), base_url="http://ferry.local"
    ) as client:
        keys = {f"{s3_view.prefix}partials/{upload_id_of(p)}" for p in paths}
        assert set(s3_view.object_keys()) == keys, "stored by start-up reconciliation"
        final = await create_final(client, paths)
        expected = hashlib.sha256(b"".join(datas)).hexdigest()
        assert (await file_info(client, final))["sha256"] == expected
    for path in paths:
        assert not (settings_via_proxy.staging_dir / upload_id_of(path)).exists()


async def test_sweep_deletes_partial_objects_that_no_live_partial_owns(
    client: Client,
    settings_via_proxy: Settings,
    s3_view: S3View,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    live = await upload_partial(client, b"kept")
    stray = f"{s3_view.prefix}partials/{uuid.uuid4()}"  # e.g. a delete that failed
    s3_view.client.put_object(Bucket=s3_view.endpoint.bucket, Key=stray, Body=b"left over")
    monkeypatch.setattr("app.storage.s3_cleanup.ORPHAN_GRACE", timedelta(0))

    await run_cleanup(settings_via_proxy)

    assert s3_view.object_keys() == [f"{s3_view.prefix}partials/{upload_id_of(live)}"]


async def test_orphan_sweep_leaves_a_final_being_assembled_alone(
    client: Client, settings_via_proxy: Settings, proxy: FaultyProxy, s3_view: S3View
) -> None:
    datas = [payload(PART + 1, seed=13), payload(PART + 2, seed=14)]
    paths = [await upload_partial(client, data) for data in datas]
    before = len(proxy.seen)
    release = proxy.pause("PUT ", "partNumber=2")  # the second copy waits for the sweep
    open_during_sweep: list[int] = []

    def sweep_while_the_copy_waits() -> None:
        try:
            for _ in range(400):
                if proxy.seen_since(before, "partNumber=2"):
                    break
                time.sleep(0.025)
            open_during_sweep.append(len(s3_view.open_multipart_uploads()))
            asyncio.run(run_cleanup(settings_via_proxy))
            open_during_sweep.append(len(s3_view.open_multipart_uploads()))
        finally:
            release.set()

    sweeper = threading.Thread(target=sweep_while_the_copy_waits)
    sweeper.start()
    final = await create_final(client, paths)  # the test client blocks until it is done
    sweeper.join(30)

    assert open_during_sweep == [1, 1], "the live assembly survived the sweep"
    expected = hashlib.sha256(b"".join(datas)).hexdigest()
    assert (await file_info(client, final))["sha256"] == expected
    assert s3_view.open_multipart_uploads() == []


async def test_small_partials_fall_back_to_uploaded_parts_on_aws_rules(
    moto_client: Client, moto_s3: S3Endpoint, s3_prefix: str
) -> None:
    sizes = [MIB, PART + 2 * MIB, 10, 3 * MIB, 0, PART, 2 * MIB, 5]
    datas = [payload(size, seed) for seed, size in enumerate(sizes)]
    paths = [await upload_partial(moto_client, data) for data in datas]

    final = await create_final(moto_client, paths)

    expected = hashlib.sha256(b"".join(datas)).hexdigest()
    assert (await file_info(moto_client, final))["sha256"] == expected
    s3 = moto_s3.client()
    key = f"{s3_prefix}other/{upload_id_of(final)}"
    body = s3.get_object(Bucket=moto_s3.bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == expected
    parts_count = s3.head_object(Bucket=moto_s3.bucket, Key=key, PartNumber=1)["PartsCount"]
    assert parts_count >= 3, "assembled from several parts, each accepted by AWS's rules"
    assert (
        s3.list_multipart_uploads(Bucket=moto_s3.bucket, Prefix=s3_prefix).get("Uploads", []) == []
    )
